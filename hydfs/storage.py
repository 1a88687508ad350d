"""What a node keeps durably per file, behind a small interface the disk implementation also meets.

Only this survives a crash: the log entries (from the file's first index, with the terms of a
trimmed prefix) and :class:`FileMeta` (the promised term, the in-sync set and its version, whether the
file is live or deleted). Commit indexes, trust, leader state and the
idempotency/fence tables are rebuilt after a restart.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, MutableSequence, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from hydfs.entries import Entry, Runs, cut_runs, extend_runs, term_at

Version = tuple[int, int]  # (term, seq) of an in-sync-set change; totally ordered, unique per primary


@dataclass
class FileMeta:
    term: int = 0                      # highest term promised for this file (a replica rejects lower)
    leader: str = ""                   # who ``term`` was promised to: one primary per term
    created: int | None = None         # term this incarnation was created in; None: not live
    deleted: tuple[int, int] | None = None  # (term, last index) of the rm that removed it
    ver: Version | None = None         # version of the in-sync set this node last persisted
    isr: tuple[str, ...] = field(default=())

    def copy(self) -> FileMeta:
        # every storage read hands out a copy: the constructor is ~3x cheaper than dataclasses.replace
        return FileMeta(self.term, self.leader, self.created, self.deleted, self.ver, self.isr)

    def to_dict(self) -> dict[str, Any]:
        """Plain msgpack-able form, for storage implementations that serialise it."""
        return {"term": self.term, "leader": self.leader, "created": self.created,
                "deleted": list(self.deleted) if self.deleted else None,
                "ver": list(self.ver) if self.ver else None, "isr": list(self.isr)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FileMeta:
        dl, ver = d.get("deleted"), d.get("ver")
        return cls(term=d["term"], leader=d["leader"], created=d.get("created"),
                   deleted=(dl[0], dl[1]) if dl else None, ver=(ver[0], ver[1]) if ver else None,
                   isr=tuple(d.get("isr", ())))


class Storage(Protocol):
    """Durable per-file state. A write survives a crash once :meth:`sync` has returned; the node's
    I/O edge calls ``sync`` before it sends any message, so nothing another node or a client hears of
    can be lost (group commit: one sync covers every write of a batch of messages).

    Entries are numbered ``first..last`` with no gaps; ``append`` always continues at ``last + 1``.
    ``first`` is 1 until a trim drops a prefix (see :meth:`trim`); indexes never change.
    ``runs`` is the term-run summary of the log from index 1, the dropped prefix included (see
    :mod:`hydfs.entries`); an implementation keeps it alongside the log so it never has to scan entries.
    """

    def names(self) -> list[str]:
        """Every file with durable state (meta or entries) on this node."""
        ...

    def meta(self, name: str) -> FileMeta | None:
        """A copy; change it and hand it back to :meth:`put_meta` to persist."""
        ...

    def put_meta(self, name: str, meta: FileMeta) -> None: ...

    def last(self, name: str) -> tuple[int, int]:
        """(last index, its term); (0, 0) for an empty or unknown log. A log trimmed to nothing (an
        install) ends at ``first - 1``, whose term the runs still know."""
        ...

    def first(self, name: str) -> int:
        """Index of the first retained entry (1 for a log never trimmed; ``last + 1`` if it holds none)."""
        ...

    def marks(self, name: str) -> list[tuple[int, int]]:
        """(index, below) of the trim markers in the retained log, ascending: kept alongside the log so
        applying a trim never scans entries."""
        ...

    def runs(self, name: str) -> Runs: ...

    def read(self, name: str, start: int, stop: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries with ``start <= index < stop`` (clipped to ``first..last``); with ``max_bytes``, only as
        many as fit in that many data bytes (at least one), so a batch never reads data it will not send."""
        ...

    def data_end(self, name: str, index: int) -> int:
        """Data bytes of the retained entries ``first..index`` (clipped): where entry index + 1 starts. O(1)."""
        ...

    def read_bytes(self, name: str, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)`` of the retained entries' concatenated data (fewer at the end
        of the log), reading only those bytes: O(log entries + length)."""
        ...

    def append(self, name: str, entries: Sequence[Entry]) -> None: ...

    def truncate(self, name: str, keep: int) -> None:
        """Keep entries up to ``keep``, drop the rest (``keep = 0``: an empty, untrimmed log)."""
        ...

    def trim(self, name: str, below: int) -> None:
        """Drop the entries below ``below`` (at most ``last + 1``), durably at once; the runs stay. Its cost
        follows the retained entries, not the dropped ones."""
        ...

    def install(self, name: str, first: int, runs: Runs) -> None:
        """Drop every entry: the log now ends at ``first - 1`` and ``runs`` are its terms up to there (a
        replica brought to a primary whose log starts past this one's end), durably at once."""
        ...

    def drop(self, name: str) -> None:
        """Forget the file entirely (entries and meta)."""
        ...

    def sync(self) -> None:
        """Make every write so far durable."""
        ...


def apply_trims(storage: Storage, name: str, commit: int) -> int:
    """Carry out the trim markers at or below ``commit`` (known acknowledged on this copy); returns the
    file's first index. Only committed markers act: an uncommitted one may still be cut as a divergent
    suffix, and a copy that had dropped the entries below it would then lack entries the surviving log
    keeps."""
    first = storage.first(name)
    below = max((b for i, b in storage.marks(name) if i <= commit), default=0)
    if below > first:
        storage.trim(name, below)
        first = storage.first(name)
    return first


def fit(entries: Sequence[Entry], max_bytes: int | None) -> int:
    """How many of ``entries`` fit in ``max_bytes`` of data (at least one; all if no limit)."""
    if max_bytes is None:
        return len(entries)
    size = 0
    for k, e in enumerate(entries):
        size += len(e.data)
        if k and size > max_bytes:
            return k
    return len(entries)


def extend_ends(ends: MutableSequence[int], sizes: Sequence[int]) -> None:
    """Extend the prefix sums of entry data sizes (``ends[k]``: bytes of entries 1..k+1)."""
    total = ends[-1] if ends else 0
    for n in sizes:
        total += n
        ends.append(total)


def end_at(ends: Sequence[int], index: int) -> int:
    """Bytes of entries 1..index, clipped to the log."""
    index = min(index, len(ends))
    return ends[index - 1] if index > 0 else 0


def read_span(ends: Sequence[int], offset: int, length: int, piece: Callable[[int, int, int], bytes]) -> bytes:
    """Bytes ``[offset, offset + length)`` of a log whose entry k (from 0) ends at ``ends[k]``;
    ``piece(k, start, n)`` reads n bytes of entry k from its byte ``start``. A bisect finds the first
    entry, so the cost is that of the bytes, not of the entries before them."""
    stop = min(offset + length, ends[-1] if ends else 0)
    out = []
    k = bisect_right(ends, offset)
    pos = offset
    while pos < stop:
        first = ends[k - 1] if k else 0
        n = min(ends[k], stop) - pos
        if n:
            out.append(piece(k, pos - first, n))
        pos += n
        k += 1
    return out[0] if len(out) == 1 else b"".join(out)


class ByteRanges:
    """``data_end`` / ``read_bytes`` over per-file prefix sums (``self._files[name].ends``), shared by
    both storages; each says how to read n bytes of its entry k from byte ``start`` (``_piece``)."""

    _files: dict[str, Any]

    def data_end(self, name: str, index: int) -> int:
        f = self._files.get(name)
        return end_at(f.ends, index - f.first + 1) if f else 0

    def read_bytes(self, name: str, offset: int, length: int) -> bytes:
        f = self._files.get(name)
        if not f:
            return b""
        return read_span(f.ends, offset, length, lambda k, start, n: self._piece(f, k, start, n))

    def _piece(self, f: Any, k: int, start: int, n: int) -> bytes:
        raise NotImplementedError

    def first(self, name: str) -> int:
        """The file's first retained index (1 unless trimmed)."""
        f = self._files.get(name)
        return f.first if f else 1

    def marks(self, name: str) -> list[tuple[int, int]]:
        f = self._files.get(name)
        return list(f.marks) if f else []


@dataclass
class _MemFile:
    meta: FileMeta | None = None
    first: int = 1                                  # index of entries[0]
    entries: list[Entry] = field(default_factory=list)
    runs: Runs = field(default_factory=list)
    ends: list[int] = field(default_factory=list)  # prefix sums of the entries' data sizes
    marks: list[tuple[int, int]] = field(default_factory=list)  # (index, below) of trim markers

    @property
    def last(self) -> int:
        return self.first + len(self.entries) - 1


class MemoryStorage(ByteRanges):
    """In-memory :class:`Storage`. In the simulator it outlives a node's crash, like a disk would."""

    def __init__(self) -> None:
        self._files: dict[str, _MemFile] = {}
        self.writes = 0
        self.flushed: dict[str, int] = {}  # last index known on disk, for the simulator's machine crashes

    def flush_data(self) -> None:
        """What ``fsync = "interval"`` does every ``fsync_interval``: the logs so far reach the disk."""
        self.flushed = {n: f.last for n, f in self._files.items()}

    def lose_unflushed(self, pick: Callable[[int, int], int]) -> None:
        """A machine crash: each log keeps entries up to ``pick(flushed, last)`` (some of what the page
        cache held may have reached the disk), metadata stays (it is always synced before it is sent),
        and so does a trim (synced at once)."""
        for name, f in self._files.items():
            lo = max(min(self.flushed.get(name, 0), f.last), f.first - 1)
            self.truncate(name, pick(lo, f.last))

    def names(self) -> list[str]:
        return sorted(self._files)

    def meta(self, name: str) -> FileMeta | None:
        f = self._files.get(name)
        return f.meta.copy() if f and f.meta else None

    def put_meta(self, name: str, meta: FileMeta) -> None:
        self._files.setdefault(name, _MemFile()).meta = meta.copy()
        self.writes += 1

    def last(self, name: str) -> tuple[int, int]:
        f = self._files.get(name)
        if not f or f.last == 0:
            return (0, 0)
        if not f.entries:
            return (f.last, term_at(f.runs, f.last, f.last))
        e = f.entries[-1]
        return (e.index, e.term)

    def runs(self, name: str) -> Runs:
        f = self._files.get(name)
        return list(f.runs) if f else []

    def read(self, name: str, start: int, stop: int, max_bytes: int | None = None) -> list[Entry]:
        f = self._files.get(name)
        if not f:
            return []
        out = f.entries[max(start - f.first, 0):max(stop - f.first, 0)]
        return out[:fit(out, max_bytes)]

    def append(self, name: str, entries: Sequence[Entry]) -> None:
        f = self._files.setdefault(name, _MemFile())
        for k, e in enumerate(entries):
            if e.index != f.last + 1 + k:
                raise ValueError(f"append to {name!r} at {e.index} leaves a gap after {f.last}")
        f.entries.extend(entries)
        extend_runs(f.runs, entries)
        extend_ends(f.ends, [len(e.data) for e in entries])
        f.marks.extend((e.index, e.trim.below) for e in entries if e.trim is not None)
        self.writes += 1

    def _piece(self, f: _MemFile, k: int, start: int, n: int) -> bytes:
        return f.entries[k].data[start:start + n]

    def truncate(self, name: str, keep: int) -> None:
        f = self._files.get(name)
        if f and f.last > keep:
            keep = max(keep, 0)
            if keep < f.first - 1:  # below the trimmed prefix: nothing retained, the log ends at keep
                f.first = keep + 1
            del f.entries[keep - f.first + 1:]
            del f.ends[keep - f.first + 1:]
            cut_runs(f.runs, keep)
            f.marks = [mk for mk in f.marks if mk[0] <= keep]
            self.writes += 1
            if self.flushed.get(name, 0) > keep:
                self.flushed[name] = keep  # a truncation is synced at once (see hydfs.blockfile)

    def trim(self, name: str, below: int) -> None:
        f = self._files.get(name)
        if not f or below <= f.first:
            return
        if below > f.last + 1:
            raise ValueError(f"trim of {name!r} below {below} past its end {f.last}")
        k = below - f.first
        total = f.ends[k - 1] if k else 0
        f.entries = f.entries[k:]  # a copy of the tail: the cost of the retained entries
        f.ends = [n - total for n in f.ends[k:]]
        f.marks = [mk for mk in f.marks if mk[0] >= below]
        f.first = below
        self.flushed[name] = max(self.flushed.get(name, 0), f.last)  # rewritten and synced at once
        self.writes += 1

    def install(self, name: str, first: int, runs: Runs) -> None:
        f = self._files.setdefault(name, _MemFile())
        f.first, f.entries, f.ends, f.marks, f.runs = first, [], [], [], list(runs)
        self.flushed[name] = first - 1
        self.writes += 1

    def drop(self, name: str) -> None:
        self._files.pop(name, None)
        self.writes += 1

    def sync(self) -> None:
        """Writes are durable at once here: the simulator delivers a node's messages after the step
        that wrote, which is the order the disk edge keeps by syncing before it sends."""

    def entries(self, name: str) -> list[Entry]:
        """The whole retained log (tests and the simulator only)."""
        f = self._files.get(name)
        return list(f.entries) if f else []

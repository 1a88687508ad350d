"""Durable Raft state: :class:`DiskStorage` for nodes, :class:`MemoryStorage` for the simulator.

Both keep the same three things and apply a :class:`raft.core.Ready` the same way (snapshot, then entries,
then hard state), so the simulator crashes exactly what a node would lose:

* the hard state (term, vote, commit). It is rewritten only when term or vote change: commit is
  volatile in Raft (a restarted node relearns it from the leader, and replays from its snapshot
  anyway), and skipping commit-only writes spares two fsyncs on almost every Ready;
* the snapshot: a state machine snapshot at some index, replaced atomically;
* the log after the snapshot. An InstallSnapshot replaces the whole log; a local compaction keeps
  the entries after the snapshot.

On disk, ``dir/`` holds ``hardstate`` and ``snapshot`` (``[u32 length][u32 crc32c][msgpack]``, written
to a temporary file, fsync'ed, renamed over the old one, directory fsync'ed) and ``log``: an
append-only file of records ``[u32 length][u32 crc32c][msgpack [index, term, data]]``, fsync'ed once
per :meth:`DiskStorage.save`. A conflicting suffix is cut with ``ftruncate`` + fsync before new
entries are appended, so no crash can leave old records after new ones.

:meth:`DiskStorage.load` drops a torn tail (a crash mid-append: a partial record, a bad checksum, or
zeros where the file grew before its data reached the disk) but refuses, with :class:`CorruptLog`, a
bad record that has a valid one anywhere after it: that is damage to acknowledged data, not a
write cut short, and a node that silently forgot acknowledged entries could break a quorum.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any, Protocol

import crc32c
import msgpack

from raft.core import Ready, Restored
from raft.messages import Entry, HardState, Snapshot

HEADER = struct.Struct(">II")  # record length, crc32c of the record body
MAX_RECORD = 1 << 30


class CorruptLog(Exception):
    """Stored Raft state is damaged beyond a torn last write: the node must not start from it."""


class Storage(Protocol):
    def load(self) -> Restored: ...

    def save(self, rd: Ready) -> None: ...

    def compact(self, snap: Snapshot) -> None: ...

    def close(self) -> None: ...


def _hs_changed(old: HardState, new: HardState | None) -> bool:
    return new is not None and (new.term, new.vote) != (old.term, old.vote)


class MemoryStorage:
    """Everything handed to :meth:`save` is durable once it returns; nothing else is (crash = drop the core)."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []  # consecutive, after the snapshot

    @property
    def first_index(self) -> int:
        return (self.snapshot.index if self.snapshot else 0) + 1

    def term_at(self, index: int) -> int | None:
        k = index - self.first_index
        return self.entries[k].term if 0 <= k < len(self.entries) else None

    def load(self) -> Restored:
        return Restored(self.hard_state, self.snapshot, list(self.entries))

    def save(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            self.snapshot, self.entries = rd.snapshot, []
        if rd.entries:
            k = rd.entries[0].index - self.first_index
            if not 0 <= k <= len(self.entries):
                raise ValueError(f"entries from {rd.entries[0].index} do not follow the stored log")
            del self.entries[k:]
            self.entries.extend(rd.entries)
        if _hs_changed(self.hard_state, rd.hard_state):
            assert rd.hard_state is not None
            self.hard_state = rd.hard_state

    def compact(self, snap: Snapshot) -> None:
        del self.entries[:max(snap.index + 1 - self.first_index, 0)]
        self.snapshot = snap

    def close(self) -> None:
        pass


def _frame(obj: Any) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return HEADER.pack(len(body), crc32c.crc32c(body)) + body


def _frame_at(buf: memoryview, pos: int) -> memoryview | None:
    """The body of an intact record at ``pos``, or None (cut short, zeros, or a bad checksum)."""
    if pos + HEADER.size > len(buf):
        return None
    length, crc = HEADER.unpack_from(buf, pos)
    start = pos + HEADER.size
    if length == 0 or length > min(MAX_RECORD, len(buf) - start):
        return None
    body = buf[start:start + length]
    return body if crc32c.crc32c(body) == crc else None


def _entry(body: memoryview, pos: int) -> Entry:
    try:
        index, term, data = msgpack.unpackb(body, raw=False)
        if type(index) is int and type(term) is int and isinstance(data, bytes) and index > 0 and term >= 0:
            return Entry(index, term, data)
    except Exception:  # msgpack raises several types; a good checksum over garbage is damage all the same
        pass
    raise CorruptLog(f"log record at offset {pos} has a good checksum but is not [index, term, data]")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DiskStorage:
    def __init__(self, dir: Path) -> None:
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._log = self.dir / "log"
        self._fd = -1
        self._first = 1                 # index of the log file's first record
        self._offsets: list[int] = []   # file offset of entry self._first + k
        self._end = 0                   # file size = where the next record goes
        self._hs = HardState()

    @property
    def last_index(self) -> int:
        return self._first + len(self._offsets) - 1

    # -- loading -----------------------------------------------------------------------------------
    def load(self) -> Restored:
        """Read everything back (dropping a torn tail), and open the log for appending."""
        raw_hs = self._read_atomic("hardstate")
        if raw_hs is not None:
            term, vote, commit = raw_hs
            if type(term) is not int or type(commit) is not int or not (vote is None or isinstance(vote, str)):
                raise CorruptLog(f"{self.dir / 'hardstate'}: not [term, vote, commit]")
            self._hs = HardState(term, vote, commit)
        raw_snap = self._read_atomic("snapshot")
        snap = None
        if raw_snap is not None:
            index, term, data = raw_snap
            if type(index) is not int or type(term) is not int or not isinstance(data, bytes):
                raise CorruptLog(f"{self.dir / 'snapshot'}: not [index, term, data]")
            snap = Snapshot(index, term, data)
        buf = memoryview(self._log.read_bytes() if self._log.exists() else b"")
        entries, offsets, end = self._scan(buf)
        if end < len(buf):  # torn tail
            with open(self._log, "r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())
        base = snap.index if snap else 0
        if entries and entries[0].index > base + 1:
            raise CorruptLog(f"log starts at {entries[0].index}, after a gap behind the snapshot at {base}")
        if snap and entries and entries[0].index <= snap.index:
            # the snapshot was written but the log not yet rewritten: after a compaction the log has the
            # snapshot's entry and we keep what follows; after an InstallSnapshot it is all stale
            k = snap.index - entries[0].index
            keep = k + 1 if k < len(entries) and entries[k].term == snap.term else len(entries)
            self._rewrite(buf[offsets[keep]:end] if keep < len(entries) else b"", snap.index + 1)
            entries = entries[keep:]
        else:
            self._first = entries[0].index if entries else base + 1
            self._offsets, self._end = offsets, end
            self._fd = os.open(self._log, os.O_RDWR | os.O_CREAT, 0o644)
        return Restored(self._hs, snap, entries)

    @staticmethod
    def _scan(buf: memoryview) -> tuple[list[Entry], list[int], int]:
        entries: list[Entry] = []
        offsets: list[int] = []
        pos = 0
        while pos < len(buf):
            body = _frame_at(buf, pos)
            if body is None:
                if any(_frame_at(buf, p) is not None for p in range(pos + 1, len(buf) - HEADER.size)):
                    raise CorruptLog(f"bad log record at offset {pos} with intact records after it")
                break
            e = _entry(body, pos)
            if entries and (e.index != entries[-1].index + 1 or e.term < entries[-1].term):
                raise CorruptLog(f"log record at offset {pos}: entry {e.index}/{e.term} after "
                                 f"{entries[-1].index}/{entries[-1].term}")
            entries.append(e)
            offsets.append(pos)
            pos += HEADER.size + len(body)
        return entries, offsets, pos

    def _read_atomic(self, name: str) -> list[Any] | None:
        path = self.dir / name
        if not path.exists():
            return None
        buf = memoryview(path.read_bytes())
        body = _frame_at(buf, 0)
        if body is None or HEADER.size + len(body) != len(buf):
            raise CorruptLog(f"{path}: bad checksum or length")
        try:
            obj = msgpack.unpackb(body, raw=False)
        except Exception as exc:
            raise CorruptLog(f"{path}: not msgpack") from exc
        if not isinstance(obj, list) or len(obj) != 3:
            raise CorruptLog(f"{path}: not a 3-field record")
        return obj

    # -- saving ------------------------------------------------------------------------------------
    def save(self, rd: Ready) -> None:
        if rd.snapshot is not None:  # installed from the leader: the whole old log goes
            self._write_atomic("snapshot", [rd.snapshot.index, rd.snapshot.term, rd.snapshot.data])
            self._rewrite(b"", rd.snapshot.index + 1)
        if rd.entries:
            self._append(rd.entries)
        if _hs_changed(self._hs, rd.hard_state):
            assert rd.hard_state is not None
            hs = rd.hard_state
            self._write_atomic("hardstate", [hs.term, hs.vote, hs.commit])
            self._hs = hs

    def _append(self, entries: list[Entry]) -> None:
        first = entries[0].index
        if not self._first <= first <= self.last_index + 1:
            raise ValueError(f"entries from {first} do not follow the stored log {self._first}..{self.last_index}")
        if first <= self.last_index:  # a conflicting suffix: cut it durably before writing after it
            cut = self._offsets[first - self._first]
            os.ftruncate(self._fd, cut)
            os.fsync(self._fd)
            del self._offsets[first - self._first:]
            self._end = cut
        records = [_frame([e.index, e.term, e.data]) for e in entries]
        data = b"".join(records)
        written = 0
        while written < len(data):
            written += os.pwrite(self._fd, data[written:], self._end + written)
        os.fsync(self._fd)
        pos = self._end
        for r in records:
            self._offsets.append(pos)
            pos += len(r)
        self._end = pos

    def compact(self, snap: Snapshot) -> None:
        """Keep ``snap`` and drop the log up to its index (rewriting the log file without that prefix)."""
        self._write_atomic("snapshot", [snap.index, snap.term, snap.data])
        k = snap.index + 1 - self._first
        keep = self._offsets[k] if 0 <= k < len(self._offsets) else self._end
        self._rewrite(os.pread(self._fd, self._end - keep, keep), snap.index + 1)

    def _rewrite(self, records: bytes | memoryview, first: int) -> None:
        """Replace the log file by ``records`` (whole records, the first of index ``first``)."""
        tmp = self.dir / "log.tmp"
        with open(tmp, "wb") as f:
            f.write(records)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._log)
        _fsync_dir(self.dir)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self._log, os.O_RDWR)
        offsets: list[int] = []
        pos = 0
        while pos < len(records):  # whole records we wrote or checked: walk their headers
            offsets.append(pos)
            pos += HEADER.size + HEADER.unpack_from(records, pos)[0]
        self._first, self._offsets, self._end = first, offsets, pos

    def _write_atomic(self, name: str, obj: list[Any]) -> None:
        tmp = self.dir / f"{name}.tmp"
        with open(tmp, "wb") as f:
            f.write(_frame(obj))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / name)
        _fsync_dir(self.dir)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

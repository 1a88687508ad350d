"""The crash-safe disk :class:`hydfs.storage.Storage`: one block file per HyDFS file, one meta journal.

On disk, under the node's ``hydfs`` directory, a file named N is ``<h>.log`` (its entries, see
:mod:`hydfs.blockfile`), with ``h`` a hash of N so any legal name maps to a short, safe file name.
Every file's name and :class:`FileMeta` live in ``meta.journal``, a block file of records
``{"n": name, "m": meta}`` (or ``{"n": name, "x": 1}`` when the file is dropped); the last record of
a name wins, and the journal is rewritten compactly once it holds many dead records.

**Group commit.** Writes go to the OS at once but become durable only at :meth:`DiskStorage.sync`,
which the node's I/O edge calls before it sends any message (the etcd "persist, then send" order):
one fsync of the journal and one fdatasync per written log for a whole batch of messages, however
many files it touched. A membership change that moves 1000 files costs a handful of fsyncs, not
20 000. With ``fsync_data=False`` (``fsync = "interval"``), ``sync`` makes only metadata durable and
the edge takes the written logs (:meth:`take_unsynced`) every ``fsync_interval`` and fdatasyncs
them in a thread, off the event loop.

**A full disk.** The journal keeps ``journal_reserve`` bytes of disk space allocated past its end
(``fallocate`` with ``KEEP_SIZE``), taken again whenever half of it is used. So once the data has
filled the disk, the node can still persist its promises and in-sync-set changes: it keeps
answering its peers, a takeover or a create does not wait for it, and only its data writes fail.
A compaction the full disk refuses is skipped (the old journal stays valid) and tried again after
1024 more records.

At start-up the journal and every log are scanned once: torn tails are cut, logs the journal does
not name (created by a batch that never reached its sync) are removed, and the entries' metadata
(not their data) stays in memory. The most recent entries' data is kept too (``tail_bytes``), so a
primary sending a fresh append to its replicas does not read back what it just wrote.
"""

from __future__ import annotations

import hashlib
import os
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydfs.blockfile import BlockFile, fsync_dir, write_atomic
from hydfs.entries import Entry, Runs, cut_runs, extend_runs, runs_upto, term_at
from hydfs.storage import ByteRanges, FileMeta, end_at, extend_ends

JOURNAL = "meta.journal"
BASE = "base"  # meta key of a trimmed log's first block


class StorageError(Exception):
    """The data directory cannot be used as it is (the message says why)."""


def _slug(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:40]


class _File:
    """A trimmed log starts with a *base* block (no data, meta ``{"base": first, "runs": ...}``): the
    index of its first entry and the terms of the dropped prefix. Entry ``i`` is block
    ``i - first + nb`` (``nb``: 1 with a base block, else 0)."""

    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.slug = _slug(name)
        self.log = BlockFile(root / f"{self.slug}.log")
        metas = [self.log.meta(i) for i in range(len(self.log.blocks))]   # kept from the open's scan
        self.nb, self.first = 0, 1
        self.runs: Runs = []
        if metas and BASE in metas[0]:
            self.nb, self.first = 1, metas[0][BASE]
            self.runs = [(a, b) for a, b in metas[0]["runs"]]
        extend_runs(self.runs, (Entry.from_meta(m, b"") for m in metas[self.nb:]))
        # prefix sums of the entries' data lengths (byte offset -> entry by bisect), 8 bytes an entry
        self.ends: array[int] = array("q")
        extend_ends(self.ends, [b.data_len for b in self.log.blocks.since(self.nb)])
        self.marks = [(m["i"], m["b"]) for m in metas[self.nb:] if "b" in m]
        self.log.blocks.drop_metas(self.nb)   # runs and marks have what is needed; reads go to the header
        self.meta: FileMeta | None = None
        self.cached: set[int] = set()  # indices of this file in the storage's tail cache

    @property
    def last(self) -> int:
        return self.first + len(self.log.blocks) - self.nb - 1

    def rebase(self, first: int, runs: Runs, keep: bool = True) -> None:
        """Drop every entry below ``first`` (every entry if not ``keep``) by rewriting the file; ``runs``
        are the terms up to ``first - 1``."""
        keep_from = self.nb + max(first - self.first, 0) if keep else len(self.log.blocks)
        tmp, blocks = self.log.copy_tail(keep_from, {BASE: first, "runs": [[a, b] for a, b in runs]})
        self.log.replace_with(tmp, blocks)
        k = keep_from - self.nb
        total = self.ends[k - 1] if 0 < k <= len(self.ends) else 0
        self.ends = array("q", (n - total for n in self.ends[k:]))
        self.marks = [mk for mk in self.marks if mk[0] >= first] if keep else []
        self.nb, self.first = 1, first


class DiskStorage(ByteRanges):
    def __init__(self, root: Path, fsync_data: bool = True, tail_bytes: int = 16 << 20,
                 journal_reserve: int = 1 << 20) -> None:
        self.root = root
        self.fsync_data = fsync_data
        self.tail_bytes = tail_bytes
        self.journal_reserve = journal_reserve
        self.compact_failures = 0  # journal compactions a full disk refused (the journal just grows)
        self._compact_floor = 0    # no compaction below this many records (raised after a failure)
        root.mkdir(parents=True, exist_ok=True)
        if any(root.glob("*.meta")):
            raise StorageError(f"{root} holds HyDFS data in an older on-disk format; move it away to start afresh")
        self._files: dict[str, _File] = {}
        self._pending: dict[str, dict[str, Any]] = {}   # journal records not yet written
        self._unsynced: dict[str, _File] = {}           # logs written since their last fdatasync
        self._tail: OrderedDict[tuple[str, int], Entry] = OrderedDict()
        self._tail_size = 0
        self.recovered_bytes = 0  # torn tails cut at start-up
        self.syncs = 0            # fsync/fdatasync calls made (benchmarks and tests read it)
        self._dir_dirty = not (root / JOURNAL).exists()  # a new name in the directory: fsync it too
        self.journal = BlockFile(root / JOURNAL, self.journal_reserve)
        self.recovered_bytes += self.journal.cut_bytes
        metas: dict[str, dict[str, Any] | None] = {}
        for i in range(len(self.journal.blocks)):
            rec = self.journal.meta(i)
            if rec.get("x"):
                metas.pop(rec["n"], None)
            else:
                metas[rec["n"]] = rec.get("m")
        self.journal.blocks.drop_metas()   # read once, here
        for name, doc in metas.items():
            f = _File(root, name)
            f.meta = FileMeta.from_dict(doc) if doc else None
            self.recovered_bytes += f.log.cut_bytes
            self._files[name] = f
            self._release(f)
        known = {f.slug for f in self._files.values()}
        for path in root.glob("*.log"):
            if path.stem not in known:
                path.unlink()  # its journal record never became durable, so nobody heard of it
        for tmp in root.glob("*.tmp"):
            tmp.unlink(missing_ok=True)  # a compaction interrupted by a crash

    # -- durability -------------------------------------------------------------------------------
    def sync(self) -> None:
        """Make every write so far durable (logs only if ``fsync_data``); the edge calls it before sending."""
        self._sync_journal()
        if self.fsync_data:
            self.flush_data()

    def _sync_journal(self) -> None:
        if not self._pending:
            return
        self.journal.append_many(({"n": n, **rec}, b"") for n, rec in self._pending.items())
        self.journal.sync()
        if self._dir_dirty:  # new logs (or the journal itself) exist after a power loss too
            fsync_dir(self.root)
            self._dir_dirty = False
            self.syncs += 1
        self._pending.clear()  # only once durable: after a failed sync the records are written again
        self.syncs += 1
        if len(self.journal.blocks) > max(1024, 4 * len(self._files), self._compact_floor):
            try:
                self._compact()
            except OSError:  # a full disk: the records are durable in the old journal, which goes on
                self.compact_failures += 1
                self._compact_floor = len(self.journal.blocks) + 1024

    def flush_data(self) -> None:
        """fdatasync every log written since its last sync."""
        for f in self._unsynced.values():
            if f.log.fd >= 0:
                f.log.sync()
                self.syncs += 1
        self._unsynced.clear()

    def take_unsynced(self) -> list[int]:
        """Duplicates of the fds of logs written since their last sync, for a background
        fdatasync (the caller closes them); the logs count as synced from here on."""
        fds = [os.dup(f.log.fd) for f in self._unsynced.values() if f.log.fd >= 0]
        for f in self._unsynced.values():
            f.log.dirty = False
        self._unsynced.clear()
        self.syncs += len(fds)
        return fds

    def _compact(self) -> None:
        path = self.root / JOURNAL
        try:
            write_atomic(path, [({"n": f.name, "m": f.meta.to_dict() if f.meta else None}, b"")
                                for f in self._files.values()])
        except OSError:
            if os.stat(path).st_ino == os.fstat(self.journal.fd).st_ino:
                raise  # the old journal is still the one on disk: go on with it
            # the new one was renamed into place before the failure (the directory's fsync): records
            # must go there from now on, not to the unlinked old one
        self.journal.close()
        self.journal = BlockFile(path, self.journal_reserve)
        self.syncs += 2

    def _record(self, f: _File) -> None:
        self._pending[f.name] = {"m": f.meta.to_dict() if f.meta else None}

    def _file(self, name: str) -> _File:
        """The file to write to (its log opened again if it was a released tombstone)."""
        f = self._files.get(name)
        if f is None:
            f = _File(self.root, name)
            self._dir_dirty = True
            self._record(f)  # the name reaches the journal in the same sync as its first entries
            self._files[name] = f
        else:
            f.log.reopen()
        return f

    def _release(self, f: _File) -> None:
        """A tombstone (deleted, nothing in its log) keeps its name and meta but not a descriptor: a
        removed file left one open for good on every replica, so a job's open files grew with every
        snapshot file it ever removed. Its next write opens it again (:meth:`_file`)."""
        if f.meta is not None and f.meta.deleted is not None and not f.log.blocks and f.name not in self._unsynced:
            f.log.close()

    @property
    def tail_size(self) -> int:
        """Bytes of entry data the tail cache holds now (at most ``tail_bytes``)."""
        return self._tail_size

    def open_files(self) -> int:
        """Descriptors held by logs (the journal's not counted)."""
        return sum(1 for f in self._files.values() if f.log.fd >= 0)

    # -- the tail cache ---------------------------------------------------------------------------
    def _remember(self, f: _File, entries: Sequence[Entry]) -> None:
        for e in entries:
            if len(e.data) > self.tail_bytes:
                continue
            self._tail[(f.name, e.index)] = e
            self._tail_size += len(e.data)
            f.cached.add(e.index)
        while self._tail_size > self.tail_bytes:
            (name, index), old = self._tail.popitem(last=False)
            self._tail_size -= len(old.data)
            owner = self._files.get(name)
            if owner is not None:
                owner.cached.discard(index)

    def _forget(self, f: _File, keep: int, below: int = 0) -> None:
        for index in [i for i in f.cached if i > keep or i < below]:
            f.cached.discard(index)
            self._tail_size -= len(self._tail.pop((f.name, index)).data)

    # -- Storage ----------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self._files)

    def meta(self, name: str) -> FileMeta | None:
        f = self._files.get(name)
        return f.meta.copy() if f and f.meta else None

    def put_meta(self, name: str, meta: FileMeta) -> None:
        f = self._file(name)
        f.meta = meta.copy()
        self._record(f)
        self._release(f)

    def last(self, name: str) -> tuple[int, int]:
        f = self._files.get(name)
        if not f or f.last == 0:
            return (0, 0)
        return (f.last, term_at(f.runs, f.last, f.last))

    def runs(self, name: str) -> Runs:
        f = self._files.get(name)
        return list(f.runs) if f else []

    def read(self, name: str, start: int, stop: int, max_bytes: int | None = None) -> list[Entry]:
        f = self._files.get(name)
        if not f:
            return []
        blocks, first, nb = f.log.blocks, f.first, f.nb
        lo, hi = max(start, first) - first + nb, min(stop, f.last + 1) - first + nb
        if max_bytes is not None:  # cut by the blocks' lengths before any data is read
            size = 0
            for k in range(lo, hi):
                size += blocks.data_len(k)
                if k > lo and size > max_bytes:
                    hi = k
                    break
        out = []
        for k in range(lo, hi):
            e = self._tail.get((name, k - nb + first))
            out.append(e if e is not None else Entry.from_meta(*f.log.read_block(k)))
        return out

    def data_size(self, name: str, start: int = 1, stop: int | None = None) -> int:
        f = self._files.get(name)
        if not f:
            return 0
        hi = len(f.ends) if stop is None else stop - f.first
        return max(0, end_at(f.ends, hi) - end_at(f.ends, max(start, f.first) - f.first))

    def _piece(self, f: _File, k: int, start: int, n: int) -> bytes:
        e = self._tail.get((f.name, f.first + k))  # a fresh entry is still in memory: no read back
        return e.data[start:start + n] if e is not None else f.log.read(f.nb + k, start, n)

    def append(self, name: str, entries: Sequence[Entry]) -> None:
        f = self._file(name)
        n = f.last
        for k, e in enumerate(entries):
            if e.index != n + 1 + k:
                raise ValueError(f"append to {name!r} at {e.index} leaves a gap after {n}")
        f.log.append_many((e.meta(), e.data) for e in entries)
        self._unsynced[name] = f
        extend_runs(f.runs, entries)
        extend_ends(f.ends, [len(e.data) for e in entries])
        f.marks.extend((e.index, e.trim.below) for e in entries if e.trim is not None)
        self._remember(f, entries)

    def truncate(self, name: str, keep: int) -> None:
        f = self._files.get(name)
        if not f or f.last <= keep:
            return
        keep = max(keep, 0)
        if keep == 0:  # an empty, untrimmed log: the base block goes too
            f.log.truncate(0)
            f.nb, f.first, f.ends, f.marks = 0, 1, array("q"), []
        elif keep < f.first - 1:  # below the dropped prefix: nothing retained, the log ends at keep
            f.rebase(keep + 1, runs_upto(f.runs, keep), keep=False)
            self._unsynced.pop(name, None)
        else:
            f.log.truncate(f.nb + keep - f.first + 1)
            del f.ends[keep - f.first + 1:]
            f.marks = [mk for mk in f.marks if mk[0] <= keep]
        self.syncs += 1
        self._unsynced.pop(name, None)  # a truncation fsyncs the log (BlockFile.truncate)
        cut_runs(f.runs, keep)
        self._forget(f, keep)

    def trim(self, name: str, below: int) -> None:
        """Rewrite the retained entries into a new file (a base block first) and rename it over the log:
        see :meth:`hydfs.blockfile.BlockFile.copy_tail`. Durable at once, like a truncation."""
        f = self._files.get(name)
        if not f or below <= f.first:
            return
        if below > f.last + 1:
            raise ValueError(f"trim of {name!r} below {below} past its end {f.last}")
        f.rebase(below, runs_upto(f.runs, below - 1))
        self._unsynced.pop(name, None)  # the copy was fsynced whole
        self.syncs += 2
        self._forget(f, f.last, below)

    def install(self, name: str, first: int, runs: Runs) -> None:
        f = self._file(name)
        if first <= 1:
            self.truncate(name, 0)
            return
        self._forget(f, 0)
        f.rebase(first, runs, keep=False)
        f.runs = list(runs)
        self._unsynced.pop(name, None)
        self.syncs += 2

    def drop(self, name: str) -> None:
        f = self._files.pop(name, None)
        if f is None:
            return
        f.log.close()
        self._unsynced.pop(name, None)
        self._forget(f, 0)
        self._pending[name] = {"x": 1}
        self._sync_journal()  # durable before the log goes: a crash must not leave a live name, no log
        (self.root / f"{f.slug}.log").unlink(missing_ok=True)

    def close(self) -> None:
        self.sync()
        self.flush_data()
        for f in self._files.values():
            f.log.close()
        self.journal.close()

"""The crash-safe disk :class:`hydfs.storage.Storage`: one block file and one meta file per HyDFS file.

On disk, under the node's ``hydfs`` directory, a file named N is ``<h>.log`` (its entries, see
:mod:`hydfs.blockfile`) and ``<h>.meta`` (its name and :class:`FileMeta`, replaced atomically),
with ``h`` a hash of N so any legal name maps to a short, safe file name. At start-up every log is
scanned once: torn tails are cut, and the entries' metadata (not their data) stays in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from hydfs.blockfile import BlockFile
from hydfs.entries import Entry, Runs, cut_runs, extend_runs
from hydfs.storage import FileMeta


def _slug(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:40]


class _File:
    def __init__(self, root: Path, name: str, fsync: bool) -> None:
        self.name = name
        self.slug = _slug(name)
        self.log = BlockFile(root / f"{self.slug}.log", fsync=fsync)
        self.runs: Runs = []
        extend_runs(self.runs, (Entry.from_meta(b.meta, b"") for b in self.log.blocks))
        self.meta: FileMeta | None = None


class DiskStorage:
    def __init__(self, root: Path, fsync: bool = True) -> None:
        self.root = root
        self.fsync = fsync
        root.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, _File] = {}
        self.recovered_bytes = 0  # torn tails cut at start-up
        for mpath in sorted(root.glob("*.meta")):
            try:
                doc = json.loads(mpath.read_text())
                name = doc["name"]
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a meta file that never finished its rename cannot exist; anything else is not ours
            f = _File(root, name, fsync)
            f.meta = FileMeta.from_dict(doc["meta"]) if doc.get("meta") else None
            self.recovered_bytes += f.log.cut_bytes
            self._files[name] = f
        for tmp in root.glob("*.tmp"):
            tmp.unlink(missing_ok=True)  # a meta write interrupted by a crash

    def _write_meta(self, f: _File) -> None:
        path = self.root / f"{f.slug}.meta"
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as out:
            json.dump({"name": f.name, "meta": f.meta.to_dict() if f.meta else None}, out)
            out.flush()
            if self.fsync:
                os.fsync(out.fileno())
        os.replace(tmp, path)
        if self.fsync:
            dfd = os.open(self.root, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def _file(self, name: str) -> _File:
        f = self._files.get(name)
        if f is None:
            f = _File(self.root, name, self.fsync)
            self._write_meta(f)  # the name is known on disk before any entry is
            self._files[name] = f
        return f

    # -- Storage ----------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self._files)

    def meta(self, name: str) -> FileMeta | None:
        f = self._files.get(name)
        return f.meta.copy() if f and f.meta else None

    def put_meta(self, name: str, meta: FileMeta) -> None:
        f = self._file(name)
        f.meta = meta.copy()
        self._write_meta(f)

    def last(self, name: str) -> tuple[int, int]:
        f = self._files.get(name)
        if not f or not f.log.blocks:
            return (0, 0)
        m = f.log.blocks[-1].meta
        return (m["i"], m["t"])

    def runs(self, name: str) -> Runs:
        f = self._files.get(name)
        return list(f.runs) if f else []

    def read(self, name: str, start: int, stop: int, max_bytes: int | None = None) -> list[Entry]:
        f = self._files.get(name)
        if not f:
            return []
        lo, hi = max(start, 1) - 1, min(max(stop - 1, 0), len(f.log.blocks))
        if max_bytes is not None:  # cut by the blocks' lengths before any data is read
            size = 0
            for k in range(lo, hi):
                size += f.log.blocks[k].data_len
                if k > lo and size > max_bytes:
                    hi = k
                    break
        return [Entry.from_meta(f.log.blocks[k].meta, f.log.read(k)) for k in range(lo, hi)]

    def data_size(self, name: str, start: int = 1, stop: int | None = None) -> int:
        f = self._files.get(name)
        if not f:
            return 0
        blocks = f.log.blocks[max(start, 1) - 1:None if stop is None else max(stop - 1, 0)]
        return sum(b.data_len for b in blocks)

    def append(self, name: str, entries: Sequence[Entry]) -> None:
        f = self._file(name)
        n = len(f.log.blocks)
        for k, e in enumerate(entries):
            if e.index != n + 1 + k:
                raise ValueError(f"append to {name!r} at {e.index} leaves a gap after {n}")
        f.log.append_many((e.meta(), e.data) for e in entries)
        extend_runs(f.runs, entries)

    def truncate(self, name: str, keep: int) -> None:
        f = self._files.get(name)
        if f and len(f.log.blocks) > keep:
            f.log.truncate(max(keep, 0))
            cut_runs(f.runs, keep)

    def drop(self, name: str) -> None:
        f = self._files.pop(name, None)
        if f is None:
            return
        f.log.close()
        (self.root / f"{f.slug}.meta").unlink(missing_ok=True)
        (self.root / f"{f.slug}.log").unlink(missing_ok=True)

    def close(self) -> None:
        for f in self._files.values():
            f.log.close()

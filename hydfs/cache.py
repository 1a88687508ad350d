"""The client's LRU file cache, bounded in bytes.

A cached copy is served only if it is at least as new as the client's own last acknowledged append
to that file (read-your-own-appends); other clients' newer appends may be missed until the entry is
evicted or invalidated, which is the trade the cache exists for.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass


def parse_size(spec: str, data_bytes: int | None = None) -> int:
    """``"64MB"``, ``"1048576"`` or ``"10%"`` (of ``data_bytes``, the data the cache is for)."""
    s = spec.strip().upper()
    if s.endswith("%"):
        if data_bytes is None:
            raise ValueError("a percentage cache size needs the data size")
        pct = float(s[:-1])
        if not 0 <= pct <= 100:
            raise ValueError(f"cache percentage out of range: {spec}")
        return int(data_bytes * pct / 100)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KIB|MIB|GIB)?", s)
    if not m:
        raise ValueError(f"bad cache size {spec!r}: use bytes (e.g. 64MB) or a percentage (e.g. 10%)")
    mult = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    return int(float(m.group(1)) * mult[m.group(2) or "B"])


@dataclass
class _Entry:
    version: int  # committed entry count of the file when read
    data: bytes


class FileCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._own: dict[str, int] = {}  # file -> version that includes our last acked append

    def get(self, name: str) -> tuple[int, bytes] | None:
        e = self._entries.get(name)
        if e is None or e.version < self._own.get(name, 0):
            self.misses += 1
            return None
        self._entries.move_to_end(name)
        self.hits += 1
        return e.version, e.data

    def put(self, name: str, version: int, data: bytes) -> None:
        if len(data) > self.capacity:
            self.invalidate(name)
            return
        old = self._entries.get(name)
        if old is not None and old.version > version:
            return  # never replace a newer copy with an older one
        self.invalidate(name)
        self._entries[name] = _Entry(version, data)
        self.used += len(data)
        while self.used > self.capacity:
            _, ev = self._entries.popitem(last=False)
            self.used -= len(ev.data)

    def appended(self, name: str, version: int) -> None:
        """Our append was acknowledged and made the file reach ``version``."""
        self._own[name] = max(self._own.get(name, 0), version)

    def invalidate(self, name: str) -> None:
        e = self._entries.pop(name, None)
        if e is not None:
            self.used -= len(e.data)

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "bytes": self.used, "capacity": self.capacity,
                "files": len(self._entries)}

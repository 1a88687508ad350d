"""The consistent-hash ring: node ids and file names hashed onto one circle.

Placement is a pure function of (name, set of live ids) so every node that agrees on membership
agrees on who holds a file and who its primary is, without talking.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Iterable
from functools import lru_cache

RING_BITS = 64


@lru_cache(maxsize=65536)
def position(x: str) -> int:
    """First 8 bytes of sha256, big-endian: uniform, stable across processes and Python versions."""
    return int.from_bytes(hashlib.sha256(x.encode()).digest()[:8], "big")


class Ring:
    """An immutable ring over a set of node ids; ties on position break by id so order is total."""

    __slots__ = ("_ids", "_memo", "_pos")

    def __init__(self, node_ids: Iterable[str] = ()) -> None:
        ids = sorted(set(node_ids), key=lambda n: (position(n), n))
        self._ids: tuple[str, ...] = tuple(ids)
        self._pos: tuple[int, ...] = tuple(position(n) for n in ids)
        self._memo: dict[tuple[str, int], tuple[str, ...]] = {}  # a ring never changes: placements stay

    @property
    def nodes(self) -> tuple[str, ...]:
        """Node ids in ring order."""
        return self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._ids

    def replicas(self, name: str, n: int = 3) -> list[str]:
        """The first ``n`` distinct successors of ``name`` (fewer if the ring is smaller)."""
        got = self._memo.get((name, n))
        if got is None:
            if not self._ids or n <= 0:
                return []
            start = bisect_left(self._pos, position(name))
            size = len(self._ids)
            got = tuple(self._ids[(start + k) % size] for k in range(min(n, size)))
            if len(self._memo) < 100_000:
                self._memo[(name, n)] = got
        return list(got)

    def primary(self, name: str) -> str | None:
        reps = self.replicas(name, 1)
        return reps[0] if reps else None

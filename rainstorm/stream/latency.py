"""Latency histograms: log-scaled buckets (about 4 % wide), cheap to add to and to merge.

A paced source knows when each of its lines arrived; a sink knows when its output became durable.
A task that is both (a fused job) records, per line, the time between the two. A batch of n lines
that arrived over [first, last] and became durable at t adds n samples spread evenly over
[t - last, t - first] (in at most ``SPREAD`` steps), so a 20 000-line batch costs 16 additions.
Buckets travel in ``rainstorm status --json`` as ``{bucket: count}``; :func:`quantile` reads them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping

STEPS = 16          # buckets per doubling: 2 ** (1/16) = 4.4 % wide
SPREAD = 16         # sub-steps a batch's samples are spread over
FLOOR = 1e-6        # seconds: everything below lands in the first bucket


def bucket(seconds: float) -> int:
    return max(0, int(math.log2(max(seconds, FLOOR) / FLOOR) * STEPS))


def value(b: int) -> float:
    """The upper edge of bucket ``b`` in seconds (what a quantile reports: never optimistic)."""
    return FLOOR * 2 ** ((b + 1) / STEPS)


class Latency:
    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.max = 0.0

    def add(self, lo: float, hi: float, n: int) -> None:
        """``n`` samples spread evenly over ``[lo, hi]`` seconds."""
        if n <= 0:
            return
        self.max = max(self.max, hi)
        steps = min(n, SPREAD)
        for k in range(steps):
            share = n // steps + (1 if k < n % steps else 0)
            x = lo + (hi - lo) * (k + 0.5) / steps if steps > 1 else (lo + hi) / 2
            self.counts[bucket(x)] += share

    def to_wire(self) -> dict[str, int]:
        return {str(b): c for b, c in self.counts.items()}


def merge(hists: list[Mapping[str, int]]) -> Counter[int]:
    out: Counter[int] = Counter()
    for h in hists:
        for b, c in h.items():
            out[int(b)] += int(c)
    return out


def quantile(counts: Mapping[int, int], q: float) -> float | None:
    """The ``q`` quantile (0..1) in seconds, or None with no samples."""
    total = sum(counts.values())
    if not total:
        return None
    rank = q * total
    seen = 0
    for b in sorted(counts):
        seen += counts[b]
        if seen >= rank:
            return value(b)
    return value(max(counts))

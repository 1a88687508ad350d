"""Append entries and the term-run summary two logs are compared by.

Two logs that hold an entry with the same (index, term) are identical up to it (every replica only
accepts an entry after checking the one before), so a log is summarised by its runs of equal term:
``[(first_index, term), ...]``. That list is tiny (one item per primary change) and is enough to
find where two logs diverge in one message instead of walking back one entry at a time.

A trimmed log (see docs/hydfs.md, "Trim") keeps the runs of the entries it dropped: they were
committed, so every log agrees with them, and comparing two logs never mistakes a dropped prefix
for a divergence.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

Runs = list[tuple[int, int]]  # (first index, term), ascending by index

MAX_INT = (1 << 63) - 1
MAX_ID = 256
MAX_TABLE = 100_000  # clients / fence keys a trim marker may carry


@dataclass(frozen=True, slots=True)
class TrimMark:
    """What makes an entry a trim marker: drop the entries below ``below`` once the marker is committed.
    It carries the tables the dropped entries would otherwise take with them (cumulative over every
    earlier trim): per client the highest trimmed seq (``floors``) and the fence table, so the tables
    stay a function of the retained log. ``fenced``: the clients whose every trimmed entry carried one
    fence key, with the highest epoch they carried; once the fence table passes that epoch every retry
    of theirs is refused ``fenced``, so their floor is dropped (docs/hydfs.md, "A bounded idempotency
    table")."""

    below: int
    floors: dict[str, int] = field(hash=False)
    fences: dict[str, int] = field(hash=False)
    fenced: dict[str, tuple[str, int]] = field(default_factory=dict, hash=False)

    def to_wire(self) -> list[Any]:
        if not self.fenced:
            return [self.below, self.floors, self.fences]
        return [self.below, self.floors, self.fences, {c: list(fe) for c, fe in self.fenced.items()}]

    @classmethod
    def from_wire(cls, v: object) -> TrimMark:
        if not isinstance(v, (list, tuple)) or len(v) not in (3, 4):
            raise ValueError("trim shape")
        below, floors, fences = v[:3]
        if not (_nat(below) and below >= 1):
            raise ValueError("trim below")
        return cls(below, _table(floors), _table(fences), _fenced(v[3]) if len(v) == 4 else {})


def _fenced(v: object) -> dict[str, tuple[str, int]]:
    if not isinstance(v, dict) or len(v) > MAX_TABLE:
        raise ValueError("trim fenced")
    out: dict[str, tuple[str, int]] = {}
    for k, x in v.items():
        if not (isinstance(k, str) and len(k) <= MAX_ID and isinstance(x, (list, tuple)) and len(x) == 2
                and isinstance(x[0], str) and len(x[0]) <= MAX_ID and _nat(x[1])):
            raise ValueError("trim fenced item")
        out[k] = (x[0], x[1])
    return out


def _table(v: object) -> dict[str, int]:
    if not isinstance(v, dict) or len(v) > MAX_TABLE:
        raise ValueError("trim table")
    if not all(isinstance(k, str) and len(k) <= MAX_ID and _nat(x) for k, x in v.items()):
        raise ValueError("trim table item")
    return dict(v)


@dataclass(frozen=True, slots=True)
class Entry:
    """One acknowledged-or-not append. ``fence``/``epoch`` record a fence so the table is derivable;
    ``trim`` makes the entry a trim marker (its data is empty)."""

    term: int
    index: int
    client_id: str
    client_seq: int
    data: bytes
    fence: str | None = None
    epoch: int | None = None
    trim: TrimMark | None = None

    def to_wire(self) -> list[Any]:
        out = [self.term, self.index, self.client_id, self.client_seq, self.data, self.fence, self.epoch]
        if self.trim is not None:
            out.append(self.trim.to_wire())
        return out

    @classmethod
    def from_wire(cls, v: object) -> Entry:
        """Raises ValueError on anything that is not exactly a wire entry."""
        if not isinstance(v, (list, tuple)) or len(v) not in (7, 8):
            raise ValueError("entry shape")
        term, index, cid, seq, data, fence, epoch = v[:7]
        trim = TrimMark.from_wire(v[7]) if len(v) == 8 else None
        if not (_nat(term) and _nat(index) and index >= 1 and _nat(seq)):
            raise ValueError("entry ints")
        if not isinstance(cid, str) or len(cid) > MAX_ID or not isinstance(data, bytes):
            raise ValueError("entry fields")
        if (fence is None) != (epoch is None):
            raise ValueError("entry fence")
        if fence is not None and not (isinstance(fence, str) and len(fence) <= MAX_ID and _nat(epoch)):
            raise ValueError("entry fence")
        return cls(term, index, cid, seq, data, fence, epoch, trim)

    def meta(self) -> dict[str, Any]:
        """Everything but the data, as a small msgpack-able dict (for block-file storage)."""
        m: dict[str, Any] = {"t": self.term, "i": self.index, "c": self.client_id, "s": self.client_seq}
        if self.fence is not None:
            m["f"] = self.fence
            m["e"] = self.epoch
        if self.trim is not None:
            m["b"], m["fl"], m["fe"] = self.trim.below, self.trim.floors, self.trim.fences
            if self.trim.fenced:
                m["fz"] = {c: list(fe) for c, fe in self.trim.fenced.items()}
        return m

    @classmethod
    def from_meta(cls, meta: dict[str, Any], data: bytes) -> Entry:
        trim = TrimMark(meta["b"], meta["fl"], meta["fe"], _fenced(meta.get("fz", {}))) if "b" in meta else None
        return cls(meta["t"], meta["i"], meta["c"], meta["s"], data, meta.get("f"), meta.get("e"), trim)


def _nat(v: object) -> bool:
    return type(v) is int and 0 <= v <= MAX_INT


def term_at(runs: Runs, last: int, index: int) -> int:
    """Term of the entry at ``index``; 0 for index 0, -1 past the end."""
    if index == 0:
        return 0
    if index < 0 or index > last or not runs:
        return -1
    k = bisect_right(runs, (index, MAX_INT)) - 1
    return runs[k][1] if k >= 0 else -1


def common_prefix(a: Runs, a_last: int, b: Runs, b_last: int) -> int:
    """Length of the longest prefix two logs share (exact given the log matching property)."""
    limit = min(a_last, b_last)
    if limit <= 0:
        return 0
    points = sorted({s for s, _ in a} | {s for s, _ in b} | {1})
    for s in points:
        if s > limit:
            break
        if term_at(a, a_last, s) != term_at(b, b_last, s):
            return s - 1
    return limit


def extend_runs(runs: Runs, entries: Iterable[Entry]) -> None:
    for e in entries:
        if not runs or runs[-1][1] != e.term:
            runs.append((e.index, e.term))


def runs_upto(runs: Runs, index: int) -> Runs:
    """The runs of entries 1..index (what a trimmed log keeps of its dropped prefix: its terms)."""
    return [r for r in runs if r[0] <= index]


def cut_runs(runs: Runs, keep: int) -> None:
    """Drop runs past index ``keep`` (in place)."""
    while runs and runs[-1][0] > keep:
        runs.pop()


def valid_runs(v: object, last: int) -> Runs:
    """Parse wire runs; raises ValueError unless strictly increasing indices within 1..last."""
    if not isinstance(v, (list, tuple)) or len(v) > 100_000:
        raise ValueError("runs")
    out: Runs = []
    for item in v:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise ValueError("run")
        first, term = item
        if not (_nat(first) and _nat(term)) or first < 1 or first > last:
            raise ValueError("run range")
        if out and (first <= out[-1][0] or term < out[-1][1]):
            raise ValueError("run order")
        out.append((first, term))
    if last > 0 and (not out or out[0][0] != 1):
        raise ValueError("runs start")
    return out


def check_contiguous(entries: Sequence[Entry], first: int) -> bool:
    return all(e.index == first + k for k, e in enumerate(entries)) and all(
        entries[k].term <= entries[k + 1].term for k in range(len(entries) - 1)
    )

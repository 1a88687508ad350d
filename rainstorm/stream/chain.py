"""Running one physical stage's fused operators over a batch, and shaping what the commit logs.

The result of a batch is what goes into ONE commit record: the outputs grouped by downstream
partition and already encoded (or, for the sink, the exact destination lines), the dead-letter lines,
and the aggregate state changes. Encoding happens here, before the commit, so a tuple that cannot be
encoded becomes a dead letter instead of failing the whole commit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from rainstorm.stream.operators import DeadLetter, FilteredTransform, Operator, Tup, error_line
from rainstorm.stream.partition import partition_of
from rainstorm.stream.plan import Plan
from rainstorm.stream.records import StateChanges, encode_batch, split_encodable
from rainstorm.stream.source import Lines

_json_line = json.JSONEncoder(ensure_ascii=False, allow_nan=True).encode
_json_dead = json.JSONEncoder(ensure_ascii=False, default=repr).encode


def sink_line(key: Any, value: Any) -> str:
    """The destination's line format: a JSON array ``[key, value]``."""
    return _json_line((key, value))


def dead_lines(dead: list[DeadLetter]) -> bytes:
    """Dead letters as JSON lines ``{"id", "stage", "key", "value", "error"}``; values JSON cannot show
    are written as their repr."""
    if not dead:
        return b""
    rows = [_json_dead({"id": tid, "stage": stage, "key": k, "value": v, "error": err})
            for tid, stage, k, v, err in dead]
    return ("\n".join(rows) + "\n").encode("utf-8", "backslashreplace")


def sink_lines(tuples: list[Tup], dead: list[DeadLetter], stage: int) -> bytes:
    """The destination lines of a batch; an output JSON cannot write is a dead letter of ``stage``."""
    if not tuples:
        return b""
    try:
        return ("\n".join([_json_line((k, v)) for _, k, v in tuples]) + "\n").encode()
    except Exception:
        pass
    lines = []
    for tid, k, v in tuples:  # slow path: find the outputs JSON cannot write
        try:
            lines.append((_json_line((k, v)) + "\n").encode())
        except Exception as exc:
            dead.append((tid, stage, k, v, "output cannot be written as JSON: " + error_line(exc)))
    return b"".join(lines)


@dataclass
class BatchResult:
    outputs: dict[int, bytes] = field(default_factory=dict)     # partition -> encoded batch
    counts: dict[int, int] = field(default_factory=dict)        # partition -> tuples in it
    sink: bytes = b""
    dead: list[DeadLetter] = field(default_factory=list)
    state: StateChanges = field(default_factory=list)


class Chain:
    """The operators of one physical stage, their state, and where their outputs go."""

    def __init__(self, plan: Plan, stage: int) -> None:
        ps = plan.phys[stage]
        self.ops: list[tuple[int, Operator]] = list(ps.ops)
        self.last_logical = ps.last_logical
        self.state: dict[int, dict[Any, Any]] = {i: {} for i, op in self.ops if op.stateful}
        self.sink = plan.is_sink(stage)
        nxt = None if self.sink else plan.phys[stage + 1]
        self.parts = nxt.tasks if nxt else 0
        head = nxt.ops[0] if nxt and nxt.ops else None
        # tuples entering an AggregateByKey stage are partitioned on its group key
        self.router: Operator | None = head[1] if head and head[1].stateful else None
        self.router_stage = head[0] if head else -1

    def run(self, batch: list[Any]) -> BatchResult:
        return self._run(batch, self.ops, BatchResult())

    def run_source(self, src: str, chunk: Lines) -> BatchResult:
        """A source batch: the first operator sees the lines before any tuple or id is built (a filter
        that drops most lines never pays for their ids); ``<src>:<byte offset>`` ids come after."""
        res = BatchResult()
        head = self.ops[0][1] if self.ops else None
        if isinstance(head, FilteredTransform):
            return self._run(head.run_lines(self.ops[0][0], src, chunk, res.dead), self.ops[1:], res)
        return self._run(chunk.tuples(src), self.ops, res)

    def _run(self, tuples: list[Any], ops: list[tuple[int, Operator]], res: BatchResult) -> BatchResult:
        dead = res.dead
        for stage, op in ops:
            changes: dict[Any, Any] = {}
            tuples = op.run(stage, tuples, dead, self.state.get(stage, changes), changes)
            if changes:
                res.state.append((stage, list(changes.items())))
        if self.sink:
            res.sink = self._sink(tuples, dead)
        else:
            self._route(tuples, res)
        return res

    def _sink(self, tuples: list[Tup], dead: list[DeadLetter]) -> bytes:
        return sink_lines(tuples, dead, self.last_logical)

    def _route(self, tuples: list[Tup], res: BatchResult) -> None:
        n, router, dead = self.parts, self.router, res.dead
        groups: dict[int, list[Tup]] = {}
        if n == 1 and router is None:
            if tuples:
                groups[0] = tuples
        else:
            for t in tuples:
                try:
                    rk = router.route_key(t[1], t[2]) if router is not None else t[1]
                except Exception as exc:   # the next stage's key_fn raised: that stage's dead letter
                    dead.append((t[0], self.router_stage, t[1], t[2], error_line(exc)))
                    continue
                try:
                    p = partition_of(rk, n)
                except Exception as exc:
                    dead.append((t[0], self.last_logical, t[1], t[2], "output cannot be routed: " + error_line(exc)))
                    continue
                g = groups.get(p)
                if g is None:
                    groups[p] = [t]
                else:
                    g.append(t)
        for p, ts in groups.items():
            try:
                payload = encode_batch(ts)
            except Exception:
                ts, bad = split_encodable(ts)
                for (tid, k, v), why in bad:
                    dead.append((tid, self.last_logical, k, v, why))
                if not ts:
                    continue
                payload = encode_batch(ts)
            res.outputs[p] = payload
            res.counts[p] = len(ts)

"""The client side: request ids, retries with the same (client id, seq), read-your-own-appends.

A client keeps, per file, the highest index of its own acknowledged appends; a read whose commit
index is below it came from a stale copy or a deposed primary, and is redone at the primary.
Retries reuse the append's (client id, seq), so the primary's idempotency table (derived from the
log) answers a retry of an append that already landed with its original index.

``client_id`` must be unique per client *incarnation* (or ``seq_start`` must continue past the last
seq it used): two incarnations reusing (id, seq) would be taken for retries of each other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from hydfs.messages import BUSY, NOT_PRIMARY, OUT_OF_ORDER, Msg, parse
from hydfs.ring import Ring


@dataclass
class Result:
    ok: bool
    err: str | None = None
    index: int | None = None
    entries: list[tuple[int, bytes]] = field(default_factory=list)
    reply: dict[str, Any] = field(default_factory=dict)

    @property
    def data(self) -> bytes:
        return b"".join(d for _, d in self.entries)


Sink = Callable[[list[tuple[int, bytes]], bool], None]  # (page, start over): a get's pages as they come


@dataclass
class _Op:
    op_id: int
    kind: str
    name: str
    msg: Msg
    dest: str | None = None
    sent: float = -math.inf
    replica: str | None = None
    entries: list[tuple[int, bytes]] = field(default_factory=list)
    attempts: int = 0
    sink: Sink | None = None
    asked_again: bool = False  # the next send answers a transient refusal (out_of_order), not a silence
    refused: str | None = None  # the last transient refusal (busy, out_of_order)


class ClientCore:
    def __init__(self, client_id: str, *, replicas: int = 3, retry: float = 1.0, seq_start: int = 0,
                 page: int = 1000) -> None:
        self.client_id = client_id
        self.replicas = replicas
        self.retry = retry
        self.page = page
        self.seq = seq_start
        self.ring = Ring()
        self.own_max: dict[str, int] = {}   # highest index of our own acknowledged appends
        self.results: dict[int, Result] = {}
        self.stats: dict[str, int] = {"retries": 0, "redirects": 0, "stale_reads": 0, "malformed": 0,
                                      "out_of_order": 0, "trimmed_reads": 0}
        self._ops: dict[int, _Op] = {}       # by rid of its current request
        self._next_rid = 1
        self._next_op = 1
        self._out: list[tuple[str, Msg]] = []
        self.now = 0.0

    # ----------------------------------------------------------------- operations (return an op id)

    def create(self, name: str, data: bytes, now: float) -> int:
        self.seq += 1
        return self._start("c_create", name, {"client": self.client_id, "seq": self.seq, "data": data}, now)

    def append(self, name: str, data: bytes, now: float, cond: dict[str, Any] | None = None,
               key: tuple[str, int] | None = None) -> int:
        """``key`` = (client id, seq) chosen by the caller: a writer that restarts can repeat an append
        under the key it used before (the stream layer keys sink appends by (task, log index))."""
        if key is None:
            self.seq += 1
            key = (self.client_id, self.seq)
        return self._start("c_append", name, {"client": key[0], "seq": key[1], "data": data, "cond": cond}, now)

    def trim(self, name: str, below: int, now: float, cond: dict[str, Any] | None = None,
             key: tuple[str, int] | None = None) -> int:
        """Drop every entry of ``name`` below index ``below`` on every replica: a trim marker (an entry of
        empty data) ordered, fenced and keyed exactly like an append; ``reply["first"]`` is the file's
        first index once it is acknowledged, ``index`` the marker's."""
        if key is None:
            self.seq += 1
            key = (self.client_id, self.seq)
        return self._start("c_trim", name, {"client": key[0], "seq": key[1], "below": below, "cond": cond}, now)

    def get(self, name: str, now: float, replica: str | None = None, sink: Sink | None = None) -> int:
        """With ``sink``, each page goes to ``sink(page, False)`` as it arrives instead of into the result
        (a large file never has to be in memory); ``sink([], True)`` means: drop what you got, it
        starts over (the copy was staler than our own appends)."""
        return self._start("c_get", name, {"start": 1, "limit": self.page, "replica_ok": replica is not None},
                           now, replica=replica, sink=sink)

    def read(self, name: str, offset: int, length: int, now: float, replica: str | None = None) -> int:
        """Committed bytes [offset, offset + length) (fewer at the end, at most a reply's cap) and the
        committed size: ``reply["data"]``, ``reply["size"]``. Redone at the primary if staler than our
        own acknowledged appends, like :meth:`get`."""
        return self._start("c_read", name, {"off": offset, "len": length, "replica_ok": replica is not None},
                           now, replica=replica)

    def merge(self, name: str, now: float) -> int:
        return self._start("c_merge", name, {}, now)

    def rm(self, name: str, now: float) -> int:
        return self._start("c_rm", name, {}, now)

    def ls(self, name: str, now: float) -> int:
        return self._start("c_ls", name, {}, now)

    def pending(self) -> int:
        return len(self._ops)

    def cancel(self, op_id: int) -> str | None:
        """Stop retrying an operation the caller gave up on (its last request may still land); returns
        the transient refusal it last got (``out_of_order``: what it was waiting for never landed)."""
        for rid, op in list(self._ops.items()):
            if op.op_id == op_id:
                del self._ops[rid]
                return op.refused
        return None

    # ----------------------------------------------------------------- the I/O edge's interface

    def on_membership(self, alive: Iterable[str], now: float) -> None:
        self.ring = Ring(alive)

    def take_outgoing(self) -> list[tuple[str, dict[str, Any]]]:
        out, self._out = self._out, []
        return out

    def take_results(self) -> dict[int, Result]:
        out, self.results = self.results, {}
        return out

    def tick(self, now: float) -> None:
        self.now = now
        for op in list(self._ops.values()):
            if now - op.sent >= self.retry:
                if not op.asked_again:
                    self.stats["retries"] += 1
                    op.replica = None  # a silent replica: fall back to the primary
                self._send(op, None, now)

    def receive(self, src: str, msg: object, now: float) -> None:
        self.now = now
        m = parse(msg)
        if m is None or m["t"] != "reply":
            self.stats["malformed"] += 1
            return
        op = self._ops.get(m["rid"])
        if op is None:
            return  # an answer to a request we already finished
        if not m["ok"]:
            err = m["err"]
            op.refused = err
            if err == OUT_OF_ORDER:
                # Our append the ``after`` condition names is not ordered yet; it is normally in flight
                # just ahead of this one, so ask again soon (a tenth of a retry period), not as a failure.
                self.stats["out_of_order"] += 1
                op.sent, op.asked_again = now - self.retry * 0.9, True
                return
            if err in (NOT_PRIMARY, BUSY):
                self.stats["redirects"] += 1
                hint = m.get("primary")
                if err == NOT_PRIMARY and hint and hint != op.dest:
                    self._send(op, hint, now)
                else:
                    op.sent = now - self.retry / 2  # try again in half a retry period
                return
            self._finish(op, Result(False, err, reply=m))
            return
        if op.kind == "c_get":
            self._page(op, src, m, now)
            return
        if op.kind == "c_read":
            self._range(op, m, now)
            return
        index = m.get("index")
        if op.kind in ("c_append", "c_create", "c_trim") and index is not None:
            self.own_max[op.name] = max(self.own_max.get(op.name, 0), index)
        self._finish(op, Result(True, index=index, reply=m))

    # ----------------------------------------------------------------- internals

    def _start(self, kind: str, name: str, fields: dict[str, Any], now: float, replica: str | None = None,
               sink: Sink | None = None) -> int:
        op_id = self._next_op
        self._next_op += 1
        op = _Op(op_id, kind, name, {"t": kind, "f": name, **fields}, replica=replica, sink=sink)
        self._send(op, None, now, new_rid=True)
        return op_id

    def _send(self, op: _Op, dest: str | None, now: float, new_rid: bool = False) -> None:
        if new_rid or "rid" not in op.msg:
            self._ops.pop(op.msg.get("rid", -1), None)
            op.msg["rid"] = self._next_rid
            self._next_rid += 1
            self._ops[op.msg["rid"]] = op
        if dest is None:
            dest = op.replica or self.ring.primary(op.name)
        if op.kind in ("c_get", "c_read"):
            op.msg["replica_ok"] = op.replica is not None and dest == op.replica
        op.dest, op.sent, op.asked_again = dest, now, False
        op.attempts += 1
        if dest is not None:
            self._out.append((dest, dict(op.msg)))

    def _page(self, op: _Op, src: str, m: Msg, now: float) -> None:
        items: list[tuple[int, bytes]] = m.get("entries", [])
        commit: int = m.get("commit", 0)
        start = op.msg["start"]
        base = items[0][0] if items else start
        if base > start and start > 1:
            # A trim dropped entries this read had not reached: what it got so far and what follows
            # are no longer one file. Start over from the file's (new) first entry.
            self.stats["trimmed_reads"] += 1
            op.entries = []
            if op.sink is not None:
                op.sink([], True)
            op.msg["start"] = 1
            self._send(op, src, now, new_rid=True)
            return
        if base < start or any(i != base + k for k, (i, _) in enumerate(items)) or commit < start - 1:
            self.stats["malformed"] += 1
            return
        if commit < self.own_max.get(op.name, 0):
            # Older than our own acknowledged append: a stale copy. Start over at the primary.
            self.stats["stale_reads"] += 1
            op.entries, op.replica = [], None
            if op.sink is not None:
                op.sink([], True)
            op.msg["start"] = 1
            op.sent = now - self.retry / 2
            return
        if op.sink is not None:
            op.sink(items, False)
        else:
            op.entries.extend(items)
        if items and items[-1][0] < commit:
            op.msg["start"] = items[-1][0] + 1
            self._send(op, src, now, new_rid=True)
            return
        self._finish(op, Result(True, entries=op.entries, index=commit, reply=m))

    def _range(self, op: _Op, m: Msg, now: float) -> None:
        data, size, commit = m.get("data"), m.get("size"), m.get("commit")
        off, length = op.msg["off"], op.msg["len"]
        if data is None or size is None or commit is None or len(data) > length or (
                len(data) != 0 and off + len(data) > size):
            self.stats["malformed"] += 1
            return
        if commit < self.own_max.get(op.name, 0):
            # Older than our own acknowledged append: a stale copy. Ask the primary.
            self.stats["stale_reads"] += 1
            op.replica = None
            op.sent = now - self.retry / 2
            return
        self._finish(op, Result(True, index=commit, reply=m))

    def _finish(self, op: _Op, result: Result) -> None:
        self._ops.pop(op.msg["rid"], None)
        self.results[op.op_id] = result

"""Channels between tasks: the wire messages, and each end's bookkeeping.

A channel is (producer task -> consumer task) of adjacent physical stages. Its batches carry
contiguous sequence numbers assigned at commit and written in the producer's log, so
``(channel, seq) -> payload`` is a function of that log: whichever instance sends seq n (the first
one, a replacement replaying its log, or a zombie that committed it before it was fenced) sends the
same bytes. That is what makes re-sending safe.

Receiver: accepts only ``accepted + 1`` into its inbox (the InboxStore does that atomically), commits
marks in its own log, and answers every delivery, duplicates included, with
``(its epoch, accepted, committed)``.

Producer: keeps the outbox = committed batches above the receiver's *committed* mark (never the
accepted one: accepted-but-uncommitted entries die with the receiver's node), sends a window past
the committed mark, goes back to ``accepted + 1`` when progress stalls, and asks a receiver it has not
heard from (a fresh instance on either side) for its marks with a Query.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rainstorm.stream.plan import TaskRef
from rainstorm.stream.records import MAX_INT

DELIVER, ANSWER, QUERY = "d", "a", "q"


@dataclass(frozen=True, slots=True)
class Deliver:
    """A committed batch, from producer ``src`` (at its ``epoch``) to consumer ``dst``."""

    src: TaskRef
    dst: TaskRef
    epoch: int
    seq: int
    payload: bytes
    end: bool

    def to_wire(self) -> list[Any]:
        return [DELIVER, *self.src, *self.dst, self.epoch, self.seq, self.payload, self.end]


@dataclass(frozen=True, slots=True)
class Answer:
    """Receiver ``src``'s marks for the channel from ``dst``, at the receiver's ``epoch``."""

    src: TaskRef
    dst: TaskRef
    epoch: int
    accepted: int
    committed: int

    def to_wire(self) -> list[Any]:
        return [ANSWER, *self.src, *self.dst, self.epoch, self.accepted, self.committed]


@dataclass(frozen=True, slots=True)
class Query:
    """Producer ``src`` asks receiver ``dst`` for its marks (answered with an Answer once it is ready)."""

    src: TaskRef
    dst: TaskRef
    epoch: int

    def to_wire(self) -> list[Any]:
        return [QUERY, *self.src, *self.dst, self.epoch]


Message = Deliver | Answer | Query


def _nat(v: Any) -> bool:
    return type(v) is int and 0 <= v <= MAX_INT


def parse_message(v: object) -> Message | None:
    """A message from another node, or None if it is not exactly one of ours (count and drop it)."""
    if type(v) is not list or not v:
        return None
    kind = v[0]
    n = {DELIVER: 9, ANSWER: 8, QUERY: 6}.get(kind) if type(kind) is str else None
    if n is None or len(v) != n or not all(_nat(x) for x in v[1:6]):
        return None
    src, dst, epoch = (v[1], v[2]), (v[3], v[4]), v[5]
    if kind == QUERY:
        return Query(src, dst, epoch)
    if kind == ANSWER:
        return Answer(src, dst, epoch, v[6], v[7]) if _nat(v[6]) and _nat(v[7]) else None
    if not _nat(v[6]) or v[6] < 1 or type(v[7]) is not bytes or type(v[8]) is not bool:
        return None
    return Deliver(src, dst, epoch, v[6], v[7], v[8])


class OutChannel:
    """The producer's end: outbox (seq -> committed batch, above the receiver's committed mark) and what
    it knows of the receiver. All marks are sequence numbers of batches."""

    __slots__ = ("accepted", "asked_at", "batches", "committed", "ended", "last", "part", "peer_epoch",
                 "progress_at", "sent")

    def __init__(self, part: int) -> None:
        self.part = part
        self.last = 0                      # highest seq committed in our log
        self.ended = False                 # the end batch is committed
        self.batches: dict[int, tuple[bytes, bool]] = {}
        self.peer_epoch = -1               # highest receiver epoch heard; -1: not heard (Query it)
        self.accepted = 0                  # receiver's accepted mark, as last answered
        self.committed = 0                 # receiver's committed mark (monotonic: it is in its log)
        self.sent = 0                      # highest seq sent in this round
        self.progress_at = -math.inf
        self.asked_at = -math.inf

    def add(self, seq: int, payload: bytes, end: bool) -> None:
        """A batch committed in our log (live or replayed)."""
        if seq != self.last + 1:
            raise ValueError(f"channel to {self.part}: seq {seq} after {self.last}")
        self.last = seq
        self.ended = self.ended or end
        if seq > self.committed:
            self.batches[seq] = (payload, end)

    def trim(self, committed: int) -> None:
        """The receiver committed everything up to ``committed``: drop it from the outbox."""
        committed = min(committed, self.last)
        if committed <= self.committed:
            return
        for s in range(self.committed + 1, committed + 1):
            self.batches.pop(s, None)
        self.committed = committed
        if self.sent < committed:
            self.sent = committed

    def on_answer(self, epoch: int, accepted: int, committed: int, now: float) -> bool:
        """Take a receiver's answer; True if it was news (marks advanced or a new receiver instance)."""
        if epoch < self.peer_epoch:
            return False  # an older receiver instance (a zombie or a late packet): ignore it
        news = False
        if epoch > self.peer_epoch:
            self.peer_epoch = epoch
            self.sent = max(min(accepted, self.last), self.committed)  # a new instance: go on from what it holds
            news = True
        if accepted != self.accepted:
            # the latest answer is the truth (a receiver whose Redis rolled back reports less); what we
            # *keep* depends only on the committed mark, so believing a lower value only costs resends
            news = news or accepted > self.accepted
            self.accepted = accepted
            if accepted > self.sent:
                self.sent = min(accepted, self.last)
        if committed > self.committed:
            self.trim(committed)
            news = True
        if news:
            self.progress_at = now
        return news

    def pending(self) -> bool:
        """Committed batches the receiver has not committed yet."""
        return self.committed < self.last

    def take_window(self, window: int) -> list[tuple[int, bytes, bool]]:
        """Batches to send now: after ``sent``, at most ``window`` past the receiver's committed mark."""
        if self.peer_epoch < 0:
            return []
        hi = min(self.last, self.committed + window)
        lo = max(self.sent, self.committed) + 1
        if lo > hi:
            return []
        out = [(s, *self.batches[s]) for s in range(lo, hi + 1)]
        self.sent = hi
        return out

    def stalled(self, now: float, after: float) -> bool:
        """No progress for ``after`` seconds with work outstanding: go back to ``accepted + 1``."""
        if not self.pending() or now - self.progress_at < after:
            return False
        self.sent = max(min(self.accepted, self.last), self.committed)
        self.progress_at = now
        return True

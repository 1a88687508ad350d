"""What a leader knows of one follower's log, and how fast it may send to it (flow control).

* PROBE: we do not know where the follower's log matches ours: one append per heartbeat (or per answer),
  walking ``next`` back on rejections.
* REPLICATE: it matched at ``match``: appends are pipelined with an optimistic ``next``, at most
  ``max_inflight`` of them unacknowledged.
* SNAPSHOT: it needs entries we compacted: one InstallSnapshot in flight, then back to replicating.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum


class Flow(StrEnum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


@dataclass
class Progress:
    next: int
    match: int = 0
    state: Flow = Flow.PROBE
    paused: bool = False      # PROBE: an append is out; the next goes with the next heartbeat or answer
    inflight: deque[int] = field(default_factory=deque)  # REPLICATE: last index of each append in flight
    pending_snapshot: int = 0  # SNAPSHOT: the index of the snapshot sent
    snapshot_sent: float = 0.0

    def probe(self) -> None:
        self.state, self.paused, self.next = Flow.PROBE, False, self.match + 1
        self.inflight.clear()

    def replicate(self) -> None:
        self.state, self.paused, self.next = Flow.REPLICATE, False, self.match + 1
        self.inflight.clear()

    def sending_snapshot(self, index: int, now: float) -> None:
        self.state, self.pending_snapshot, self.snapshot_sent = Flow.SNAPSHOT, index, now
        self.inflight.clear()

    def acked(self, index: int) -> bool:
        """A success answer up to ``index``; True if ``match`` moved."""
        moved = index > self.match
        self.match = max(self.match, index)
        self.next = max(self.next, index + 1)
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        return moved

    def full(self, max_inflight: int) -> bool:
        return self.paused if self.state is Flow.PROBE else (
            self.state is Flow.SNAPSHOT or len(self.inflight) >= max_inflight)

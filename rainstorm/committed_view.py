"""The membership HyDFS acts on: the controller's committed view, not this node's gossip view.

Gossip detects; the controller decides (docs/control.md). A HyDFS node that took its own gossip view
for the truth could, cut off from the others, see them all failed, take a file over alone and
acknowledge appends that a later takeover on the majority's side truncates (docs/partitions.md).
Fed instead with the live set the controller committed (a ``members`` entry, one per membership
change, covering every file), a node learns "X failed" only from a quorum's decision, and a node
that cannot reach the quorum keeps its last committed view: in it the others are alive, so it can
neither take their files over nor drop them from an in-sync set, and as a primary it cannot
acknowledge an append they do not hold.

This is a :class:`gossip.types.MembershipView` like the gossip node itself, so HyDFS does not know
where its view comes from. Gossip's ``self_failed`` event (others declared *us* failed) is passed on
as it happens: stepping down on it only ever makes a node more careful.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from gossip.transport import GossipNode
from gossip.types import MemberEvent, MemberInfo, State

log = logging.getLogger(__name__)
Subscriber = Callable[[MemberEvent], None]


class CommittedView:
    def __init__(self, gossip: GossipNode) -> None:
        self.gossip = gossip
        self.ids: tuple[str, ...] = ()          # the committed live set (empty until first learned)
        self.version = -1                       # the controller table version it was learned from
        self.failed_seen = -1                   # the last entry that declared this node failed, as known
        self.addrs: dict[str, str] = {}         # last known address of every node ever seen
        self._subs: list[Subscriber] = []
        gossip.subscribe(self._on_gossip)

    # -- MembershipView ----------------------------------------------------------------------------
    def alive(self) -> list[MemberInfo]:
        for m in self.gossip.members():         # addresses come from gossip, whatever its verdict
            self.addrs[m.node_id] = m.addr
        return [MemberInfo(n, self.addrs[n], State.ALIVE, 0, 0.0) for n in self.ids if n in self.addrs]

    def subscribe(self, callback: object) -> None:
        assert callable(callback)
        self._subs.append(callback)

    # -- fed by the controller's table -------------------------------------------------------------
    def learn(self, table: dict[str, Any]) -> None:
        """A table the controller committed: its live set, and when each node was last declared failed.
        Tables come as snapshots, so a node cut off while it was declared failed and re-admitted may
        never see a set without itself; ``failed_at`` tells it anyway, and it forgets what it vouched
        for (a ``self_failed`` event, as when gossip tells it) before it acts on the new set."""
        version = int(table["version"])
        if version <= self.version:
            return
        self.version = version
        failed = int(table.get("failed_at", {}).get(self.gossip.node_id, -1))
        if failed > self.failed_seen:
            first, self.failed_seen = self.failed_seen < 0 and not self.ids, failed
            if not first:   # a node that just started vouches for nothing yet
                self._emit(MemberEvent("self_failed", self.gossip.node_id, "", 0, 0.0))
        ids = tuple(sorted(table.get("alive", [])))
        if ids == self.ids:
            return
        self.ids = ids
        log.info("committed view", extra={"alive": ",".join(ids), "version": version})
        self._emit(MemberEvent("view", "", "", 0, 0.0))

    def _on_gossip(self, ev: MemberEvent) -> None:
        if ev.kind == "self_failed":
            self._emit(ev)

    def _emit(self, ev: MemberEvent) -> None:
        for sub in self._subs:
            try:
                sub(ev)
            except Exception:
                log.exception("view subscriber failed")

"""The asyncio edge of membership: one UDP socket driving a :class:`gossip.swim.Swim` core.

All protocol decisions live in the core; this file only moves authenticated frames and calls
``tick`` when the core's next deadline comes, so the real node runs exactly the simulated protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from gossip.config import GossipConfig
from gossip.rpc import split_addr
from gossip.swim import Swim
from gossip.types import MemberEvent, MemberInfo, State
from gossip.wire import FrameError, FrameStats, decode, encode

log = logging.getLogger(__name__)
Subscriber = Callable[[MemberEvent], None]


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: GossipNode) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.owner._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable etc.: the protocol copes
        self.owner.frame_stats["udp_error"] += 1


class GossipNode:
    """Membership of one node; implements :class:`gossip.types.MembershipView`."""

    def __init__(self, node_id: str, addr: str, key: bytes, config: GossipConfig | None = None,
                 incarnation: int = 0, seed: int | None = None) -> None:
        self.node_id = node_id
        self.addr = addr
        self.key = key
        self.config = config or GossipConfig()
        self.frame_stats = FrameStats()
        self.swim = Swim(node_id, addr, self.config, random.Random(seed), self.clock(), incarnation)
        self._subs: list[Subscriber] = []
        self._transport: asyncio.DatagramTransport | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sleep_until = 0.0

    @staticmethod
    def clock() -> float:
        return time.monotonic()

    # -- MembershipView -------------------------------------------------------------------------
    def alive(self) -> list[MemberInfo]:
        return self.swim.alive()

    def members(self) -> list[MemberInfo]:
        return self.swim.members(self.clock())

    def subscribe(self, callback: object) -> None:
        assert callable(callback)
        self._subs.append(callback)

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self, join: list[str]) -> None:
        host, port = split_addr(self.addr)
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(self), local_addr=(host, port))
        self.swim.join(join, self.clock())
        self._task = asyncio.create_task(self._run())

    async def leave(self, linger: float = 0.5) -> None:
        """Tell others we leave, and keep answering a moment so the news spreads."""
        self.swim.leave(self.clock())
        self._wake.set()
        await asyncio.sleep(linger)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._transport is not None:
            self._transport.close()

    # -- I/O --------------------------------------------------------------------------------------
    def _on_datagram(self, data: bytes, addr: tuple[Any, int]) -> None:
        try:
            msg = decode(self.key, data)
        except FrameError as exc:
            self.frame_stats[exc.reason] += 1
            return
        self.swim.receive(f"{addr[0]}:{addr[1]}", msg, self.clock())
        self._flush()
        if self.swim.next_deadline() < self._sleep_until:
            self._wake.set()  # the message scheduled something sooner than our timer

    def _flush(self) -> None:
        if self._transport is None:
            return
        for dest, msg in self.swim.take_outgoing():
            try:
                self._transport.sendto(encode(self.key, msg), split_addr(dest))
            except (OSError, ValueError):
                self.frame_stats["send_error"] += 1
        for ev in self.swim.take_events():
            log.info("member %s", ev.kind, extra={"peer": ev.node_id, "incarnation": ev.incarnation})
            for sub in self._subs:
                try:
                    sub(ev)
                except Exception:
                    log.exception("membership subscriber failed")

    async def _run(self) -> None:
        while True:
            now = self.clock()
            self.swim.tick(now)
            self._flush()
            delay = max(0.0, min(self.swim.next_deadline() - self.clock(), self.config.period))
            self._sleep_until = self.clock() + delay
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)


def view_rows(members: list[MemberInfo], now: float) -> list[dict[str, Any]]:
    """The stable ``--json`` shape of a membership view."""
    order = {State.ALIVE: 0, State.SUSPECT: 1, State.FAILED: 2, State.LEFT: 3}
    return [
        {"id": m.node_id, "address": m.addr, "state": m.state.value, "incarnation": m.incarnation,
         "seconds": round(max(0.0, now - m.since), 1)}
        for m in sorted(members, key=lambda m: (order[m.state], m.node_id))
    ]

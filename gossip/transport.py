"""The asyncio edge of membership: one UDP socket driving a :class:`gossip.swim.Swim` core, on a thread
of its own.

All protocol decisions live in the core; this file only moves authenticated frames and calls
``tick`` when the core's next deadline comes, so the real node runs exactly the simulated protocol.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from gossip.config import GossipConfig
from gossip.swim import Swim
from gossip.types import MemberEvent, MemberInfo, State
from net.rpc import split_addr
from net.wire import FrameError, FrameStats, decode, encode

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
    """Membership of one node; implements :class:`gossip.types.MembershipView`.

    The UDP endpoint and the core's timers run on a thread of their own with its own event loop, so a
    probe is answered within milliseconds however busy the node's main loop is (a page of a source
    being filtered, a large frame being checked): how fast a member answers must depend on whether it
    is alive, not on its workload, or a loaded node is falsely suspected. The core is only touched
    under ``_lock``; the node's loop reads views through :meth:`alive` / :meth:`members`, and
    subscribers are called on the loop that called :meth:`start`.
    """

    def __init__(self, node_id: str, addr: str, key: bytes, config: GossipConfig | None = None,
                 incarnation: int = 0, seed: int | None = None) -> None:
        self.node_id = node_id
        self.addr = addr
        self.key = key
        self.config = config or GossipConfig()
        self.frame_stats = FrameStats()
        self.swim = Swim(node_id, addr, self.config, random.Random(seed), self.clock(), incarnation)
        self._lock = threading.Lock()
        self._subs: list[Subscriber] = []
        self._transport: asyncio.DatagramTransport | None = None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None    # the gossip thread's
        self._main: asyncio.AbstractEventLoop | None = None    # the node's: subscribers run there
        self._serving: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._sleep_until = 0.0

    @staticmethod
    def clock() -> float:
        return time.monotonic()

    # -- MembershipView -------------------------------------------------------------------------
    def alive(self) -> list[MemberInfo]:
        with self._lock:
            return self.swim.alive()

    def members(self) -> list[MemberInfo]:
        with self._lock:
            return self.swim.members(self.clock())

    def probe_delays(self) -> dict[str, float]:
        with self._lock:
            return self.swim.probe_delays()

    def reset_probe_delays(self) -> None:
        with self._lock:
            self.swim.probe_rtts.clear()

    def subscribe(self, callback: object) -> None:
        assert callable(callback)
        self._subs.append(callback)

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self, join: list[str]) -> None:
        """Bind the UDP endpoint on the gossip thread and start joining; a bind error is raised here."""
        self._main = asyncio.get_running_loop()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._thread_main, args=(join, ready), daemon=True,
                                        name=f"gossip-{self.node_id}")
        self._thread.start()
        await asyncio.wrap_future(ready)

    async def leave(self, linger: float = 0.5) -> None:
        """Tell others we leave, and keep answering a moment so the news spreads."""
        with self._lock:
            self.swim.leave(self.clock())
        self._kick()
        await asyncio.sleep(linger)

    async def close(self) -> None:
        loop, task = self._loop, self._serving
        if loop is not None and task is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):   # the loop ended meanwhile
                loop.call_soon_threadsafe(task.cancel)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)

    # -- the gossip thread ------------------------------------------------------------------------
    def _thread_main(self, join: list[str], ready: concurrent.futures.Future[None]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._serving = loop.create_task(self._serve(join, ready))
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(self._serving)
            loop.run_until_complete(asyncio.sleep(0))   # let the closed socket's callbacks run
        finally:
            loop.close()

    async def _serve(self, join: list[str], ready: concurrent.futures.Future[None]) -> None:
        try:
            host, port = split_addr(self.addr)
            self._wake = asyncio.Event()
            self._transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(host, port))
            with self._lock:
                self.swim.join(join, self.clock())
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        try:
            await self._run()
        finally:
            self._transport.close()

    def _kick(self) -> None:
        """Wake the gossip thread's timer loop (from any thread)."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake.set)

    def _on_datagram(self, data: bytes, addr: tuple[Any, int]) -> None:
        try:
            msg = decode(self.key, data)
        except FrameError as exc:
            self.frame_stats[exc.reason] += 1
            return
        with self._lock:
            self.swim.receive(f"{addr[0]}:{addr[1]}", msg, self.clock())
            sooner = self.swim.next_deadline() < self._sleep_until
        self._flush()
        if sooner and self._wake is not None:
            self._wake.set()  # the message scheduled something sooner than our timer

    def _flush(self) -> None:
        with self._lock:
            out = self.swim.take_outgoing()
            events = self.swim.take_events()
        if self._transport is not None:
            for dest, msg in out:
                try:
                    self._transport.sendto(encode(self.key, msg), split_addr(dest))
                except (OSError, ValueError):
                    self.frame_stats["send_error"] += 1
        for ev in events:
            log.info("member %s", ev.kind, extra={"peer": ev.node_id, "incarnation": ev.incarnation})
            if self._main is not None and not self._main.is_closed():
                with contextlib.suppress(RuntimeError):
                    self._main.call_soon_threadsafe(self._notify, ev)

    def _notify(self, ev: MemberEvent) -> None:
        """On the node's loop: the subscribers hear of an event in the order it happened."""
        for sub in self._subs:
            try:
                sub(ev)
            except Exception:
                log.exception("membership subscriber failed")

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            with self._lock:
                self.swim.tick(self.clock())
            self._flush()
            with self._lock:
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

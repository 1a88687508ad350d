"""The asyncio edge of Raft: one task drives a :class:`raft.core.RaftCore` over RPC and a :class:`DiskStorage`.

All protocol decisions live in the core. Only the loop task touches it (the RPC handler and
:meth:`RaftNode.propose` queue their input and wake the loop), and the loop never steps it between
``ready()`` and ``advance()``. Each turn: step the queued messages, propose the queued proposals,
tick, then for every Ready: persist (fsync) -> send -> apply -> advance.

Messages to one peer go as one ``raft.msgs`` call carrying a list of wire messages, one call in flight
per peer (what queues meanwhile goes together in the next); a call that fails drops its messages --
Raft retransmits. Nothing the network sends can raise out of the handler: malformed messages are
counted and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from net.rpc import RpcClient, RpcError, RpcServer, Unreachable
from raft.config import RaftConfig
from raft.core import LEADER, NotLeader, RaftCore, Ready, Role
from raft.messages import Entry, MalformedMessage, Message, from_wire
from raft.storage import DiskStorage

log = logging.getLogger(__name__)
METHOD = "raft.msgs"
MAX_QUEUED = 4096  # messages waiting for one peer; older ones are dropped beyond this (Raft resends)
CLOSE_WAIT = 5.0   # seconds close() waits for a save in progress


class StateMachine(Protocol):
    def apply(self, entry: Entry) -> Any: ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None: ...


class ProposalLost(Exception):
    """Leadership was lost before the proposal committed here. It may still commit: make entries idempotent."""


RoleCallback = Callable[[Role, int, str | None], None]


class RaftNode:
    def __init__(self, node_id: str, voters: Sequence[str], addr_of: Callable[[str], str | None], rpc: RpcServer,
                 client: RpcClient, storage: DiskStorage, state: StateMachine, config: RaftConfig) -> None:
        self.node_id = node_id
        self.voters = list(voters)
        self.addr_of = addr_of
        self.rpc = rpc
        self.client = client
        self.storage = storage
        self.state = state
        self.config = config
        self.counters: Counter[str] = Counter(dict.fromkeys(
            ["proposals", "committed", "terms", "snapshots", "sent", "dropped", "received", "malformed"], 0))
        self._core: RaftCore | None = None
        self._inbox: list[Message] = []
        self._proposals: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._waiting: dict[int, tuple[int, asyncio.Future[Any]]] = {}  # index -> (term, future)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._outbox: dict[str, list[Any]] = {}
        self._senders: dict[str, asyncio.Task[None]] = {}
        self._subscribers: list[RoleCallback] = []
        self._seen: tuple[Role, int, str | None] = (Role.FOLLOWER, 0, None)
        self._snap_index = 0
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        restored = await asyncio.to_thread(self.storage.load)
        if restored.snapshot is not None:
            self.state.restore(restored.snapshot.data)
            self._snap_index = restored.snapshot.index
        loop = asyncio.get_running_loop()
        self._core = RaftCore(self.node_id, self.voters, self.config, random.Random(), time.monotonic(), restored)
        self._seen = (self._core.role, self._core.term, self._core.leader_id)
        self.rpc.register(METHOD, self._on_msgs)
        self._task = loop.create_task(self._run(), name=f"raft:{self.node_id}")

    async def close(self) -> None:
        """Stop after the save in progress (its thread cannot be cancelled: closing the log under it could
        let its write land in whatever file reuses the descriptor)."""
        self._closed = True
        self._wake.set()
        idle = True
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), CLOSE_WAIT)
            except TimeoutError:  # a disk that hangs: leave the log open rather than risk it
                idle = False
                self._task.cancel()
            except Exception:
                pass
        for t in list(self._senders.values()):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._fail_waiting(ProposalLost("raft node closed"))
        for _, fut in self._proposals:
            if not fut.done():
                fut.set_exception(ProposalLost("raft node closed"))
        self._proposals.clear()
        self._step_down()
        if idle:
            self.storage.close()

    def subscribe(self, callback: RoleCallback) -> None:
        """``callback(role, term, leader_id)`` on every change of any of them (from the loop task)."""
        self._subscribers.append(callback)

    # -- what callers read -------------------------------------------------------------------------
    @property
    def core(self) -> RaftCore:
        if self._core is None:
            raise RuntimeError("RaftNode not started")
        return self._core

    @property
    def is_leader(self) -> bool:
        """Leader with a live quorum (check-quorum lease); False once the node stopped."""
        core = self._core
        return not self._closed and core is not None and core.role is LEADER and core.lease(time.monotonic())

    @property
    def leader_id(self) -> str | None:
        return self.core.leader_id

    @property
    def term(self) -> int:
        return self.core.term

    @property
    def commit(self) -> int:
        return self.core.commit

    @property
    def applied(self) -> int:
        return self.core.applied

    def stats(self) -> dict[str, Any]:
        c = self.core
        return {"role": c.role.value, "term": c.term, "leader": c.leader_id, "commit": c.commit,
                "applied": c.applied, "last_index": c.last_index, "elections": c.stats["elections"],
                "pre_campaigns": c.stats["pre_campaigns"], "won": c.stats["won"],
                "snapshots_sent": c.stats["snapshots_sent"], "snapshots_installed": c.stats["snapshots_installed"],
                **self.counters}

    # -- inputs ------------------------------------------------------------------------------------
    async def propose(self, data: bytes, timeout: float) -> Any:
        """``state.apply``'s result for this entry once it is committed and applied here."""
        core = self.core
        if self._closed or core.role is not LEADER:
            raise NotLeader(None if self._closed else core.leader_id)
        if not data:
            raise ValueError("b'' is the leader's no-op; propose non-empty data")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._proposals.append((data, fut))
        self._wake.set()
        self.counters["proposals"] += 1
        return await asyncio.wait_for(fut, timeout)  # a timeout cancels fut: the loop checks done() first

    async def _on_msgs(self, args: dict[str, Any]) -> None:
        if self._closed:
            return
        raw = args.get("m")
        if not isinstance(raw, list):
            self.counters["malformed"] += 1
            return
        for obj in raw:
            try:
                self._inbox.append(from_wire(obj))
            except MalformedMessage:
                self.counters["malformed"] += 1
        self.counters["received"] += len(raw)
        self._wake.set()

    # -- the loop ----------------------------------------------------------------------------------
    async def _run(self) -> None:
        core = self.core
        while not self._closed:
            if not (self._inbox or self._proposals):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, core.next_deadline() - time.monotonic())):
                        await self._wake.wait()
            self._wake.clear()
            if self._closed:
                break
            try:
                await self._turn(core, time.monotonic())
            except Exception:
                # a failed save leaves a Ready neither durable nor redone: stop, as a crash would; a restart
                # reloads what is on disk. Nothing that depended on it was sent.
                log.exception("raft %s: stopped", self.node_id)
                self.counters["failed"] += 1
                self._closed = True
                self._fail_waiting(ProposalLost("raft node stopped"))
                self._step_down()

    async def _turn(self, core: RaftCore, now: float) -> None:
        inbox, self._inbox = self._inbox, []
        for msg in inbox:
            core.step(msg, now)
        proposals, self._proposals = self._proposals, []
        for data, fut in proposals:
            if fut.done():
                continue
            try:
                index = core.propose(data, now)
            except NotLeader as exc:
                fut.set_exception(exc)
                continue
            self._waiting[index] = (core.term, fut)
        core.tick(now)
        self._notify()
        while not self._closed and core.has_ready():
            rd = core.ready()
            # a save's fsync takes 0.1-0.3 ms on this VM's disk but 1-10 ms on ordinary ones: off the loop
            await asyncio.to_thread(self.storage.save, rd)
            self._send(rd.messages)
            self._apply(rd)
            core.advance(rd)
            self._notify()
        if not self._closed and core.applied - self._snap_index >= self.config.snapshot_every:
            snap = core.compact(core.applied, self.state.snapshot())
            await asyncio.to_thread(self.storage.compact, snap)
            self._snap_index = snap.index
            self.counters["snapshots"] += 1

    def _apply(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            self.state.restore(rd.snapshot.data)
            self._snap_index = rd.snapshot.index
            self.counters["snapshots_restored"] += 1
        for e in rd.committed:
            result: Any = None
            error: Exception | None = None
            if e.data:
                try:
                    result = self.state.apply(e)
                except Exception as exc:  # a deterministic state machine fails alike everywhere: report it
                    log.exception("raft %s: apply of entry %d failed", self.node_id, e.index)
                    error = exc
                self.counters["committed"] += 1
            waiter = self._waiting.pop(e.index, None)
            if waiter is None or waiter[1].done():
                continue
            term, fut = waiter
            if term != e.term:
                fut.set_exception(ProposalLost(f"entry {e.index} went to another leader's proposal"))
            elif error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(result)

    def _notify(self) -> None:
        core = self.core
        now = (core.role, core.term, core.leader_id)
        if now == self._seen:
            return
        if core.term != self._seen[1]:
            self.counters["terms"] += 1
        if self._seen[0] is LEADER and (core.role is not LEADER or core.term != self._seen[1]):
            self._fail_waiting(ProposalLost("leadership lost before the entry committed"))
        self._seen = now
        for cb in list(self._subscribers):
            try:
                cb(*now)
            except Exception:
                log.exception("raft %s: role callback failed", self.node_id)

    def _step_down(self) -> None:
        """A stopped node leads nothing: subscribers hear so once."""
        if self._seen[0] is LEADER:
            self._seen = (Role.FOLLOWER, self._seen[1], None)
            for cb in list(self._subscribers):
                try:
                    cb(*self._seen)
                except Exception:
                    log.exception("raft %s: role callback failed", self.node_id)

    def _fail_waiting(self, exc: Exception) -> None:
        waiting, self._waiting = self._waiting, {}
        for _, fut in waiting.values():
            if not fut.done():
                fut.set_exception(exc)

    # -- sending -----------------------------------------------------------------------------------
    def _send(self, msgs: list[Message]) -> None:
        for m in msgs:
            queue = self._outbox.setdefault(m.dst, [])
            queue.append(m.to_wire())
            if len(queue) > MAX_QUEUED:
                del queue[0]
                self.counters["dropped"] += 1
        for dst, queue in self._outbox.items():
            if queue and dst not in self._senders:
                task = asyncio.get_running_loop().create_task(self._sender(dst))
                self._senders[dst] = task

    async def _sender(self, dst: str) -> None:
        """Ships ``dst``'s queue, one call at a time, until it is empty."""
        try:
            while not self._closed and self._outbox.get(dst):
                batch, self._outbox[dst] = self._outbox[dst], []
                addr = self.addr_of(dst)
                if addr is None:
                    self.counters["dropped"] += len(batch)
                    continue
                try:
                    async with asyncio.timeout(self.config.rpc_timeout):  # connecting counts too
                        await self.client.call(addr, METHOD, {"m": batch}, timeout=self.config.rpc_timeout)
                    self.counters["sent"] += len(batch)
                except (Unreachable, RpcError, TimeoutError):
                    self.counters["dropped"] += len(batch)
        finally:
            self._senders.pop(dst, None)

"""The worker role: runs the task instances the leader assigns to this node.

Each instance is a sans-IO :class:`rainstorm.stream.task.Task`; this file performs its effects
(HyDFS logs and sinks through :class:`HydfsLogStore`, the inbox in the node's Redis through
:class:`RedisInboxStore`, source lines from the HyDFS source file) and carries its messages to other
tasks' nodes over RPC (``stream.msgs``). The assignment table is pulled from the leader; an
instance whose (task, epoch) is no longer assigned here is stopped (and fenced anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aredis

from gossip.rpc import RpcClient, RpcError, RpcServer, Unreachable
from gossip.transport import GossipNode
from hydfs.api import Client, HydfsError
from rainstorm.hydfs_log import HydfsLogStore
from rainstorm.redis_inbox import RedisInboxStore, keys
from rainstorm.stream.channels import parse_message
from rainstorm.stream.jobfile import JobError, load_job
from rainstorm.stream.plan import Plan, TaskRef, build_plan
from rainstorm.stream.stores import Fenced, MemorySource, NotOwner
from rainstorm.stream.task import (
    Accept,
    AppendLog,
    ApplyInbox,
    Effect,
    OpenInbox,
    Publish,
    ReadInbox,
    ReadLog,
    ReadSource,
    Send,
    Task,
    TaskConfig,
    complete,
)

log = logging.getLogger(__name__)


@dataclass
class WorkerConfig:
    poll: float = 0.25          # how often the assignment table is pulled from the leader
    tick: float = 0.05          # task timers
    inbox_max: int = 256        # stream entries (batches) an inbox holds before producers wait


class LinesSource(MemorySource):
    """A HyDFS source file as lines, fetched once per job (the SourceReader a Task reads through).

    When following, only newline-terminated lines count (the last one may still be half-appended),
    and the file is fetched again, at most every ``refresh`` seconds, when a task reads past its end.
    """

    def __init__(self, name: str, data: bytes, follow: bool = False, refresh: float = 0.5) -> None:
        super().__init__()
        self.name = name
        self.follow = follow
        self.refresh = refresh
        self.fetched = time.monotonic()
        self.set(data)

    def set(self, data: bytes) -> None:
        if self.follow and data and not data.endswith(b"\n"):
            data = data[:data.rfind(b"\n") + 1]
        self.files[self.name] = data.decode("utf-8", errors="replace").splitlines()

    def stale(self, start: int) -> bool:
        return self.follow and start > len(self.files[self.name]) and time.monotonic() - self.fetched >= self.refresh


@dataclass
class Instance:
    job: str
    ref: TaskRef
    epoch: int
    task: Task
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    runner: asyncio.Task[None] | None = None
    reported: bool = False


class Worker:
    def __init__(self, node_id: str, rpc: RpcServer, rpc_client: RpcClient, hydfs: Client,
                 redis_client: aredis.Redis, membership: GossipNode, leader_id: str,
                 config: WorkerConfig | None = None) -> None:
        self.node_id = node_id
        self.rpc_client = rpc_client
        self.hydfs = hydfs
        self.logs = HydfsLogStore(hydfs)
        self.cfg = config or WorkerConfig()
        self.inbox = RedisInboxStore(redis_client, max_len=self.cfg.inbox_max)
        self.membership = membership
        self.leader_id = leader_id
        self.instances: dict[tuple[str, TaskRef], Instance] = {}
        self.plans: dict[str, tuple[Plan, LinesSource | None, TaskConfig]] = {}
        self.table: dict[str, Any] = {"version": -1, "jobs": {}}
        self._task: asyncio.Task[None] | None = None
        rpc.register("stream.msgs", self._on_msgs)

    def addr_of(self, node_id: str) -> str | None:
        for m in self.membership.alive():
            if m.node_id == node_id:
                return m.addr
        return None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._poll_loop())

    async def close(self) -> None:
        for inst in list(self.instances.values()):
            self._stop(inst)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- the assignment table -------------------------------------------------------------------
    def _stats(self) -> dict[str, dict[str, dict[str, Any]]]:
        out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        for inst in self.instances.values():
            t = inst.task
            out[inst.job][t.name] = {
                "processed": t.stats.get("in_tuples", 0), "emitted": t.stats.get("out_tuples", 0),
                "pending": sum(len(ch.batches) for ch in t.out), "deadletters": t.stats.get("dead_letters", 0),
                "commits": t.stats.get("commits", 0), "phase": t.phase.value}
        return out

    async def _poll_loop(self) -> None:
        greeted = False
        while True:
            addr = self.addr_of(self.leader_id)
            if addr is not None and not greeted:
                # nothing runs before the leader knows this is a fresh process (see Leader._hello)
                try:
                    await self.rpc_client.call(addr, "leader.hello", {"node": self.node_id}, timeout=3.0)
                    greeted = True
                except (Unreachable, RpcError) as exc:
                    log.debug("leader not ready: %s", exc)
            if addr is not None and greeted:
                try:
                    self.table = await self.rpc_client.call(
                        addr, "leader.table", {"node": self.node_id, "stats": self._stats()}, timeout=3.0)
                    await self._reconcile()
                except (Unreachable, RpcError) as exc:
                    log.debug("leader unreachable: %s", exc)
            await asyncio.sleep(self.cfg.poll)

    async def _reconcile(self) -> None:
        want: dict[tuple[str, TaskRef], int] = {}
        for job, j in self.table["jobs"].items():
            if j["state"] != "running":
                continue
            for tname, (node, epoch) in j["assign"].items():
                # a finished instance stays until the whole job ends: its producers still need its
                # answers (committed marks) to finish themselves
                if node == self.node_id:
                    _, s, p = tname.rsplit(":", 2)
                    want[(job, (int(s), int(p)))] = int(epoch)
        for key, inst in list(self.instances.items()):
            if want.get(key) != inst.epoch:
                self._stop(inst)
                if self.table["jobs"].get(inst.job, {}).get("state") not in (None, "running"):
                    await self._forget(inst)
        for key, epoch in want.items():
            if key not in self.instances:
                await self._launch(key[0], key[1], epoch)

    async def _plan(self, job: str) -> tuple[Plan, LinesSource | None, TaskConfig]:
        if job not in self.plans:
            spec = self.table["jobs"][job]["spec"]
            text = await self.hydfs.get(spec["job_file"])
            stages = load_job(text, spec.get("args") or {}, filename=spec.get("job_name", "job.py"))
            plan = build_plan(job, spec["src"], spec["dest"], stages, spec["tasks"])
            cfg = TaskConfig(rate=spec.get("rate"), follow=bool(spec.get("follow")))
            self.plans[job] = (plan, None, cfg)
        return self.plans[job]

    async def _source(self, job: str) -> LinesSource:
        plan, src, cfg = self.plans[job]
        if src is None:
            src = LinesSource(plan.src, await self.hydfs.get(plan.src), cfg.follow)
            self.plans[job] = (plan, src, cfg)
        return src

    async def _read_source(self, job: str, start: int) -> LinesSource:
        src = await self._source(job)
        if src.stale(start):
            src.fetched = time.monotonic()
            src.set(await self.hydfs.get(self.plans[job][0].src))
        return src

    async def _launch(self, job: str, ref: TaskRef, epoch: int) -> None:
        try:
            plan, _, cfg = await self._plan(job)
            if ref[0] == 0:
                await self._source(job)
        except (HydfsError, JobError) as exc:
            log.error("cannot start task", extra={"job": job, "task": ref, "error": str(exc)})
            await self._report(job, f"{job}:{ref[0]}:{ref[1]}", epoch, "failed", str(exc))
            return
        inst = Instance(job, ref, epoch, Task(plan, ref, epoch, cfg))
        self.instances[(job, ref)] = inst
        inst.runner = asyncio.create_task(self._run(inst))
        log.info("task started", extra={"task": inst.task.name, "epoch": epoch})

    def _stop(self, inst: Instance) -> None:
        self.instances.pop((inst.job, inst.ref), None)
        if inst.runner is not None:
            inst.runner.cancel()
        log.info("task stopped", extra={"task": inst.task.name, "epoch": inst.epoch})

    async def _forget(self, inst: Instance) -> None:
        """The job is over: its task's Redis keys (inbox, marks, caches) go; the HyDFS log stays."""
        k = keys(inst.task.name)
        try:
            stale = [key async for key in self.inbox.r.scan_iter(match=k["out"] + "*")]
            await self.inbox.r.delete(*[v for n, v in k.items() if n != "out"], *stale)
        except aredis.RedisError as exc:
            log.warning("could not clean up redis keys", extra={"task": inst.task.name, "error": str(exc)})

    async def _report(self, job: str, task: str, epoch: int, status: str, error: str | None = None) -> None:
        addr = self.addr_of(self.leader_id)
        if addr is None:
            return
        with contextlib.suppress(Unreachable, RpcError):
            await self.rpc_client.call(addr, "leader.report", {"job": job, "task": task, "epoch": epoch,
                                                               "status": status, "error": error})

    # -- one instance -----------------------------------------------------------------------------
    async def _run(self, inst: Instance) -> None:
        t = inst.task
        t.start(time.monotonic())
        inflight: set[asyncio.Task[None]] = set()
        try:
            while True:
                self._dispatch(inst, t.take_effects(), inflight)
                if t.done and not inst.reported:
                    inst.reported = True
                    await self._report(inst.job, t.name, inst.epoch, "done")
                    log.info("task finished", extra={"task": t.name, "epoch": inst.epoch})
                if not t.alive:
                    lost = "inbox lost" in t.why
                    log.warning("task instance stopped", extra={"task": t.name, "why": t.why})
                    if lost:  # Redis restarted without its data: the leader starts the next epoch
                        await self._report(inst.job, t.name, inst.epoch, "lost", t.why)
                    self.instances.pop((inst.job, inst.ref), None)
                    return
                inst.wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(inst.wake.wait(), self.cfg.tick)
                t.tick(time.monotonic())
        finally:
            for f in inflight:
                f.cancel()

    def _dispatch(self, inst: Instance, effects: list[Effect], inflight: set[asyncio.Task[None]]) -> None:
        sends: dict[str, list[Any]] = defaultdict(list)
        for eff in effects:
            if isinstance(eff, Send):
                node = self._node_of(inst.job, eff.dest)
                addr = self.addr_of(node) if node else None
                if addr is not None:
                    sends[addr].append(eff.msg.to_wire())
                continue
            f = asyncio.create_task(self._perform(inst, eff))
            inflight.add(f)
            f.add_done_callback(inflight.discard)
        for addr, msgs in sends.items():
            f = asyncio.create_task(self._send(addr, inst.job, msgs))
            inflight.add(f)
            f.add_done_callback(inflight.discard)

    def _node_of(self, job: str, ref: TaskRef) -> str | None:
        a = self.table["jobs"].get(job, {}).get("assign", {}).get(f"{job}:{ref[0]}:{ref[1]}")
        return a[0] if a else None

    async def _send(self, addr: str, job: str, msgs: list[Any]) -> None:
        with contextlib.suppress(Unreachable, RpcError):  # loss is tolerated: the task re-sends
            await self.rpc_client.call(addr, "stream.msgs", {"job": job, "ms": msgs}, timeout=5.0)

    async def _perform(self, inst: Instance, eff: Effect) -> None:
        result: Any
        try:
            if isinstance(eff, AppendLog | Publish):
                result = await self.logs.append(eff.name, eff.data, fence=eff.fence, epoch=eff.epoch,
                                                client=eff.client, seq=eff.seq)
            elif isinstance(eff, ReadLog):
                result = await self.logs.entries(eff.name)
            elif isinstance(eff, OpenInbox):
                result = await self.inbox.open(eff.task, eff.epoch, eff.marks)
            elif isinstance(eff, ReadInbox):
                result = await self.inbox.read(eff.task, eff.epoch, eff.limit)
            elif isinstance(eff, Accept):
                result = await self.inbox.accept(eff.task, eff.epoch, eff.channel, eff.seq, eff.payload, eff.end,
                                                 eff.floor)
            elif isinstance(eff, ApplyInbox):
                await self.inbox.apply(eff.task, eff.epoch, eff.update)
                result = None
            elif isinstance(eff, ReadSource):
                result = (await self._read_source(inst.job, eff.start)).lines(eff.name, eff.start, eff.stride,
                                                                                eff.limit)
            else:
                return
        except (Fenced, NotOwner) as exc:
            result = exc
        except (HydfsError, OSError, aredis.RedisError) as exc:
            # a transient store failure: the instance cannot know whether it happened; let it die
            # and be replaced (same node, next epoch) rather than guess
            result = NotOwner(f"store error: {exc}")
        if self.instances.get((inst.job, inst.ref)) is inst:
            complete(inst.task, eff, result)
            inst.wake.set()

    async def _on_msgs(self, a: dict[str, Any]) -> None:
        job, msgs = a.get("job"), a.get("ms")
        if not isinstance(job, str) or not isinstance(msgs, list):
            return
        now = time.monotonic()
        for raw in msgs:
            m = parse_message(raw)
            if m is None:
                continue
            inst = self.instances.get((job, m.dst))
            if inst is not None:
                inst.task.on_message(m, now)
                inst.wake.set()

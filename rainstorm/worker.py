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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aredis

from gossip.transport import GossipNode
from hydfs.api import Client, HydfsError
from net.rpc import RpcClient, RpcError, RpcServer, Unreachable
from rainstorm.hydfs_log import HydfsLogStore
from rainstorm.redis_inbox import RedisInboxStore, keys
from rainstorm.source_reader import RangeReader
from rainstorm.stream.channels import parse_message
from rainstorm.stream.jobfile import JobError, load_job
from rainstorm.stream.plan import Plan, TaskRef, build_plan
from rainstorm.stream.stores import Fenced, NotOwner
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


_TASK = TaskConfig()   # the task defaults, which a node's [worker] settings start from


@dataclass
class WorkerConfig:
    poll: float = 1.0           # longest wait of a table long poll (task stats reach the leader this often)
    tick: float = 0.05          # task timers
    inbox_max: int = 256        # stream entries (batches) an inbox holds before producers wait
    batch_lines: int = _TASK.batch_lines    # source lines per commit at most
    batch_bytes: int = _TASK.batch_bytes    # source bytes per commit at most (also the read size)
    batch_entries: int = _TASK.batch_entries  # inbox entries per commit at most
    linger: float = _TASK.linger            # paced source: longest wait for a batch to fill
    inflight: int = _TASK.inflight          # commits in flight per task
    source_block: int = _TASK.block         # source blocks shared out among a job's source tasks
    source_page: int = 1 << 20                   # bytes per ranged read of a source file
    follow_refresh: float = 0.2                  # a following source looks for appended bytes this often

    def task_config(self, spec: dict[str, Any]) -> TaskConfig:
        """A job's task settings: this node's batching, the job's pacing and its block size (which every
        task of the job must share, so it is fixed in the job's spec at submit)."""
        return TaskConfig(batch_lines=self.batch_lines, batch_bytes=self.batch_bytes,
                          batch_entries=self.batch_entries, linger=self.linger, inflight=self.inflight,
                          rate=spec.get("rate"), follow=bool(spec.get("follow")),
                          block=int(spec.get("block") or self.source_block))


LocalRead = Callable[[str, int, int], "tuple[bytes, int] | None"]   # HydfsServer.local_range


@dataclass
class Instance:
    job: str
    ref: TaskRef
    epoch: int
    task: Task
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    runner: asyncio.Task[None] | None = None
    reported: bool = False
    reader: RangeReader | None = None
    clock: float = 0.0          # time.time() - time.monotonic() at launch: task times as wall times


class Worker:
    def __init__(self, node_id: str, rpc: RpcServer, rpc_client: RpcClient, hydfs: Client,
                 redis_client: aredis.Redis, membership: GossipNode, leader_id: str,
                 config: WorkerConfig | None = None, local_read: LocalRead | None = None) -> None:
        self.node_id = node_id
        self.local_read = local_read
        self.rpc_client = rpc_client
        self.hydfs = hydfs
        self.logs = HydfsLogStore(hydfs)
        self.cfg = config or WorkerConfig()
        self.inbox = RedisInboxStore(redis_client, max_len=self.cfg.inbox_max)
        self.membership = membership
        self.leader_id = leader_id
        self.instances: dict[tuple[str, TaskRef], Instance] = {}
        self.plans: dict[str, tuple[Plan, TaskConfig]] = {}
        self.table: dict[str, Any] = {"version": -1, "jobs": {}}
        self._loading: set[str] = set()
        self._bg: set[asyncio.Task[None]] = set()
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
            out[inst.job][inst.task.name] = self._task_stats(inst)
        return out

    @staticmethod
    def _task_stats(inst: Instance) -> dict[str, Any]:
        """One instance's counters for `rainstorm status` (task times as wall-clock seconds)."""
        t = inst.task
        first = t.first_commit_at
        return {
            "processed": t.stats.get("in_tuples", 0), "emitted": t.stats.get("out_tuples", 0),
            "pending": sum(len(ch.batches) for ch in t.out), "deadletters": t.stats.get("dead_letters", 0),
            "commits": t.stats.get("commits", 0), "phase": t.phase.value, "epoch": inst.epoch,
            "started_at": t.started_at + inst.clock,
            "first_commit_at": None if first is None else first + inst.clock,
            "latency": t.latency.to_wire()}

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
                    # a long poll: the leader answers at once when the table changes, else after ``poll``
                    self.table = await self.rpc_client.call(
                        addr, "leader.table", {"node": self.node_id, "stats": self._stats(),
                                               "since": self.table["version"], "wait": self.cfg.poll},
                        timeout=self.cfg.poll + 3.0)
                    await self._reconcile()
                    continue
                except (Unreachable, RpcError) as exc:
                    log.debug("leader unreachable: %s", exc)
            await asyncio.sleep(0.25)

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
        running = {job for job, j in self.table["jobs"].items() if j["state"] == "running"}
        for job in [j for j in self.plans if j not in running and all(i.job != j for i in self.instances.values())]:
            del self.plans[job]   # an ended job's plan (its operators, their state) is not kept
        for job in running:
            if job not in self.plans and job not in self._loading:
                # every node loads every running job's plan ahead: a task moved here after a failure
                # starts without a HyDFS read whose primary may be the node that just died
                self._loading.add(job)
                t = asyncio.create_task(self._preload(job))
                self._bg.add(t)
                t.add_done_callback(self._bg.discard)

    async def _preload(self, job: str) -> None:
        try:
            await self._plan(job)
        except (HydfsError, JobError) as exc:
            log.debug("plan not loaded ahead: %s", exc)   # _launch reports it if a task needs it
        finally:
            self._loading.discard(job)

    async def _plan(self, job: str) -> tuple[Plan, TaskConfig]:
        if job not in self.plans:
            spec = self.table["jobs"][job]["spec"]
            text = await self.hydfs.get(spec["job_file"])
            stages = load_job(text, spec.get("args") or {}, filename=spec.get("job_name", "job.py"))
            plan = build_plan(job, spec["src"], spec["dest"], stages, spec["tasks"])
            self.plans[job] = (plan, self.cfg.task_config(spec))
        return self.plans[job]

    def _reader(self, inst: Instance) -> RangeReader:
        """A source instance's own reader: its stripe of the file, in ranged reads, a page ahead."""
        if inst.reader is None:
            name, t = inst.task.plan.src, inst.task

            known = 0   # the file's size as the primary last said: local reads stay below it

            async def fetch(offset: int, length: int) -> tuple[bytes, int]:
                nonlocal known
                want = min(length, known - offset)
                if self.local_read is not None and want > 0:
                    # this node holds an in-sync copy: read it in-process, no socket, no copy
                    got = self.local_read(name, offset, want)
                    if got is not None and len(got[0]) >= want:
                        return got[0][:want], known
                data, size = await self.hydfs.read_range(name, offset, length)
                known = max(known, size)
                return data, size

            inst.reader = RangeReader(fetch, t.stripe, t.cfg.follow, self.cfg.source_page, self.cfg.follow_refresh)
        return inst.reader

    async def _launch(self, job: str, ref: TaskRef, epoch: int) -> None:
        try:
            plan, cfg = await self._plan(job)
        except (HydfsError, JobError) as exc:
            log.error("cannot start task", extra={"job": job, "task": ref, "error": str(exc)})
            await self._report(job, f"{job}:{ref[0]}:{ref[1]}", epoch, "failed", str(exc))
            return
        inst = Instance(job, ref, epoch, Task(plan, ref, epoch, cfg), clock=time.time() - time.monotonic())
        self.instances[(job, ref)] = inst
        inst.runner = asyncio.create_task(self._run(inst))
        log.info("task started", extra={"task": inst.task.name, "epoch": epoch})

    def _stop(self, inst: Instance) -> None:
        self.instances.pop((inst.job, inst.ref), None)
        if inst.runner is not None:
            inst.runner.cancel()   # its finally closes the reader
        log.info("task stopped", extra={"task": inst.task.name, "epoch": inst.epoch})

    async def _forget(self, inst: Instance) -> None:
        """The job is over: its task's Redis keys (inbox, marks, caches) go; the HyDFS log stays."""
        k = keys(inst.task.name)
        try:
            stale = [key async for key in self.inbox.r.scan_iter(match=k["out"] + "*")]
            await self.inbox.r.delete(*[v for n, v in k.items() if n != "out"], *stale)
        except aredis.RedisError as exc:
            log.warning("could not clean up redis keys", extra={"task": inst.task.name, "error": str(exc)})

    async def _report(self, job: str, task: str, epoch: int, status: str, error: str | None = None,
                      stats: dict[str, Any] | None = None) -> None:
        """Tell the leader; a finished task's final counters ride along (its node forgets them)."""
        addr = self.addr_of(self.leader_id)
        if addr is None:
            return
        with contextlib.suppress(Unreachable, RpcError):
            await self.rpc_client.call(addr, "leader.report", {"job": job, "task": task, "epoch": epoch,
                                                               "status": status, "error": error, "stats": stats})

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
                    await self._report(inst.job, t.name, inst.epoch, "done", stats=self._task_stats(inst))
                    log.info("task finished", extra={"task": t.name, "epoch": inst.epoch})
                if not t.alive:
                    lost = "inbox lost" in t.why
                    log.warning("task instance stopped", extra={"task": t.name, "why": t.why})
                    if lost:  # Redis restarted without its data: the leader starts the next epoch
                        await self._report(inst.job, t.name, inst.epoch, "lost", t.why)
                    self.instances.pop((inst.job, inst.ref), None)
                    return
                inst.wake.clear()
                wait = min(self.cfg.tick, t.wake_at - time.monotonic())
                if wait > 0:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(inst.wake.wait(), wait)
                else:
                    await asyncio.sleep(0)   # a paced batch is due: tick now, but let the loop run first
                t.tick(time.monotonic())
        finally:
            for f in inflight:
                f.cancel()
            if inst.reader is not None:
                inst.reader.close()

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
                                                client=eff.client, seq=eff.seq, after=eff.after)
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
                result = await self._reader(inst).read(eff.pos, eff.max_bytes)
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

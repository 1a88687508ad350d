"""The worker role: runs the task instances the controller assigns to this node.

Each instance is a sans-IO :class:`rainstorm.stream.task.Task`; this file performs its effects
(HyDFS logs and sinks through :class:`HydfsLogStore`, the inbox in the node's Redis through
:class:`RedisInboxStore`, source lines from the HyDFS source file) and carries its messages to other
tasks' nodes over RPC (``stream.msgs``). The assignment table is pulled from the controller (through
this node's :class:`ControlService`, which forwards to the leader); an instance whose (task, epoch)
is no longer assigned here is stopped (and fenced anyway). Every instance that ends for any reason
is reported until the controller has it, and a (task, epoch) never runs twice in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aredis
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from gossip.transport import GossipNode
from hydfs.api import Client, HydfsError
from net.rpc import RpcClient, RpcError, RpcServer, Unreachable
from rainstorm.committed_view import CommittedView
from rainstorm.control import ControlError, ControlService
from rainstorm.hydfs_log import HydfsLogStore
from rainstorm.redis_inbox import RedisInboxStore
from rainstorm.source_reader import RangeReader
from rainstorm.stream.channels import parse_message
from rainstorm.stream.jobfile import JobError, load_job
from rainstorm.stream.plan import Plan, TaskRef, build_plan
from rainstorm.stream.stores import REFUSALS, NotOwner
from rainstorm.stream.task import (
    Effect,
    Phase,
    ReadSource,
    Send,
    Task,
    TaskConfig,
    complete,
    store_call,
)
from rainstorm.worker_core import Decisions, Key, WorkerCore, task_name

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
    snapshot_every: int = _TASK.snapshot_every  # commits between a task's snapshots (0: never)
    snapshot_bytes: int = _TASK.snapshot_bytes  # ... or bytes of commit records, whichever comes first
    snapshot_age: float = _TASK.snapshot_age    # ... or seconds since the last one, while commits come
    source_block: int = _TASK.block         # source blocks shared out among a job's source tasks
    source_page: int = 1 << 20                   # bytes per ranged read of a source file
    follow_refresh: float = 0.2                  # a following source looks for appended bytes this often
    start_retry: float = 20.0                    # a start retries HyDFS errors this long, then is reported dead
    forget_wait: float = 5.0                     # an ended run's stopped instance gets this long to finish its writes

    def task_config(self, spec: dict[str, Any]) -> TaskConfig:
        """A job's task settings: this node's batching, the job's pacing and its block size (which every
        task of the job must share, so it is fixed in the job's spec at submit)."""
        return TaskConfig(batch_lines=self.batch_lines, batch_bytes=self.batch_bytes,
                          batch_entries=self.batch_entries, linger=self.linger, inflight=self.inflight,
                          snapshot_every=self.snapshot_every, snapshot_bytes=self.snapshot_bytes,
                          snapshot_age=self.snapshot_age,
                          rate=spec.get("rate"), follow=bool(spec.get("follow")),
                          block=int(spec.get("block") or self.source_block))


LocalRead = Callable[[str, int, int], "tuple[bytes, int] | None"]   # HydfsServer.local_range


@dataclass
class Instance:
    job: str                    # the run key (``name@run``)
    ref: TaskRef
    epoch: int
    task: Task
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    runner: asyncio.Task[None] | None = None
    reader: RangeReader | None = None
    clock: float = 0.0          # time.time() - time.monotonic() at launch: task times as wall times
    rebuild: float | None = None  # seconds from start (fence) to open: the rebuild (log + snapshot)


class _Source:
    """The instance's ranged reader behind the source interface that :func:`store_call` calls."""

    def __init__(self, reader: RangeReader) -> None:
        self.reader = reader

    async def read(self, _name: str, pos: int, _stripe: Any, max_bytes: int, final: bool = True) -> Any:
        return await self.reader.read(pos, max_bytes)


class Worker:
    def __init__(self, node_id: str, rpc: RpcServer, rpc_client: RpcClient, hydfs: Client,
                 redis_client: aredis.Redis, membership: GossipNode, control: ControlService,
                 config: WorkerConfig | None = None, local_read: LocalRead | None = None,
                 view: CommittedView | None = None) -> None:
        self.node_id = node_id
        self.core = WorkerCore(node_id, uuid.uuid4().hex)   # the boot id names this process (see hello)
        self.local_read = local_read
        self.rpc_client = rpc_client
        self.hydfs = hydfs
        self.logs = HydfsLogStore(hydfs)
        self.cfg = config or WorkerConfig()
        self.inbox = RedisInboxStore(redis_client, max_len=self.cfg.inbox_max)
        self.membership = membership
        self.control = control
        self.view = view       # HyDFS's membership: the live set of each table the controller sends
        self.instances: dict[Key, Instance] = {}    # (run key, task) -> its instance here
        self.plans: dict[str, tuple[Plan, TaskConfig]] = {}
        self._bg: set[asyncio.Task[Any]] = set()
        self._reporting: set[tuple[str, str, int, str]] = set()
        self._report_kick = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping: dict[Key, asyncio.Task[None]] = {}   # stopped instances' runners, until they end
        rpc.register("stream.msgs", self._on_msgs)

    @property
    def table(self) -> dict[str, Any]:
        return self.core.table

    def addr_of(self, node_id: str) -> str | None:
        for m in self.membership.alive():
            if m.node_id == node_id:
                return m.addr
        return None

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._poll_loop()), asyncio.create_task(self._report_loop())]

    async def close(self) -> None:
        for inst in list(self.instances.values()):
            self._stop(inst)
        for t in [*self._tasks, *self._bg]:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t

    def _spawn(self, coro: Any) -> None:
        t = asyncio.create_task(coro)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)

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
            "latency": t.latency.to_wire(), "rebuild_s": inst.rebuild,
            "rebuilt_records": t.stats.get("rebuilt_records", 0), "snapshots": t.stats.get("snapshots", 0),
            "fetched": inst.reader.fetched if inst.reader is not None else 0}   # source bytes read (bench/follow.py)

    async def _poll_loop(self) -> None:
        async for attempt in AsyncRetrying(retry=retry_if_exception_type(ControlError),
                                           wait=wait_exponential(multiplier=0.1, max=1.0)):
            with attempt:
                await self.control.request("hello", self.core.hello())
        self.core.on_hello_acked()
        while True:
            try:
                # a long poll: answered at once when the table changes, else after ``poll``
                table = await self.control.request(
                    "table", {"node": self.node_id, "stats": self._stats(), "since": self.table["version"],
                              "wait": self.cfg.poll, "cleaned": self.core.cleaned()})
            except ControlError as exc:
                log.info("no table from the controller: %s", exc)
                await asyncio.sleep(0.25)
                continue
            if self.view is not None:
                self.view.learn(table)
            first = self.table["version"] < 0
            await self._apply(self.core.on_table(table))
            if first:   # what an earlier process of this node left in Redis (it died, or was down)
                self._spawn(self._sweep())

    async def _apply(self, d: Decisions) -> None:
        stopped: dict[Key, asyncio.Task[None]] = {}
        for key in d.stop:
            inst = self.instances.get(key)
            if inst is not None:
                self._stop(inst)
                if inst.runner is not None:
                    stopped[key] = inst.runner
        for key in d.forget:
            self._spawn(self._forget(key, stopped.get(key), d.keep_from.get(key)))
        for run in d.purge:
            self._spawn(self._purge(run))
        for run in d.drop_plans:
            self.plans.pop(run, None)   # an ended run's plan (its operators, their state) is not kept
        for run in d.preload:
            # every node loads every running run's plan ahead: a task moved here after a failure
            # starts without a HyDFS read whose primary may be the node that just died
            self._spawn(self._preload(run))
        for x in d.launch:
            self._spawn(self._launch(x.run, x.ref, x.epoch))
        self._report_kick.set()

    async def _preload(self, run: str) -> None:
        try:
            await self._plan(run)
        except (HydfsError, JobError) as exc:
            log.debug("plan not loaded ahead: %s", exc)   # _launch retries and reports if a task needs it

    async def _plan(self, run: str) -> tuple[Plan, TaskConfig]:
        if run not in self.plans:
            spec = self.table["jobs"][run]["spec"]
            text = await self.hydfs.get(spec["job_file"])
            stages = load_job(text, spec.get("args") or {}, filename=spec.get("job_name", "job.py"))
            plan = build_plan(run, spec["src"], spec["dest"], stages, spec["tasks"])
            self.plans[run] = (plan, self.cfg.task_config(spec))
        return self.plans[run]

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

    async def _launch(self, run: str, ref: TaskRef, epoch: int) -> None:
        name = task_name(run, ref)
        try:
            # a HyDFS error here is transient (a primary just died, the ring is settling): retried,
            # and if it lasts the instance is reported dead and runs again at the next epoch
            async for attempt in AsyncRetrying(retry=retry_if_exception_type(HydfsError), reraise=True,
                                               wait=wait_exponential(multiplier=0.1, max=2.0),
                                               stop=stop_after_delay(self.cfg.start_retry)):
                with attempt:
                    if not self.core.wanted(run, ref, epoch):
                        return
                    plan, cfg = await self._plan(run)
        except JobError as exc:   # the job file itself is wrong: no epoch will do better
            log.error("cannot start task", extra={"task": name, "error": str(exc)})
            self._reported(run, ref, epoch, "failed", str(exc))
            return
        except HydfsError as exc:
            log.warning("cannot start task", extra={"task": name, "error": str(exc)})
            self._reported(run, ref, epoch, "died", f"start: {exc}")
            return
        if not self.core.started(run, ref, epoch):
            return
        inst = Instance(run, ref, epoch, Task(plan, ref, epoch, cfg), clock=time.time() - time.monotonic())
        self.instances[(run, ref)] = inst
        inst.runner = asyncio.create_task(self._run(inst))
        log.info("task started", extra={"task": inst.task.name, "epoch": epoch})

    def _stop(self, inst: Instance) -> None:
        self.instances.pop((inst.job, inst.ref), None)
        self.core.ended(inst.job, inst.ref, inst.epoch)
        if inst.runner is not None:
            inst.runner.cancel()   # its finally closes the reader
            key, runner = (inst.job, inst.ref), inst.runner
            self._stopping[key] = runner
            runner.add_done_callback(lambda _t: self._stopping.pop(key) if self._stopping.get(key) is runner
                                     else None)
        log.info("task stopped", extra={"task": inst.task.name, "epoch": inst.epoch})

    async def _forget(self, key: Key, runner: asyncio.Task[None] | None, keep_from: int | None = None) -> None:
        """The run is over, or the task moved to another node: its Redis keys (inbox, marks, caches)
        go, unless an instance of epoch ``keep_from`` or later owns them; the HyDFS log stays.
        The stopped instance's runner ends first (it waits for its in-flight store calls), so no
        write of its lands after the delete and leaves a key behind."""
        name = task_name(*key)
        if runner is not None:
            await asyncio.wait([runner], timeout=self.cfg.forget_wait)
        try:
            await self.inbox.forget(name, keep_from)
        except aredis.RedisError as exc:
            log.warning("could not clean up redis keys", extra={"task": name, "error": str(exc)})

    async def _purge(self, run: str) -> None:
        """A run is removed (``rainstorm rm``, retention): every key of its tasks in this node's Redis
        goes, whichever process ran them; the leader hears of it with the next table poll."""
        runners = [t for k, t in self._stopping.items() if k[0] == run]
        if runners:
            await asyncio.wait(runners, timeout=self.cfg.forget_wait)
        try:
            for name in await self.inbox.tasks_with_keys(run):
                await self.inbox.forget(name)
        except aredis.RedisError as exc:
            log.warning("could not remove a run's redis keys", extra={"run": run, "error": str(exc)})
            self.core.on_purged(run, False)
            return
        self.core.on_purged(run, True)
        log.info("removed run's redis keys", extra={"run": run})

    async def _sweep(self) -> None:
        """At start: delete the keys an earlier process of this node left for tasks that will not run
        here again (their run ended or was removed, or they moved away while this node was down)."""
        try:
            for name, keep_from in self.core.stale(await self.inbox.tasks_with_keys()).items():
                await self.inbox.forget(name, keep_from)
        except aredis.RedisError as exc:
            log.warning("could not sweep stale redis keys", extra={"error": str(exc)})

    # -- reports ---------------------------------------------------------------------------------
    def _reported(self, run: str, ref: TaskRef, epoch: int, status: str, error: str | None = None,
                  stats: dict[str, Any] | None = None) -> None:
        self.core.report(run, ref, epoch, status, error, stats)
        self._report_kick.set()

    async def _report_loop(self) -> None:
        """Send every due report, again and again, until the controller has it or it is moot."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._report_kick.wait(), 1.0)
            self._report_kick.clear()
            for args in self.core.due_reports():
                key = (args["run"], args["task"], args["epoch"], args["status"])
                if key not in self._reporting:
                    self._reporting.add(key)
                    self._spawn(self._send_report(key, args))

    async def _send_report(self, key: tuple[str, str, int, str], args: dict[str, Any]) -> None:
        try:
            await self.control.request("report", args)
            self.core.on_report_acked(args)
        except ControlError as exc:
            log.info("report not delivered yet", extra={"task": args["task"], "error": str(exc)})
        finally:
            self._reporting.discard(key)

    # -- one instance -----------------------------------------------------------------------------
    async def _run(self, inst: Instance) -> None:
        t = inst.task
        t.start(time.monotonic())
        inflight: set[asyncio.Task[None]] = set()
        try:
            while True:
                self._dispatch(inst, t.take_effects(), inflight)
                if inst.rebuild is None and t.phase is Phase.RUNNING:
                    inst.rebuild = time.monotonic() - t.started_at
                cause = t.cause.value if t.cause else "unknown"
                said = self.core.after_step(inst.job, inst.ref, inst.epoch, t.done, t.alive, f"{cause}: {t.why}",
                                            lambda: self._task_stats(inst))
                if said == "done":
                    self._report_kick.set()
                    log.info("task finished", extra={"task": t.name, "epoch": inst.epoch})
                elif said == "died":
                    self._report_kick.set()
                    log.warning("task instance died", extra={"task": t.name, "cause": cause, "why": t.why})
                    if self.instances.get((inst.job, inst.ref)) is inst:
                        del self.instances[(inst.job, inst.ref)]
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
            if inflight:   # a store call already sent still lands: wait for it (see _forget)
                await asyncio.wait(list(inflight), timeout=self.cfg.forget_wait)
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
            result = await store_call(eff, self.logs, self.inbox, _Source(self._reader(inst))
                                      if isinstance(eff, ReadSource) else None)()
        except REFUSALS as exc:
            result = exc
        except (HydfsError, OSError, aredis.RedisError) as exc:
            # a transient store failure: the instance cannot know whether it happened; let it die
            # and be replaced (reported, next epoch) rather than guess
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

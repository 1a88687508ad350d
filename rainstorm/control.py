"""The control plane on every node: the Raft voter (on voters) and the front door to the controller.

Every node registers the ``control.*`` methods. The node whose Raft core leads *with a lease* (it
heard from a quorum within an election timeout) serves them from its applied state and turns every
request that changes anything into a proposal: nothing is acted on before its entry committed. Any
other node forwards the request to the leader it knows, and during an election waits for one, up to
``request_timeout``; then the caller gets one clear line. A deposed leader that has not noticed yet
(SIGSTOPped, cut off) has no lease, so it serves nothing: it forwards like everyone else.

On the leader, gossip is the failure detector and the controller the judge: whenever the leader's
gossip view of live nodes differs from the committed one, it proposes a ``members`` command, and the
committed command moves the tasks (see :mod:`rainstorm.controller`). The leader also finishes every
committed removal of an ended run (``rainstorm rm``, or its own ``rm`` once ``retention`` passed):
it deletes the run's HyDFS files, waits a bounded time for the live workers to report its Redis keys
deleted, and commits ``drop``. A new leader picks up a removal its predecessor left half done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from gossip.transport import GossipNode
from hydfs.api import Client, HydfsError
from net.rpc import RemoteError, RpcClient, RpcError, RpcServer, Unreachable
from raft.config import RaftConfig
from raft.core import NotLeader
from raft.driver import ProposalLost, RaftNode
from raft.messages import Entry
from raft.storage import DiskStorage
from rainstorm.controller import BEHIND, MALFORMED, PROTO_RM, RUNNING, UNKNOWN, Controller, run_files

log = logging.getLogger(__name__)

NOT_LEADER, NO_LEADER = "not_leader", "no_leader"      # typed codes of this front door
MAX_WAIT = 5.0   # the longest a long poll (table, wait) is held open
FORWARD_TIMEOUT = 2.0   # one forwarded attempt waits this long for the leader (plus a long poll's hold)
SWEEP_PERIOD = 0.5      # the leader looks for runs to remove (rm, retention) at least this often
REMOVED_KEPT = 256      # summaries of finished removals the leader keeps for `rainstorm rm` to show
GONE = ("not_found", "deleted")   # HyDFS codes that mean a file to remove is not there (any more)


@dataclass
class ControlConfig:
    voters: list[str] = field(default_factory=list)   # node ids of the Raft voters (a local cluster: its first 1-5)
    max_tasks_per_node: int = 32     # admission: a submit that would put more tasks on the live nodes is refused
    heartbeat: float = 0.1           # Raft leader heartbeat (s)
    election_timeout: float = 1.0    # a follower campaigns after [1x, 2x) this without a leader (s)
    snapshot_every: int = 1000       # the Raft log is compacted behind a snapshot this many entries apart
    request_timeout: float = 10.0    # a request waits this long for a leader (elections) before it fails
    hydfs_view: str = "committed"    # HyDFS acts on the controller's committed live set; "gossip": on the
    #                                  node's own gossip view (unsafe under partitions: the bench's baseline)
    retention: float = 604800.0      # an ended run is removed (logs, Redis keys, record) this long after it
    #                                  ended (s); 0: kept until `rainstorm rm` (docs/configuration.md)

    def raft(self) -> RaftConfig:
        return RaftConfig(heartbeat=self.heartbeat, election_timeout=self.election_timeout,
                          snapshot_every=self.snapshot_every)


class ControlError(Exception):
    """The controller refused or could not answer; ``code`` is typed, the message is for the user."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def command(name: str, a: dict[str, Any], limit: int, now: float | None = None) -> dict[str, Any]:
    """The controller command a request proposes (the simulator proposes the same ones). ``now``: the
    proposer's wall clock, recorded as when a run ended or an rm was asked (retention counts from it)."""
    at = {} if now is None else {"at": now}
    if name == "submit":
        spec, tasks = a.get("spec"), a.get("tasks")
        if not isinstance(a.get("name"), str) or not isinstance(spec, dict) or not isinstance(tasks, list):
            raise ControlError(MALFORMED, "malformed submit")
        return {"op": "submit", "name": a["name"], "spec": spec, "tasks": tasks, "limit": limit,
                "sub": str(a.get("sub", ""))}
    if name == "stop":
        return {"op": "stop", "name": str(a.get("name")), **at}
    if name == "report":
        return {"op": "report", "run": a.get("run"), "task": a.get("task"), "epoch": a.get("epoch"),
                "status": a.get("status"), "error": a.get("error"), **at}
    if name == "rm":
        run = a.get("run")
        if not isinstance(a.get("name"), str) or not (run is None or type(run) is int):
            raise ControlError(MALFORMED, "malformed rm")
        return {"op": "rm", "name": a["name"], "run": run, "deadletters": bool(a.get("deadletters")), **at}
    if name == "hello":
        return {"op": "hello", "node": a.get("node"), "boot": a.get("boot"), "proto": int(a.get("proto", 1))}
    raise ControlError(MALFORMED, f"{name} is not a command")


def members_command(alive: list[str], core: Controller) -> dict[str, Any] | None:
    """The leader's duty: its gossip view of live nodes, when it differs from the committed one."""
    view = sorted(alive)
    return None if view == core.alive else {"op": "members", "alive": view}


def submit_commands(a: dict[str, Any], alive: list[str], core: Controller, limit: int) -> list[dict[str, Any]]:
    """A submit's commands: the leader's gossip view first if it is not committed yet (a leader just
    elected places on what gossip sees now, not on nothing), then the submit itself."""
    view = members_command(alive, core)
    return [*([view] if view is not None else []), command("submit", a, limit)]


class _Again(Exception):
    """No leader right now (election, forwarding raced a change): try again until the deadline."""


class _Machine:
    """The Raft state machine: committed commands into :class:`Controller`, snapshots as msgpack."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self.core = Controller()
        self.on_change = on_change

    def apply(self, entry: Entry) -> Any:
        if not entry.data:       # a new leader's no-op
            return None
        try:
            cmd = msgpack.unpackb(entry.data, raw=False)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
            return {"error": MALFORMED, "message": "undecodable command"}
        out = self.core.apply(cmd, entry.index)
        self.on_change()
        return out

    def snapshot(self) -> bytes:
        return msgpack.packb(self.core.to_doc())

    def restore(self, data: bytes) -> None:
        self.core = Controller.from_doc(msgpack.unpackb(data, raw=False))
        self.on_change()


Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class ControlService:
    def __init__(self, node_id: str, cfg: ControlConfig, rpc: RpcServer, client: RpcClient,
                 membership: GossipNode, data_dir: Path, hydfs: Client | None = None) -> None:
        self.node_id = node_id
        self.cfg = cfg
        self.client = client
        self.membership = membership
        self.voters = list(cfg.voters)
        self.machine = _Machine(self._changed_now)
        self.raft: RaftNode | None = None
        if node_id in self.voters:
            self.raft = RaftNode(node_id, self.voters, self.addr_of, rpc, client,
                                 DiskStorage(data_dir / "raft"), self.machine, cfg.raft())
        self.stats: dict[str, dict[str, dict[str, Any]]] = {}   # run -> task -> counters (leader's soft state)
        self.hydfs = hydfs     # the leader deletes removed runs' files through it
        self.cleaned: dict[str, set[str]] = {}   # removing run -> nodes whose worker deleted its Redis keys
        self.removed: OrderedDict[str, dict[str, Any]] = OrderedDict()   # run -> what its removal did
        self._purging: set[str] = set()
        self._leader_hint: str | None = None
        self._changed = asyncio.Event()
        self._kick = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._bg: set[asyncio.Task[None]] = set()
        self.handlers: dict[str, Handler] = {
            "submit": self._submit, "stop": self._stop, "report": self._report, "hello": self._hello,
            "table": self._table, "jobs": self._jobs, "wait": self._wait, "rm": self._rm, "removal": self._removal}
        for name in self.handlers:
            rpc.register(f"control.{name}", self._rpc_handler(name))
        rpc.register("control.leader", self._leader_rpc)

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.raft is not None:
            await self.raft.start()
            self.membership.subscribe(lambda _ev: self._kick.set())
            self._loop = asyncio.create_task(self._members_loop())
            self._sweeper = asyncio.create_task(self._sweep_loop())

    async def close(self) -> None:
        for t in [self._loop, self._sweeper, *self._bg]:
            if t is not None:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
        if self.raft is not None:
            await self.raft.close()

    @property
    def core(self) -> Controller:
        return self.machine.core

    def leads(self) -> bool:
        return self.raft is not None and self.raft.is_leader

    def info(self) -> dict[str, Any]:
        """For ``node.info`` and ``cluster status``: this node's view of the controller."""
        r = self.raft
        return {"voter": r is not None, "voters": self.voters, "leader": r.leader_id if r else self._leader_hint,
                "term": r.term if r else None, "leading": self.leads(),
                "commit": r.commit if r else None, "applied": r.applied if r else None}

    def addr_of(self, node_id: str) -> str | None:
        for m in self.membership.members():
            if m.node_id == node_id:
                return m.addr
        return None

    def _changed_now(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- the front door ----------------------------------------------------------------------------
    def _rpc_handler(self, name: str) -> Handler:
        async def handle(args: dict[str, Any]) -> Any:
            if not isinstance(args, dict):
                raise RemoteError("malformed request", MALFORMED)
            try:
                if args.get("_fwd"):      # forwarded once already: serve here or say so (no chains)
                    if not self.leads():
                        raise ControlError(NOT_LEADER, f"{self.node_id} is not the controller leader")
                    return await self.handlers[name](args)
                return await self.request(name, args)
            except ControlError as exc:
                raise RemoteError(str(exc), exc.code) from None
        return handle

    async def _leader_rpc(self, _args: dict[str, Any]) -> dict[str, Any]:
        return self.info()

    async def request(self, name: str, args: dict[str, Any], timeout: float | None = None) -> Any:
        """Serve ``name`` here if this node leads, else at the leader; wait out elections up to the bound."""
        if name == "submit" and "sub" not in args:
            args = {**args, "sub": uuid.uuid4().hex}   # makes a retried submit (lost answer) idempotent
        bound = self.cfg.request_timeout if timeout is None else timeout
        deadline = time.monotonic() + bound
        try:
            return await AsyncRetrying(retry=retry_if_exception_type(_Again), reraise=True,
                                       wait=wait_exponential(multiplier=0.05, max=0.5),
                                       stop=stop_after_delay(bound))(self._once, name, args, deadline)
        except _Again as exc:
            voters = ", ".join(self.voters) or "none configured"
            raise ControlError(NO_LEADER, f"no controller leader within {bound:g}s ({exc}; voters: {voters}); "
                                          "an election is under way or a quorum of voters is down") from None

    async def _once(self, name: str, args: dict[str, Any], deadline: float) -> Any:
        if self.leads():
            return await self.handlers[name](args)
        leader = await self._find_leader()
        addr = self.addr_of(leader) if leader else None
        if leader is None or addr is None or leader == self.node_id:
            raise _Again("no leader known")
        # bounded per attempt: a leader that stopped answering (SIGSTOP, cut off) is given up on within
        # a few seconds, by when the others have elected a new one, and the request goes there
        held = float(args["wait"]) if isinstance(args.get("wait"), int | float) else 0.0
        left = max(0.5, min(deadline - time.monotonic(), FORWARD_TIMEOUT + min(held, MAX_WAIT)))
        try:
            return await self.client.call(addr, f"control.{name}", {**args, "_fwd": True}, timeout=left)
        except Unreachable as exc:
            self._leader_hint = None
            raise _Again(f"leader {leader} unreachable") from exc
        except RpcError as exc:
            if exc.code == NOT_LEADER:
                self._leader_hint = None
                raise _Again(f"{leader} is no longer the leader") from exc
            raise ControlError(exc.code or "remote", str(exc)) from None

    async def _find_leader(self) -> str | None:
        if self.raft is not None:
            return self.raft.leader_id
        if self._leader_hint is not None:
            return self._leader_hint
        # a node without a vote asks the voters
        for voter in self.voters:
            addr = self.addr_of(voter)
            if addr is None:
                continue
            with contextlib.suppress(Unreachable, RpcError):
                got = await self.client.call(addr, "control.leader", {}, timeout=1.0)
                if isinstance(got, dict) and isinstance(got.get("leader"), str):
                    self._leader_hint = got["leader"]
                    return self._leader_hint
        return None

    async def _propose(self, cmd: dict[str, Any]) -> Any:
        assert self.raft is not None
        try:
            out = await self.raft.propose(msgpack.packb(cmd), self.cfg.request_timeout)
        except (NotLeader, ProposalLost, TimeoutError) as exc:
            raise _Again(f"proposal not committed: {type(exc).__name__}") from exc
        if isinstance(out, dict) and "error" in out:
            raise ControlError(str(out["error"]), str(out.get("message", "refused")))
        return out

    # -- what the leader serves --------------------------------------------------------------------
    async def _submit(self, a: dict[str, Any]) -> Any:
        *first, cmd = submit_commands(a, [m.node_id for m in self.membership.alive()], self.core,
                                      self.cfg.max_tasks_per_node)
        for view in first:
            await self._propose(view)
        out = await self._propose(cmd)
        log.info("job submitted", extra={"job": out.get("name"), "run": out.get("run"), "tasks": len(out["assign"])})
        return out

    async def _stop(self, a: dict[str, Any]) -> Any:
        return await self._propose(command("stop", a, self.cfg.max_tasks_per_node, time.time()))

    async def _report(self, a: dict[str, Any]) -> Any:
        run, task = a.get("run"), a.get("task")
        if isinstance(a.get("stats"), dict) and isinstance(run, str) and isinstance(task, str):
            self.stats.setdefault(run, {})[task] = a["stats"]
        return await self._propose(command("report", a, self.cfg.max_tasks_per_node, time.time()))

    async def _hello(self, a: dict[str, Any]) -> Any:
        return await self._propose(command("hello", a, self.cfg.max_tasks_per_node))

    async def _table(self, a: dict[str, Any]) -> dict[str, Any]:
        stats = a.get("stats")
        if isinstance(stats, dict):
            for run, tasks in stats.items():
                if isinstance(tasks, dict):
                    self.stats.setdefault(str(run), {}).update(tasks)
        node, cleaned = a.get("node"), a.get("cleaned")
        if isinstance(node, str) and isinstance(cleaned, list):
            for run in cleaned:
                if isinstance(run, str) and run in self.core.runs:
                    self.cleaned.setdefault(run, set()).add(node)
        since, wait = a.get("since"), a.get("wait")
        if since == self.core.version and isinstance(wait, int | float) and wait > 0:
            # a long poll: answered as soon as the table changes (a worker learns its tasks at once)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(float(wait), MAX_WAIT))
        return self.core.table()

    async def _wait(self, a: dict[str, Any]) -> dict[str, Any]:
        """``rainstorm wait``: the job's state once its latest run ended, or after ``wait`` seconds."""
        name, wait = a.get("name"), a.get("wait", 0)
        if not isinstance(name, str) or not isinstance(wait, int | float):
            raise ControlError(MALFORMED, "malformed wait")
        deadline = time.monotonic() + min(float(wait), MAX_WAIT)
        while True:
            run = self.core.run_of(name)
            if run is None:
                raise ControlError(UNKNOWN, f"no job named {name!r} (see `rainstorm jobs`)")
            left = deadline - time.monotonic()
            if run.state != RUNNING or left <= 0:
                return {"name": name, "run": run.run, "state": run.state, "error": run.error}
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    async def _jobs(self, _a: dict[str, Any]) -> list[dict[str, Any]]:
        """Every run, newest last; ``latest`` marks the one `status NAME` shows."""
        out = []
        for r in self.core.runs.values():
            tasks = []
            for t in r.tasks:
                x = r.assign[t]
                st = self.stats.get(r.key, {}).get(t, {})
                _, stage, index = t.rsplit(":", 2)
                tasks.append({"task": t, "stage": int(stage), "index": int(index), "node": x.node,
                              "epoch": x.epoch, "restarts": x.restarts, "done": t in r.done,
                              "processed": st.get("processed", 0), "emitted": st.get("emitted", 0),
                              "pending": st.get("pending", 0), "deadletters": st.get("deadletters", 0),
                              "commits": st.get("commits", 0),
                              # of the instance that last reported: recovery and latency benchmarks
                              "reported_epoch": st.get("epoch"), "started_at": st.get("started_at"),
                              "first_commit_at": st.get("first_commit_at"), "latency": st.get("latency", {}),
                              "rebuild_s": st.get("rebuild_s"), "rebuilt_records": st.get("rebuilt_records", 0),
                              "snapshots": st.get("snapshots", 0), "fetched": st.get("fetched", 0)})
            out.append({"name": r.name, "run": r.run, "key": r.key, "latest": self.core.latest.get(r.name) == r.key,
                        "state": r.state, "error": r.error, "src": r.spec.get("src"), "dest": r.spec.get("dest"),
                        "removing": r.removing, "ended_at": r.ended_at, "tasks": tasks})
        return out

    # -- the leader's duty: gossip's verdicts become proposals -------------------------------------
    async def _members_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), 0.5)   # also a periodic check: a proposal may fail
            self._kick.clear()
            if not self.leads():
                continue
            cmd = members_command([m.node_id for m in self.membership.alive()], self.core)
            if cmd is None:
                continue
            try:
                out = await self._propose(cmd)
                log.info("membership committed", extra={"alive": ",".join(cmd["alive"])})
                for task, old, new, epoch in out.get("moved", []):
                    log.info("task moved", extra={"task": task, "from": old, "to": new, "epoch": epoch})
            except (_Again, ControlError) as exc:
                log.info("membership not committed: %s", exc)

    # -- removal of ended runs (rm, retention) -----------------------------------------------------
    async def _rm(self, a: dict[str, Any]) -> Any:
        """``rainstorm rm``: one committed entry marks the runs removing; the sweep does the rest."""
        self._rm_allowed()
        return await self._propose(command("rm", a, self.cfg.max_tasks_per_node, time.time()))

    def _rm_allowed(self) -> None:
        """Refuses ``rm`` while a voter may run a version that cannot apply it (controller.PROTO_RM)."""
        behind = self.core.behind(self.voters, PROTO_RM)
        if behind:
            raise ControlError(BEHIND, f"voter(s) {', '.join(behind)} have not announced a version that can "
                                       "remove runs (an older version, or not started since): upgrade or "
                                       "start them first")

    async def _removal(self, a: dict[str, Any]) -> dict[str, Any]:
        """A long poll for `rainstorm rm`: which of ``keys`` are still being removed, and what the
        removal of the others did (``None`` when a former leader finished it)."""
        keys, wait = a.get("keys"), a.get("wait", 0)
        if not isinstance(keys, list) or not isinstance(wait, int | float):
            raise ControlError(MALFORMED, "malformed removal")
        deadline = time.monotonic() + min(float(wait), MAX_WAIT)
        while True:
            pending = [k for k in keys if k in self.core.runs]
            left = deadline - time.monotonic()
            if not pending or left <= 0:
                return {"pending": pending,
                        "done": {k: self.removed.get(k) for k in keys if k not in self.core.runs},
                        "cleaned": {k: sorted(self.cleaned.get(k, ())) for k in pending}}
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    async def _sweep_loop(self) -> None:
        """The leader's duty: propose the rm of runs past ``retention``, finish every committed rm."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), SWEEP_PERIOD)
            for soft in (self.stats, self.cleaned):    # what this node heard as leader of runs now dropped
                for key in [k for k in soft if k not in self.core.runs]:
                    del soft[key]
            if not self.leads():
                continue
            if self.cfg.retention > 0 and not self.core.behind(self.voters, PROTO_RM):
                now = time.time()
                for r in self.core.expired(now, self.cfg.retention):
                    try:
                        await self._propose({"op": "rm", "name": r.name, "run": r.run, "at": now,
                                             "retention": self.cfg.retention})
                        log.info("run past retention", extra={"run": r.key})
                    except (_Again, ControlError) as exc:
                        log.info("retention rm not committed: %s", exc)
                        break
            for r in self.core.removing():
                if r.key not in self._purging:
                    self._purging.add(r.key)
                    t = asyncio.create_task(self._purge(r.key))
                    self._bg.add(t)
                    t.add_done_callback(self._bg.discard)

    async def _purge(self, key: str) -> None:
        """Delete a removing run's HyDFS files (idempotent: a file already gone counts as done), give
        the live workers up to ``request_timeout`` to delete its Redis keys, then commit ``drop``.
        A leader that loses its lease stops; the next one starts over from the committed entry."""
        try:
            run = self.core.runs.get(key)
            if run is None or not run.removing or self.hydfs is None:
                return
            # the names the controller knows, and whatever else the run wrote under its own directory
            # (task snapshots are named by the epoch and index they were taken at)
            files = sorted(set(run_files(run)) | await self._files_under(f"rs/{key}/"))
            removed = 0
            for name in files:
                removed += await self._rm_file(name)
            deadline = time.monotonic() + self.cfg.request_timeout
            while time.monotonic() < deadline and not set(self.core.alive) <= self.cleaned.get(key, set()):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), SWEEP_PERIOD)
            nodes = sorted(self.cleaned.get(key, set()))
            out = await self._propose({"op": "drop", "run": key})
            if out.get("dropped"):
                known = set(self.core.alive) | set(self.core.failed_at)
                self.removed[key] = {"files": removed, "of": len(files), "nodes": nodes,
                                     "later": sorted(known - set(nodes))}
                while len(self.removed) > REMOVED_KEPT:
                    self.removed.popitem(last=False)
                self.cleaned.pop(key, None)
                log.info("run removed", extra={"run": key, "files": removed, "nodes": ",".join(nodes)})
        except (_Again, ControlError) as exc:
            log.info("run removal interrupted, retried: %s", exc, extra={"run": key})
        finally:
            self._purging.discard(key)

    async def _files_under(self, prefix: str) -> set[str]:
        """HyDFS files whose name starts with ``prefix``, as the live nodes list what they store (a
        file has three replicas: one live holder is enough to find it)."""
        assert self.hydfs is not None
        found: set[str] = set()
        with contextlib.suppress(HydfsError):
            await self.hydfs.refresh()
        for node in self.core.alive:
            try:
                found.update(f for f in await self.hydfs.store(node) if f.startswith(prefix))
            except HydfsError as exc:
                log.info("files of a removed run not listed on a node: %s", exc, extra={"node": node})
        return found

    async def _rm_file(self, name: str) -> int:
        """Remove one HyDFS file, retrying until it is gone or this node stops leading: 1 if it was there."""
        assert self.hydfs is not None
        client = self.hydfs

        def not_leading(_state: RetryCallState) -> bool:
            return not self.leads()

        try:
            async for attempt in AsyncRetrying(retry=retry_if_exception(
                    lambda e: isinstance(e, HydfsError) and e.code not in GONE), reraise=True, stop=not_leading,
                    wait=wait_exponential(multiplier=0.1, max=2.0)):
                with attempt:
                    await client.rm(name)
        except HydfsError as exc:
            if exc.code in GONE:
                return 0
            raise _Again(f"{name} not removed: {exc}") from None
        return 1

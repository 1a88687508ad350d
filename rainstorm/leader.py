"""The leader role on its node: RPC in front of :class:`LeaderCore`, state persisted in HyDFS.

Every change of the job table is appended to the HyDFS file ``rs/leader/state`` (a JSON document per
entry; the last one wins) before the answer goes out, so a restarted leader continues with the
same epochs and never hands out an epoch twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from gossip.transport import GossipNode
from gossip.types import MemberEvent
from hydfs.api import Client, HydfsError
from net.rpc import RemoteError, RpcServer
from rainstorm.leader_core import LeaderCore, LeaderError

log = logging.getLogger(__name__)
STATE_FILE = "rs/leader/state"
MAX_WAIT = 5.0  # the longest a long poll (table, wait) is held open


class Leader:
    def __init__(self, node_id: str, rpc: RpcServer, hydfs: Client, membership: GossipNode) -> None:
        self.node_id = node_id
        self.hydfs = hydfs
        self.membership = membership
        self.core = LeaderCore(node_id)
        self.stats: dict[str, dict[str, dict[str, Any]]] = {}  # job -> task -> counters from its node
        self._lock = asyncio.Lock()
        self._moves: asyncio.Task[None] | None = None
        self._dirty = False
        self._changed = asyncio.Event()   # set (and replaced) whenever the job table changed: long polls
        self.ready = False  # state restored from HyDFS; until then requests are refused
        for name, fn in [("leader.submit", self._submit), ("leader.table", self._table),
                         ("leader.report", self._report), ("leader.stop", self._stop), ("leader.jobs", self._jobs),
                         ("leader.hello", self._hello), ("leader.wait", self._wait)]:
            rpc.register(name, fn)

    async def start(self) -> None:
        try:
            entries = await self.hydfs.get_entries(STATE_FILE)
            docs = [d for _, d in entries if d]
            if docs:
                self.core = LeaderCore.from_doc(self.node_id, json.loads(docs[-1]))
                log.info("leader state restored", extra={"jobs": len(self.core.jobs)})
        except HydfsError as exc:
            if exc.code != "not_found":
                raise
        self.core.on_membership([m.node_id for m in self.membership.alive()])
        self.membership.subscribe(self._on_member)
        self.ready = True

    def _check_ready(self) -> None:
        if not self.ready:
            raise RemoteError("the leader is starting (restoring its state from HyDFS); try again shortly")

    def _on_member(self, _ev: MemberEvent) -> None:
        self._dirty = True  # events that arrive while a reassignment persists are handled by its next round
        if self._moves is None or self._moves.done():
            self._moves = asyncio.create_task(self._reassign())

    async def _reassign(self) -> None:
        while self._dirty:
            self._dirty = False
            async with self._lock:
                moved = self.core.on_membership([m.node_id for m in self.membership.alive()])
                for m in moved:
                    log.info("task moved", extra={"job": m.job, "task": m.task, "from": m.old, "to": m.new,
                                                  "epoch": m.epoch})
                if moved:
                    await self._persist()

    async def _hello(self, a: dict[str, Any]) -> int:
        """A worker process started: instances a previous process of that node ran must not be resumed
        under the same epoch (their log appends' idempotency keys would collide), so they all move on."""
        self._check_ready()
        node = a.get("node")
        if not isinstance(node, str):
            raise RemoteError("malformed hello")
        async with self._lock:
            bumped = self.core.node_restarted(node)
            if bumped:
                log.info("worker restarted: new epochs", extra={"peer": node, "tasks": bumped})
                await self._persist()
        return self.core.version

    async def _persist(self) -> None:
        doc = json.dumps(self.core.to_doc()).encode()
        try:
            await self.hydfs.append(STATE_FILE, doc)
        except HydfsError as exc:
            if exc.code != "not_found":
                raise
            await self.hydfs.create(STATE_FILE, doc)
        self._changed.set()
        self._changed = asyncio.Event()

    async def _submit(self, a: dict[str, Any]) -> dict[str, Any]:
        self._check_ready()
        name, spec, tasks = a.get("name"), a.get("spec"), a.get("tasks")
        if not isinstance(name, str) or not isinstance(spec, dict) or not isinstance(tasks, list):
            raise RemoteError("malformed submit")
        async with self._lock:
            self.core.on_membership([m.node_id for m in self.membership.alive()])
            try:
                job = self.core.submit(name, spec, [str(t) for t in tasks])
            except LeaderError as exc:
                raise RemoteError(str(exc)) from None
            self.stats.pop(name, None)
            await self._persist()
        log.info("job submitted", extra={"job": name, "tasks": len(tasks)})
        return {"name": job.name, "assign": {t: [x.node, x.epoch] for t, x in job.assign.items()}}

    async def _table(self, a: dict[str, Any]) -> dict[str, Any]:
        self._check_ready()
        node, stats = a.get("node"), a.get("stats")
        if isinstance(node, str) and isinstance(stats, dict):
            for job, tasks in stats.items():
                if isinstance(tasks, dict):
                    self.stats.setdefault(str(job), {}).update(tasks)
        since, wait = a.get("since"), a.get("wait")
        if since == self.core.version and isinstance(wait, int | float) and wait > 0:
            # a long poll: answer as soon as the table changes (a worker learns its tasks at once)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(float(wait), MAX_WAIT))
        return self.core.table()

    async def _wait(self, a: dict[str, Any]) -> dict[str, Any]:
        """``rainstorm wait``: the job's state once it is no longer running, or after ``wait`` seconds."""
        self._check_ready()
        name, wait = a.get("name"), a.get("wait", 0)
        if not isinstance(name, str) or not isinstance(wait, int | float):
            raise RemoteError("malformed wait")
        deadline = asyncio.get_running_loop().time() + min(float(wait), MAX_WAIT)
        while True:
            job = self.core.jobs.get(name)
            if job is None:
                raise RemoteError(f"no job named {name!r} (see `rainstorm jobs`)")
            left = deadline - asyncio.get_running_loop().time()
            if job.state != "running" or left <= 0:
                return {"name": name, "state": job.state, "error": job.error}
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    async def _report(self, a: dict[str, Any]) -> bool:
        self._check_ready()
        try:
            job, task, epoch, status = a["job"], a["task"], int(a["epoch"]), a["status"]
        except (KeyError, TypeError, ValueError):
            raise RemoteError("malformed report") from None
        if isinstance(a.get("stats"), dict) and isinstance(job, str) and isinstance(task, str):
            self.stats.setdefault(job, {})[task] = a["stats"]
        async with self._lock:
            if status == "lost":  # the instance lost its Redis state: same placement rule, next epoch
                changed = self.core.restart(job, task, epoch)
            else:
                changed = self.core.report(job, task, epoch, status, a.get("error"))
            if changed:
                await self._persist()
        return changed

    async def _stop(self, a: dict[str, Any]) -> str:
        self._check_ready()
        async with self._lock:
            try:
                job = self.core.stop(str(a.get("name")))
            except LeaderError as exc:
                raise RemoteError(str(exc)) from None
            await self._persist()
        return job.state

    async def _jobs(self, _a: dict[str, Any]) -> list[dict[str, Any]]:
        self._check_ready()
        out = []
        for j in self.core.jobs.values():
            tasks = []
            for t in j.tasks:
                x = j.assign[t]
                st = self.stats.get(j.name, {}).get(t, {})
                _, stage, index = t.rsplit(":", 2)
                tasks.append({"task": t, "stage": int(stage), "index": int(index), "node": x.node,
                              "epoch": x.epoch, "restarts": x.restarts, "done": t in j.done,
                              "processed": st.get("processed", 0), "emitted": st.get("emitted", 0),
                              "pending": st.get("pending", 0), "deadletters": st.get("deadletters", 0),
                              "commits": st.get("commits", 0),
                              # of the instance that last reported: recovery and latency benchmarks
                              "reported_epoch": st.get("epoch"), "started_at": st.get("started_at"),
                              "first_commit_at": st.get("first_commit_at"), "latency": st.get("latency", {})})
            out.append({"name": j.name, "state": j.state, "error": j.error, "src": j.spec.get("src"),
                        "dest": j.spec.get("dest"), "tasks": tasks})
        return out

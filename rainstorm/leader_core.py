"""The leader's bookkeeping without I/O: jobs, where each task runs, and at which epoch.

The leader places a job's tasks on the live worker nodes (the leader's own node only when it is
the only one), least-loaded first. When membership reports a node failed or left, each of its
tasks moves to the least-loaded live node with its epoch raised by one: the new instance fences
the old one out of the task's log, so a zombie can neither commit nor deliver. Workers pull the
assignment table (versioned) and route deliveries by it, so "telling the upstreams" is the table
changing. The whole state is a plain document, persisted by the edge (HyDFS) after every change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

RUNNING, FINISHED, FAILED, STOPPED = "running", "finished", "failed", "stopped"


class LeaderError(ValueError):
    """A request the leader refuses; the message is for the user."""


@dataclass
class Assignment:
    node: str
    epoch: int
    restarts: int = 0


@dataclass
class Job:
    name: str
    spec: dict[str, Any]                  # what the workers need to run it (plan inputs, args, job file)
    tasks: list[str]
    assign: dict[str, Assignment] = field(default_factory=dict)
    state: str = RUNNING
    done: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class Moved:
    job: str
    task: str
    old: str
    new: str
    epoch: int


class LeaderCore:
    def __init__(self, leader_node: str) -> None:
        self.leader_node = leader_node
        self.jobs: dict[str, Job] = {}
        self.alive: list[str] = []
        self.version = 0

    # -- placement -------------------------------------------------------------------------------
    def _workers(self) -> list[str]:
        others = [n for n in self.alive if n != self.leader_node]
        return others or list(self.alive)

    def _load(self) -> dict[str, int]:
        load = {n: 0 for n in self._workers()}
        for job in self.jobs.values():
            if job.state != RUNNING:
                continue
            for t, a in job.assign.items():
                if a.node in load and t not in job.done:
                    load[a.node] += 1
        return load

    def _pick(self, load: dict[str, int]) -> str:
        node = min(sorted(load), key=lambda n: load[n])
        load[node] += 1
        return node

    # -- inputs ----------------------------------------------------------------------------------
    def submit(self, name: str, spec: dict[str, Any], tasks: list[str]) -> Job:
        if name in self.jobs and self.jobs[name].state == RUNNING:
            raise LeaderError(f"a job named {name!r} is already running")
        load = self._load()
        if not load:
            raise LeaderError("no live worker node to run the job on")
        job = Job(name, spec, list(tasks))
        prev = self.jobs.get(name)
        for t in tasks:  # a resubmitted name continues the epochs, so old instances stay fenced
            old = prev.assign.get(t) if prev else None
            job.assign[t] = Assignment(self._pick(load), (old.epoch + 1) if old else 1)
        self.jobs[name] = job
        self.version += 1
        return job

    def on_membership(self, alive: list[str]) -> list[Moved]:
        """Move every unfinished task of a running job off nodes that are no longer alive."""
        self.alive = sorted(alive)
        moved: list[Moved] = []
        load = self._load()
        if not load:
            return moved
        live = set(self.alive)
        for job in self.jobs.values():
            if job.state != RUNNING:
                continue
            for t in job.tasks:
                a = job.assign[t]
                if a.node in live or t in job.done:
                    continue
                new = self._pick(load)
                moved.append(Moved(job.name, t, a.node, new, a.epoch + 1))
                job.assign[t] = Assignment(new, a.epoch + 1, a.restarts + 1)
        if moved:
            self.version += 1
        return moved

    def report(self, job_name: str, task: str, epoch: int, status: str, error: str | None = None) -> bool:
        """A task instance says it finished (``done``) or cannot run (``failed``); stale epochs are ignored."""
        job = self.jobs.get(job_name)
        if job is None or task not in job.assign or job.assign[task].epoch != epoch or job.state != RUNNING:
            return False
        if status == "done":
            if task not in job.done:
                job.done.append(task)
            if len(job.done) == len(job.tasks):
                job.state = FINISHED
        elif status == "failed":
            job.state, job.error = FAILED, error or "a task failed"
        else:
            raise LeaderError(f"unknown task status {status!r}")
        self.version += 1
        return True

    def restart(self, job_name: str, task: str, epoch: int) -> bool:
        """The instance at ``epoch`` lost its node-local state (Redis restarted empty): run a new
        instance, on the same node if it is alive, at the next epoch."""
        job = self.jobs.get(job_name)
        if job is None or job.state != RUNNING or task not in job.assign or job.assign[task].epoch != epoch:
            return False
        a = job.assign[task]
        node = a.node if a.node in self.alive else self._pick(self._load())
        job.assign[task] = Assignment(node, epoch + 1, a.restarts + 1)
        self.version += 1
        return True

    def node_restarted(self, node: str) -> int:
        """A node's worker process (re)started: every task of a running job placed there gets the next epoch
        (same node), so no two instances ever share an epoch. Returns how many moved on."""
        n = 0
        for job in self.jobs.values():
            if job.state != RUNNING:
                continue
            for t, a in job.assign.items():
                if a.node == node:  # finished ones too: their instance still answers until the job ends
                    job.assign[t] = Assignment(node, a.epoch + 1, a.restarts + 1)
                    n += 1
        if n:
            self.version += 1
        return n

    def stop(self, job_name: str) -> Job:
        job = self.jobs.get(job_name)
        if job is None:
            raise LeaderError(f"no job named {job_name!r}")
        if job.state == RUNNING:
            job.state = STOPPED
            self.version += 1
        return job

    # -- outputs ---------------------------------------------------------------------------------
    def table(self) -> dict[str, Any]:
        """What workers pull: running jobs, each task's node and epoch."""
        return {"version": self.version, "jobs": {
            j.name: {"spec": j.spec, "state": j.state, "done": list(j.done),
                     "assign": {t: [a.node, a.epoch] for t, a in j.assign.items()}}
            for j in self.jobs.values()}}

    def to_doc(self) -> dict[str, Any]:
        return {"version": self.version, "jobs": [asdict(j) for j in self.jobs.values()]}

    @classmethod
    def from_doc(cls, leader_node: str, doc: dict[str, Any]) -> LeaderCore:
        core = cls(leader_node)
        core.version = int(doc.get("version", 0)) + 1
        for j in doc.get("jobs", []):
            job = Job(j["name"], j["spec"], list(j["tasks"]), state=j["state"], done=list(j["done"]),
                      error=j.get("error"))
            job.assign = {t: Assignment(**a) for t, a in j["assign"].items()}
            core.jobs[job.name] = job
        return core

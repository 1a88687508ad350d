"""The control plane's state machine: jobs, their runs, where each task runs and at which epoch.

Nothing here decides on its own time: every change is a command that the Raft log committed, applied
in log order on every voter (:meth:`Controller.apply`), so all voters hold the same table and a new
leader goes on from exactly where the old one stopped. Epochs are raised only inside ``apply``, so an
epoch is handed out once the command that raised it is durable on a quorum and never again: it is
the fencing token of the task's HyDFS log.

Commands (plain dicts, msgpack in the log):

- ``submit`` a job: a new *run* (id = the command's log index, unique for ever) with its tasks placed
  least-loaded on the live nodes at epoch 1. A name can be submitted again once its last run ended;
  each run has its own task names (``<name>@<run>:<stage>:<index>``), hence its own logs and Redis keys.
- ``members``: the leader's gossip view changed. Every task of a running run whose node is no longer
  alive moves, finished tasks included (their producers may still need their final marks).
- ``hello``: a node's worker process started (``boot`` names the process): its tasks get new epochs,
  because a fresh process cannot know which epochs its previous life used.
- ``report``: an instance finished (``done``), cannot ever run (``failed``) or died for any other
  reason (``died``: it runs again at the next epoch). Reports name their epoch: a stale or repeated
  report changes nothing, so workers retry them freely.
- ``stop`` a job's running run.
- ``rm``: a job's ended runs (or one of them) start being *removed* (``removing``): the leader deletes
  their internal HyDFS files (task logs, the stored job file; ``<dest>.deadletters`` only if asked)
  and workers delete their Redis keys; then ``drop`` forgets the run. A running run is refused. With
  ``retention`` (the leader's sweep, ``[control] retention``) it applies only to runs that ended at
  least that long before the command's ``at``, so replaying the entry decides the same.
- ``drop``: a removing run's files are gone: the run leaves the table (``rainstorm jobs``).

Times (``at``: when a run ended, when a removal was asked) are the proposing leader's wall clock,
carried in the entry: every voter applies the same value whatever its own clock says.

``apply`` never raises on a command's content (a raise would stop every voter alike): a refused
command returns ``{"error": code, "message": text}``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from rainstorm.stream.plan import log_name

RUNNING, FINISHED, FAILED, STOPPED = "running", "finished", "failed", "stopped"

# refusal codes (typed, for callers to branch on; the message is for the user)
EXISTS, UNKNOWN, FULL, NO_WORKER, MALFORMED = "exists", "unknown_job", "full", "no_worker", "malformed"
STILL_RUNNING = "still_running"   # rm of a run that has not ended
BEHIND = "voters_behind"          # rm while a voter may still run a version that cannot apply it

# The commands a worker process's version can apply, announced in its ``hello`` (none announced: 1).
# 2 added ``rm`` and ``drop``: a voter of version 1 refuses them as unknown, and its table would part
# from the others', so the leader proposes them only once every voter announced 2 (a rolling upgrade).
PROTO = 2
PROTO_RM = 2


@dataclass
class Assignment:
    node: str
    epoch: int
    restarts: int = 0


@dataclass
class Run:
    name: str
    run: int                               # the submit command's log index
    spec: dict[str, Any]                   # what workers need to run it (job file, src, dest, args...)
    tasks: list[str]
    assign: dict[str, Assignment] = field(default_factory=dict)
    state: str = RUNNING
    done: list[str] = field(default_factory=list)
    error: str | None = None
    sub: str = ""                          # the submitter's request id: a retried submit is answered, not rerun
    ended_at: float | None = None          # wall clock of the entry that ended it (None: running, or unknown)
    removing: bool = False                 # an rm was committed: its files and keys are being deleted
    rm_deadletters: bool = False           # ... and that rm asked for ``<dest>.deadletters`` too

    @property
    def key(self) -> str:
        return run_key(self.name, self.run)


def run_key(name: str, run: int) -> str:
    """A run's name everywhere below the controller: task names, HyDFS log paths, Redis keys, caches."""
    return f"{name}@{run}"


def run_files(run: Run) -> list[str]:
    """The HyDFS files an rm deletes: every task's log and the stored job file (never the source nor
    the destination; the dead-letter file, user-facing, only if the rm asked for it)."""
    files = [log_name(run.key, (int(s), int(p))) for s, p in (t.rsplit(":", 2)[1:] for t in run.tasks)]
    if run.spec.get("job_file"):
        files.append(str(run.spec["job_file"]))
    if run.rm_deadletters and run.spec.get("dest"):
        files.append(f"{run.spec['dest']}.deadletters")
    return files


def refuse(code: str, message: str) -> dict[str, Any]:
    return {"error": code, "message": message}


def _at(c: dict[str, Any]) -> float | None:
    """The proposing leader's wall clock in an entry (absent from entries written before it was recorded)."""
    at = c.get("at")
    return float(at) if isinstance(at, int | float) else None


class Controller:
    def __init__(self) -> None:
        self.runs: dict[str, Run] = {}          # run key -> run
        self.latest: dict[str, str] = {}        # job name -> its latest run's key
        self.alive: list[str] = []
        # node -> index of the last entry that declared it failed: a node that learns the table only
        # after it was re-admitted still learns that it was out (and forgets what it vouched for)
        self.failed_at: dict[str, int] = {}
        self.boots: dict[str, str] = {}         # node -> the boot id of its worker process
        self.protos: dict[str, int] = {}        # node -> the command version its process announced (PROTO)
        self.version = 0                        # log index of the last change: workers' long polls

    # -- placement -------------------------------------------------------------------------------
    def _load(self) -> dict[str, int]:
        load = {n: 0 for n in self.alive}
        for run in self.runs.values():
            if run.state != RUNNING:
                continue
            for t, a in run.assign.items():
                if a.node in load and t not in run.done:
                    load[a.node] += 1
        return load

    @staticmethod
    def _pick(load: dict[str, int]) -> str:
        node = min(sorted(load), key=lambda n: load[n])
        load[node] += 1
        return node

    # -- the log ---------------------------------------------------------------------------------
    def apply(self, cmd: Any, index: int) -> Any:
        """Apply one committed command (log ``index``); returns the proposer's answer."""
        op = cmd.get("op") if isinstance(cmd, dict) else None
        fn = {"submit": self._submit, "stop": self._stop, "members": self._members, "hello": self._hello,
              "report": self._report, "rm": self._rm, "drop": self._drop}.get(op if isinstance(op, str) else "")
        if fn is None:
            return refuse(MALFORMED, f"unknown command {op!r}")
        try:
            out = fn(cmd, index)
        except (KeyError, TypeError, ValueError) as exc:
            return refuse(MALFORMED, f"malformed {op} command: {exc}")
        return out

    def behind(self, voters: list[str], proto: int) -> list[str]:
        """The voters that have not announced ``proto`` (an older version, or never said hello)."""
        return [v for v in voters if self.protos.get(v, 0) < proto]

    def _changed(self, index: int) -> None:
        self.version = index

    def _submit(self, c: dict[str, Any], index: int) -> dict[str, Any]:
        name, spec, refs, limit = str(c["name"]), dict(c["spec"]), list(c["tasks"]), int(c["limit"])
        sub = str(c.get("sub") or "")
        prev = self.runs.get(self.latest.get(name, ""))
        if prev is not None and sub and prev.sub == sub:
            return self._submitted(prev)
        if prev is not None and prev.state == RUNNING:
            return refuse(EXISTS, f"a job named {name!r} is already running (run {prev.run}); "
                                  f"`rainstorm stop {name}` first")
        load = self._load()
        if not load:
            return refuse(NO_WORKER, "no live node to run the job on")
        busy = sum(load.values())
        if busy + len(refs) > limit * len(load):
            return refuse(FULL, f"the cluster cannot take {len(refs)} more tasks: {busy} run on {len(load)} "
                                f"nodes and each takes at most {limit} ([control] max_tasks_per_node)")
        run = Run(name, index, spec, [], sub=sub)
        for s, p in refs:
            t = f"{run.key}:{int(s)}:{int(p)}"
            run.tasks.append(t)
            run.assign[t] = Assignment(self._pick(load), 1)
        self.runs[run.key] = run
        self.latest[name] = run.key
        self._changed(index)
        return self._submitted(run)

    @staticmethod
    def _submitted(run: Run) -> dict[str, Any]:
        return {"name": run.name, "run": run.run, "key": run.key,
                "assign": {t: [a.node, a.epoch] for t, a in run.assign.items()}}

    def _stop(self, c: dict[str, Any], index: int) -> dict[str, Any]:
        name = str(c["name"])
        run = self.runs.get(self.latest.get(name, ""))
        if run is None:
            return refuse(UNKNOWN, f"no job named {name!r} (see `rainstorm jobs`)")
        if run.state == RUNNING:
            run.state, run.ended_at = STOPPED, _at(c)
            self._changed(index)
        return {"name": name, "run": run.run, "state": run.state}

    def _members(self, c: dict[str, Any], index: int) -> dict[str, Any]:
        alive = sorted({str(n) for n in c["alive"]})
        for n in set(self.alive) - set(alive):
            self.failed_at[n] = index
        self.alive = alive
        moved: list[list[Any]] = []      # [task, from, to, epoch]
        load = self._load()
        if load:
            live = set(self.alive)
            for run in self.runs.values():
                if run.state != RUNNING:
                    continue
                for t in run.tasks:
                    a = run.assign[t]
                    if a.node not in live:
                        run.assign[t] = Assignment(self._pick(load), a.epoch + 1, a.restarts + 1)
                        moved.append([t, a.node, run.assign[t].node, a.epoch + 1])
        self._changed(index)
        return {"moved": moved}

    def _hello(self, c: dict[str, Any], index: int) -> dict[str, Any]:
        node, boot = str(c["node"]), str(c["boot"])
        self.protos[node] = int(c.get("proto", 1))
        if self.boots.get(node) == boot:   # a retried hello of the same process
            return {"bumped": 0}
        self.boots[node] = boot
        n = 0
        for run in self.runs.values():
            if run.state != RUNNING:
                continue
            for t, a in run.assign.items():
                if a.node == node:
                    run.assign[t] = Assignment(node, a.epoch + 1, a.restarts + 1)
                    n += 1
        self._changed(index)
        return {"bumped": n}

    def _report(self, c: dict[str, Any], index: int) -> dict[str, Any]:
        key, task, epoch, status = str(c["run"]), str(c["task"]), int(c["epoch"]), str(c["status"])
        run = self.runs.get(key)
        if run is None or task not in run.assign or run.assign[task].epoch != epoch or run.state != RUNNING:
            return {"applied": False}        # stale, repeated, or the run is over
        if status == "done":
            if task in run.done:
                return {"applied": False}
            run.done.append(task)
            if len(run.done) == len(run.tasks):
                run.state, run.ended_at = FINISHED, _at(c)
        elif status == "failed":
            run.state, run.error, run.ended_at = FAILED, str(c.get("error") or "a task failed"), _at(c)
        elif status == "died":
            a = run.assign[task]
            node = a.node if a.node in self.alive else self._pick(self._load() or {a.node: 0})
            # a finished instance that died keeps its place in ``done``: its successor only serves marks
            run.assign[task] = Assignment(node, epoch + 1, a.restarts + 1)
        else:
            return refuse(MALFORMED, f"unknown task status {status!r}")
        self._changed(index)
        return {"applied": True}

    def _rm(self, c: dict[str, Any], index: int) -> dict[str, Any]:
        name, which, retention = str(c["name"]), c.get("run"), c.get("retention")
        runs = [r for r in self.runs.values() if r.name == name]
        if which is not None:
            runs = [r for r in runs if r.run == int(which)]
            if not runs:
                return refuse(UNKNOWN, f"job {name!r} has no run {int(which)} (see `rainstorm jobs`)")
        if not runs:
            return refuse(UNKNOWN, f"no job named {name!r} (never submitted, or already removed; "
                                   "see `rainstorm jobs`)")
        ended = [r for r in runs if r.state != RUNNING]
        kept = [r.run for r in runs if r.state == RUNNING]
        if not ended and retention is None:
            return refuse(STILL_RUNNING, f"job {name!r} run {kept[0]} is running; `rainstorm stop {name}` "
                                         "first, or wait for it to end")
        if retention is not None:   # the leader's sweep: only what was old enough at the entry's time
            at = float(c["at"])
            ended = [r for r in ended if r.ended_at is not None and r.ended_at + float(retention) <= at]
        changed = False
        for r in ended:
            if not r.removing:
                r.removing, changed = True, True
            if c.get("deadletters") and not r.rm_deadletters:
                r.rm_deadletters, changed = True, True
        if changed:
            self._changed(index)
        return {"name": name, "runs": [{"run": r.run, "key": r.key, "state": r.state, "files": len(run_files(r))}
                                       for r in ended], "kept": kept}

    def _drop(self, c: dict[str, Any], index: int) -> dict[str, Any]:
        key = str(c["run"])
        run = self.runs.get(key)
        if run is None or not run.removing:
            return {"dropped": False}     # dropped already (a retried entry), or never removed
        del self.runs[key]
        if self.latest.get(run.name) == key:
            rest = [r.key for r in self.runs.values() if r.name == run.name]
            if rest:
                self.latest[run.name] = max(rest, key=lambda k: self.runs[k].run)
            else:
                del self.latest[run.name]
        self._changed(index)
        return {"dropped": True, "name": run.name, "run": run.run, "key": key}

    # -- reads -----------------------------------------------------------------------------------
    def run_of(self, name: str) -> Run | None:
        return self.runs.get(self.latest.get(name, ""))

    def table(self) -> dict[str, Any]:
        """What workers pull: every run's state, spec and each task's node and epoch."""
        return {"version": self.version, "alive": self.alive, "failed_at": self.failed_at, "jobs": {
            r.key: {"spec": r.spec, "state": r.state, "done": list(r.done), "removing": r.removing,
                    "assign": {t: [a.node, a.epoch] for t, a in r.assign.items()}}
            for r in self.runs.values()}}

    def removing(self) -> list[Run]:
        """Runs whose rm is committed and whose files may still be there: the leader's to finish."""
        return [r for r in self.runs.values() if r.removing]

    def expired(self, now: float, retention: float) -> list[Run]:
        """Ended runs older than ``retention`` seconds at ``now``, not yet being removed."""
        return [r for r in self.runs.values() if r.state != RUNNING and not r.removing
                and r.ended_at is not None and r.ended_at + retention <= now]

    def tasks_on(self, node: str) -> int:
        return self._load().get(node, 0)

    # -- snapshots -------------------------------------------------------------------------------
    def to_doc(self) -> dict[str, Any]:
        return {"version": self.version, "alive": self.alive, "failed_at": self.failed_at, "boots": self.boots,
                "protos": self.protos, "latest": self.latest,
                "runs": [asdict(r) for r in self.runs.values()]}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Controller:
        core = cls()
        core.version = int(doc.get("version", 0))
        core.alive = list(doc.get("alive", []))
        core.failed_at = {str(k): int(v) for k, v in doc.get("failed_at", {}).items()}
        core.boots = dict(doc.get("boots", {}))
        core.protos = {str(n): int(v) for n, v in doc.get("protos", {}).items()}
        core.latest = dict(doc.get("latest", {}))
        for r in doc.get("runs", []):
            run = Run(r["name"], int(r["run"]), r["spec"], list(r["tasks"]), state=r["state"], done=list(r["done"]),
                      error=r.get("error"), sub=r.get("sub", ""), ended_at=r.get("ended_at"),
                      removing=bool(r.get("removing", False)), rm_deadletters=bool(r.get("rm_deadletters", False)))
            run.assign = {t: Assignment(**a) for t, a in r["assign"].items()}
            core.runs[run.key] = run
        return core

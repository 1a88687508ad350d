"""What a worker decides, without I/O: which task instances to start and stop, and what to report.

The asyncio :class:`rainstorm.worker.Worker` and the whole-system simulator drive this same core, so
the rules below are exercised under simulated crashes, partitions and message loss:

- nothing runs before the controller acknowledged this process's ``hello`` (which gave the tasks a
  previous process of this node ran new epochs);
- an instance runs where and at the epoch the table says; any other instance is stopped;
- a (task, epoch) is launched at most once per process: an instance that ended is never restarted
  under its epoch (its HyDFS idempotency keys would collide with its own earlier appends); it is
  reported, and the controller hands out the next epoch;
- every report is kept until the controller acknowledged it or the table moved on without it;
- the Redis keys of a task go once no instance of it will run here again: when its run ends, or when
  it moved to another node (only keys no newer instance owns); and every key of a run being removed
  (``rainstorm rm``, retention) or gone from the table goes, whatever ran here. A new process first
  sweeps what an earlier one left (:meth:`WorkerCore.stale`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from rainstorm.controller import PROTO
from rainstorm.stream.plan import TaskRef

Key = tuple[str, TaskRef]        # (run key, task)


@dataclass(frozen=True)
class Launch:
    run: str
    ref: TaskRef
    epoch: int


@dataclass
class Decisions:
    stop: list[Key]              # instances to stop (their epoch or node changed, or the run ended)
    forget: list[Key]            # tasks that ran here, of runs that ended or moved away: their Redis keys go
    launch: list[Launch]
    drop_plans: list[str]        # runs no longer running: their loaded plans go
    preload: list[str]           # running runs whose plan this node should load ahead
    # a moved task's keys stay if an instance of this epoch or later owns them (it moved back meanwhile)
    keep_from: dict[Key, int] = field(default_factory=dict)
    purge: list[str] = field(default_factory=list)   # runs removed or being removed: all their keys go


def task_name(run: str, ref: TaskRef) -> str:
    return f"{run}:{ref[0]}:{ref[1]}"


def parse_task(name: str) -> tuple[str, TaskRef]:
    run, s, p = name.rsplit(":", 2)
    return run, (int(s), int(p))


class WorkerCore:
    def __init__(self, node_id: str, boot: str) -> None:
        self.node_id = node_id
        self.boot = boot
        self.greeted = False
        self.table: dict[str, Any] = {"version": -1, "jobs": {}}
        self.running: dict[Key, int] = {}            # instances alive here: epoch
        self.launched: set[tuple[str, TaskRef, int]] = set()
        self.plans: set[str] = set()                 # runs whose plan is loaded (or loading)
        self.finished: set[tuple[str, TaskRef, int]] = set()   # instances whose "done" is reported
        self.hosted: set[Key] = set()                # tasks that ran here in a run not yet ended (any epoch)
        self.reports: dict[tuple[str, str, int, str], dict[str, Any]] = {}
        self.purging: set[str] = set()               # runs whose keys are being deleted
        self.purged: set[str] = set()                # ... and deleted (acknowledged in table polls)
        self.unpurged: set[str] = set()              # runs whose key deletion failed: decided again

    # -- hello -----------------------------------------------------------------------------------
    def hello(self) -> dict[str, Any]:
        return {"node": self.node_id, "boot": self.boot, "proto": PROTO}

    def on_hello_acked(self) -> None:
        self.greeted = True

    # -- the table -------------------------------------------------------------------------------
    def on_table(self, table: dict[str, Any]) -> Decisions:
        # runs listed before: one missing from a newer table was removed (an older table, from a deposed
        # leader in its last moments, proves nothing)
        prev = set(self.table["jobs"]) if table["version"] > self.table["version"] else set()
        self.table = table
        want: dict[Key, int] = {}
        running_runs = set()
        for run, j in table["jobs"].items():
            if j["state"] != "running":
                continue
            running_runs.add(run)
            for tname, (node, epoch) in j["assign"].items():
                # a finished instance stays until the whole run ends: its producers still need its
                # answers (committed marks) to finish themselves
                if node == self.node_id:
                    want[(run, parse_task(tname)[1])] = int(epoch)
        d = Decisions([], [], [], [], [])
        for key, epoch in list(self.running.items()):
            if want.get(key) != epoch:
                d.stop.append(key)
                del self.running[key]
        # every task that ran here, alive or not, leaves Redis keys: they go when its run ends, whatever
        # became of the instance, or as soon as the task is placed on another node (a new epoch there)
        for k in sorted(self.hosted):
            if k[0] not in running_runs:
                d.forget.append(k)
            elif k not in want:
                node, epoch = table["jobs"][k[0]]["assign"].get(task_name(*k), [None, 0])
                if node != self.node_id:
                    d.forget.append(k)
                    d.keep_from[k] = int(epoch)
        self.hosted -= set(d.forget)
        # a run being removed, or gone from the table (removed while this node did not look): every
        # key of it goes, also those of tasks an earlier process of this node ran
        listed = set(table["jobs"])
        gone = {r for r, j in table["jobs"].items() if j.get("removing")} | (prev - listed) | self.unpurged
        gone -= running_runs
        d.purge = sorted(gone - self.purging - self.purged)
        self.purging |= set(d.purge)
        self.unpurged -= set(d.purge)
        self.purged &= listed
        for key, epoch in want.items():
            if key not in self.running and (*key, epoch) not in self.launched:
                self.launched.add((*key, epoch))
                d.launch.append(Launch(key[0], key[1], epoch))
        self.launched = {x for x in self.launched if x[0] in running_runs}
        self.finished = {x for x in self.finished if x[0] in running_runs}
        keep = running_runs | {k[0] for k in self.running}
        d.drop_plans = sorted(self.plans - keep)
        self.plans &= keep
        d.preload = sorted(running_runs - self.plans)
        self.plans |= running_runs
        return d

    def on_purged(self, run: str, ok: bool) -> None:
        """The keys of a removed run are deleted (``ok``), or not: then the next table decides again."""
        self.purging.discard(run)
        (self.purged if ok else self.unpurged).add(run)

    def cleaned(self) -> list[str]:
        """Runs being removed whose keys this node deleted: the leader waits for these (table polls)."""
        return sorted(self.purged & set(self.table["jobs"]))

    def stale(self, tasks: Iterable[str]) -> dict[str, int | None]:
        """Of the tasks that have keys in this node's Redis, those whose keys should go (a new process
        sweeps what an earlier one left), each with the lowest epoch whose keys stay (None: all go)."""
        out: dict[str, int | None] = {}
        for name in tasks:
            try:
                run, ref = parse_task(name)
            except ValueError:
                continue        # not a task's key: not ours to delete
            j = self.table["jobs"].get(run)
            if j is None or j["state"] != "running" or j.get("removing"):
                out[name] = None
            elif (run, ref) not in self.running and (run, ref) not in self.hosted:
                node, epoch = j["assign"].get(name, [None, 0])
                if node != self.node_id:
                    out[name] = int(epoch) if node is not None else None
        return out

    def wanted(self, run: str, ref: TaskRef, epoch: int) -> bool:
        """The table still runs this instance here (a launch still due; a report about it not moot)."""
        j = self.table["jobs"].get(run)
        return (j is not None and j["state"] == "running"
                and j["assign"].get(task_name(run, ref), [None, -1]) == [self.node_id, epoch])

    def started(self, run: str, ref: TaskRef, epoch: int) -> bool:
        """A launch got its plan: run it unless the table moved on meanwhile."""
        if not self.wanted(run, ref, epoch) or (run, ref) in self.running:
            return False
        self.running[(run, ref)] = epoch
        self.hosted.add((run, ref))
        return True

    def ended(self, run: str, ref: TaskRef, epoch: int) -> None:
        if self.running.get((run, ref)) == epoch:
            del self.running[(run, ref)]

    def after_step(self, run: str, ref: TaskRef, epoch: int, done: bool, alive: bool, why: str = "",
                   stats: Callable[[], dict[str, Any]] | None = None) -> str | None:
        """What an instance's state after a step means: ``done`` is reported once; a dead instance,
        whatever killed it, is no longer running here and is reported ``died`` (a fenced zombie's
        report names a stale epoch and changes nothing). Returns the status reported, if any."""
        key = (run, ref, epoch)
        if not alive:
            self.ended(run, ref, epoch)
            self.finished.discard(key)
            self.report(run, ref, epoch, "died", why)
            return "died"
        if done and key not in self.finished:
            self.finished.add(key)
            self.report(run, ref, epoch, "done", None, stats() if stats else None)   # final counters
            return "done"
        return None

    # -- reports ---------------------------------------------------------------------------------
    def report(self, run: str, ref: TaskRef, epoch: int, status: str, error: str | None = None,
               stats: dict[str, Any] | None = None) -> None:
        args = {"run": run, "task": task_name(run, ref), "epoch": epoch, "status": status, "error": error,
                "stats": stats}
        self.reports[(run, task_name(run, ref), epoch, status)] = args

    def due_reports(self) -> list[dict[str, Any]]:
        """Reports to send (again): unacknowledged ones whose instance the table still names."""
        out = []
        for key, args in list(self.reports.items()):
            run, task, epoch, _ = key
            j = self.table["jobs"].get(run)
            # moot once the run ended or the task moved to another epoch (the controller has it)
            if j is None or j["state"] != "running" or j["assign"].get(task, [None, -1])[1] != epoch:
                del self.reports[key]
            else:
                out.append(args)
        return out

    def on_report_acked(self, args: dict[str, Any]) -> None:
        self.reports.pop((args["run"], args["task"], args["epoch"], args["status"]), None)

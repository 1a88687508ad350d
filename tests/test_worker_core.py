"""The worker's decisions without I/O (rainstorm/worker_core.py): what a table change makes a node
stop, launch and forget."""

from __future__ import annotations

from typing import Any

from rainstorm.worker_core import WorkerCore

RUN = "j@1"


def table(version: int, state: str, assign: dict[str, list[Any]]) -> dict[str, Any]:
    return {"version": version, "jobs": {RUN: {"state": state, "done": [], "spec": {}, "assign": assign}}}


def test_a_task_that_died_here_and_moved_away_has_its_keys_forgotten_at_once() -> None:
    # CI saw a finished run leave Redis keys behind: only instances still running here at the end
    # were forgotten, not one that had run here, died, and been placed on another node. Now a task
    # placed elsewhere leaves this node's Redis as soon as the table says so, not at the run's end.
    core = WorkerCore("node-1", "boot")
    d = core.on_table(table(1, "running", {f"{RUN}:0:0": ["node-1", 1], f"{RUN}:1:0": ["node-1", 2]}))
    assert sorted(x.ref for x in d.launch) == [(0, 0), (1, 0)]
    assert core.started(RUN, (0, 0), 1) and core.started(RUN, (1, 0), 2)
    assert core.after_step(RUN, (0, 0), 1, done=False, alive=False, why="fenced") == "died"
    d = core.on_table(table(2, "running", {f"{RUN}:0:0": ["node-2", 3], f"{RUN}:1:0": ["node-1", 2]}))
    assert d.launch == [] and d.forget == [(RUN, (0, 0))]   # moved: its keys go while the run goes on
    assert d.keep_from == {(RUN, (0, 0)): 3}       # ... unless an instance of epoch 3+ owns them by then
    d = core.on_table(table(3, "done", {f"{RUN}:0:0": ["node-2", 3], f"{RUN}:1:0": ["node-1", 2]}))
    assert d.stop == [(RUN, (1, 0))]
    assert d.forget == [(RUN, (1, 0))] and d.keep_from == {}    # the run ended: all of them, at once
    assert core.on_table(table(4, "done", {})).forget == []   # once


def test_a_running_task_moved_by_a_failure_is_stopped_and_forgotten_a_relaunch_here_is_not() -> None:
    core = WorkerCore("node-1", "boot")
    core.on_table(table(1, "running", {f"{RUN}:0:0": ["node-1", 1], f"{RUN}:0:1": ["node-1", 1]}))
    assert core.started(RUN, (0, 0), 1) and core.started(RUN, (0, 1), 1)
    # node-1 was suspected: 0:0 moved to node-2; 0:1 got a new epoch on this node (hello after a restart)
    d = core.on_table(table(2, "running", {f"{RUN}:0:0": ["node-2", 2], f"{RUN}:0:1": ["node-1", 2]}))
    assert sorted(d.stop) == [(RUN, (0, 0)), (RUN, (0, 1))]
    assert d.forget == [(RUN, (0, 0))] and d.keep_from == {(RUN, (0, 0)): 2}
    assert [(x.ref, x.epoch) for x in d.launch] == [((0, 1), 2)]
    # it moves back here later: a new instance, hosted again, nothing forgotten meanwhile
    d = core.on_table(table(3, "running", {f"{RUN}:0:0": ["node-1", 3], f"{RUN}:0:1": ["node-1", 2]}))
    assert d.forget == [] and core.started(RUN, (0, 0), 3)
    assert core.on_table(table(4, "running", {f"{RUN}:0:0": ["node-1", 3], f"{RUN}:0:1": ["node-1", 2]})).forget == []


def test_a_removed_run_is_purged_once_and_acknowledged() -> None:
    core = WorkerCore("node-1", "boot")
    core.on_table(table(1, "running", {f"{RUN}:0:0": ["node-2", 1]}))      # nothing of it ran here
    d = core.on_table(table(2, "done", {f"{RUN}:0:0": ["node-2", 1]}))
    assert d.forget == [] and d.purge == []
    removing = table(3, "done", {f"{RUN}:0:0": ["node-2", 1]})
    removing["jobs"][RUN]["removing"] = True
    d = core.on_table(removing)
    assert d.purge == [RUN] and core.cleaned() == []        # all its keys go, whatever process made them
    assert core.on_table({**removing, "version": 4}).purge == []   # being done: not twice
    core.on_purged(RUN, False)                             # Redis refused: the next table decides again
    assert core.on_table({**removing, "version": 5}).purge == [RUN]
    core.on_purged(RUN, True)
    assert core.cleaned() == [RUN]                          # the leader hears it with the next poll
    assert core.on_table({"version": 6, "jobs": {}}).purge == [] and core.cleaned() == []


def test_a_run_gone_from_a_newer_table_is_purged_an_older_table_proves_nothing() -> None:
    core = WorkerCore("node-1", "boot")
    core.on_table(table(5, "done", {f"{RUN}:0:0": ["node-1", 1]}))
    assert core.on_table({"version": 4, "jobs": {}}).purge == []     # a deposed leader's older table
    core.on_table(table(6, "done", {f"{RUN}:0:0": ["node-1", 1]}))
    assert core.on_table({"version": 7, "jobs": {}}).purge == [RUN]   # dropped while this node looked away


def test_a_new_process_sweeps_what_an_earlier_one_left() -> None:
    core = WorkerCore("node-1", "boot")
    jobs = table(9, "running", {f"{RUN}:0:0": ["node-1", 4], f"{RUN}:0:1": ["node-3", 5]})
    jobs["jobs"]["old@2"] = {"state": "finished", "done": [], "spec": {}, "assign": {"old@2:0:0": ["node-1", 1]}}
    core.on_table(jobs)
    found = [f"{RUN}:0:0", f"{RUN}:0:1", "old@2:0:0", "gone@1:0:0", "not-a-task"]
    # assigned here: kept (the new instance reopens them); moved away while the node was down: below
    # the epoch it runs at elsewhere; an ended or removed run: all
    assert core.stale(found) == {f"{RUN}:0:1": 5, "old@2:0:0": None, "gone@1:0:0": None}


def test_a_launch_the_table_withdrew_before_it_started_leaves_nothing_to_forget() -> None:
    core = WorkerCore("node-1", "boot")
    core.on_table(table(1, "running", {f"{RUN}:0:0": ["node-1", 1]}))
    core.on_table(table(2, "running", {f"{RUN}:0:0": ["node-2", 2]}))
    assert not core.started(RUN, (0, 0), 1)
    assert core.on_table(table(3, "done", {})).forget == []

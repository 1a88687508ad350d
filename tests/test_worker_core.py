"""The worker's decisions without I/O (rainstorm/worker_core.py): what a table change makes a node
stop, launch and forget."""

from __future__ import annotations

from typing import Any

from rainstorm.worker_core import WorkerCore

RUN = "j@1"


def table(version: int, state: str, assign: dict[str, list[Any]]) -> dict[str, Any]:
    return {"version": version, "jobs": {RUN: {"state": state, "done": [], "spec": {}, "assign": assign}}}


def test_a_task_that_died_here_and_moved_away_has_its_keys_forgotten_when_the_run_ends() -> None:
    # CI saw a finished run leave Redis keys behind: only instances still running here at the end
    # were forgotten, not one that had run here, died, and been placed on another node
    core = WorkerCore("node-1", "boot")
    d = core.on_table(table(1, "running", {f"{RUN}:0:0": ["node-1", 1], f"{RUN}:1:0": ["node-1", 2]}))
    assert sorted(x.ref for x in d.launch) == [(0, 0), (1, 0)]
    assert core.started(RUN, (0, 0), 1) and core.started(RUN, (1, 0), 2)
    assert core.after_step(RUN, (0, 0), 1, done=False, alive=False, why="fenced") == "died"
    d = core.on_table(table(2, "running", {f"{RUN}:0:0": ["node-2", 3], f"{RUN}:1:0": ["node-1", 2]}))
    assert d.launch == [] and d.forget == []          # the run goes on: nothing is forgotten yet
    d = core.on_table(table(3, "done", {f"{RUN}:0:0": ["node-2", 3], f"{RUN}:1:0": ["node-1", 2]}))
    assert d.stop == [(RUN, (1, 0))]
    assert d.forget == [(RUN, (0, 0)), (RUN, (1, 0))]
    assert core.on_table(table(4, "done", {})).forget == []   # once


def test_a_launch_the_table_withdrew_before_it_started_leaves_nothing_to_forget() -> None:
    core = WorkerCore("node-1", "boot")
    core.on_table(table(1, "running", {f"{RUN}:0:0": ["node-1", 1]}))
    core.on_table(table(2, "running", {f"{RUN}:0:0": ["node-2", 2]}))
    assert not core.started(RUN, (0, 0), 1)
    assert core.on_table(table(3, "done", {})).forget == []

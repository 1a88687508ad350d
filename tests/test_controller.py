"""The controller's state machine on its own: placement, epochs, runs, reports, admission."""

from __future__ import annotations

from typing import Any

from rainstorm.controller import EXISTS, FAILED, FINISHED, FULL, RUNNING, STOPPED, UNKNOWN, Controller

REFS = [[s, p] for s in range(2) for p in range(3)]
NODES = [f"node-{i}" for i in range(1, 6)]


class Log:
    """Commands applied at increasing indexes, as the Raft log would."""

    def __init__(self, nodes: list[str] = NODES) -> None:
        self.c = Controller()
        self.index = 0
        self("members", alive=nodes)

    def __call__(self, op: str, **kw: Any) -> Any:
        self.index += 1
        return self.c.apply({"op": op, **kw}, self.index)

    def submit(self, name: str = "j", refs: list[list[int]] = REFS, limit: int = 32, sub: str = "") -> Any:
        return self("submit", name=name, spec={"src": "s"}, tasks=refs, limit=limit, sub=sub)


def test_places_evenly_on_live_nodes_at_epoch_one() -> None:
    log = Log()
    out = log.submit()
    assign = out["assign"]
    assert out["key"] == f"j@{out['run']}" and all(t.startswith(out["key"] + ":") for t in assign)
    counts = sorted([n for n, _ in assign.values()].count(n) for n in NODES)
    assert counts == [1, 1, 1, 1, 2] and {e for _, e in assign.values()} == {1}


def test_failure_moves_every_task_of_the_dead_node_finished_ones_too() -> None:
    log = Log()
    run = log.c.runs[log.submit()["key"]]
    victims = {t for t, a in run.assign.items() if a.node == "node-2"}
    finished = next(iter(victims))
    assert log("report", run=run.key, task=finished, epoch=1, status="done") == {"applied": True}
    out = log("members", alive=[n for n in NODES if n != "node-2"])
    assert {m[0] for m in out["moved"]} == victims and all(m[1] == "node-2" for m in out["moved"])
    for t in victims:   # hole 4: a finished task's producers still need its marks
        assert run.assign[t].node != "node-2" and run.assign[t].epoch == 2 and run.assign[t].restarts == 1
    assert finished in run.done and run.state == RUNNING


def test_every_death_gets_a_new_epoch_and_stale_reports_change_nothing() -> None:
    log = Log()
    run = log.c.runs[log.submit()["key"]]
    t = run.tasks[0]
    node = run.assign[t].node
    assert log("report", run=run.key, task=t, epoch=1, status="died", error="fenced") == {"applied": True}
    assert run.assign[t].epoch == 2 and run.assign[t].node == node
    v = log.c.version
    # the same report again (a retry whose answer was lost), and a zombie's: nothing moves
    assert log("report", run=run.key, task=t, epoch=1, status="died") == {"applied": False}
    assert run.assign[t].epoch == 2 and log.c.version == v


def test_hello_bumps_once_per_process() -> None:
    log = Log()
    run = log.c.runs[log.submit()["key"]]
    on3 = {t for t, a in run.assign.items() if a.node == "node-3"}
    assert log("hello", node="node-3", boot="b1") == {"bumped": len(on3)}
    assert log("hello", node="node-3", boot="b1") == {"bumped": 0}      # retried
    assert log("hello", node="node-3", boot="b2") == {"bumped": len(on3)}  # restarted process
    assert all(run.assign[t].epoch == 3 for t in on3)


def test_runs_finish_fail_and_a_name_runs_again_with_new_task_names() -> None:
    log = Log()
    first = log.submit(refs=REFS[:2])
    assert log.submit(refs=REFS[:2]) == {"error": EXISTS, "message": log.submit(refs=REFS[:2])["message"]}
    run = log.c.runs[first["key"]]
    for t in run.tasks:
        log("report", run=run.key, task=t, epoch=1, status="done")
    assert run.state == FINISHED
    second = log.submit(refs=REFS[:2])           # hole 3: a new run, its own names (logs, Redis keys)
    assert second["run"] != first["run"] and set(second["assign"]).isdisjoint(first["assign"])
    assert {e for _, e in second["assign"].values()} == {1}
    r2 = log.c.runs[second["key"]]
    log("report", run=r2.key, task=r2.tasks[0], epoch=1, status="failed", error="bad")
    assert r2.state == FAILED and r2.error == "bad" and log.c.run_of("j") is r2


def test_a_retried_submit_is_answered_not_run_twice() -> None:
    log = Log()
    a = log.submit(sub="x")
    b = log.submit(sub="x")
    assert a == b and len(log.c.runs) == 1


def test_admission_refuses_past_the_per_node_limit() -> None:
    log = Log(NODES[:2])
    assert log.submit(refs=[[0, p] for p in range(4)], limit=2)["key"]
    out = log.submit(name="k", refs=[[0, 0]], limit=2)
    assert out["error"] == FULL and "max_tasks_per_node" in out["message"]


def test_stop_and_unknown_and_malformed() -> None:
    log = Log()
    log.submit()
    assert log("stop", name="j")["state"] == STOPPED
    assert log("stop", name="nope")["error"] == UNKNOWN
    assert log.c.apply({"op": "submit", "name": "x"}, 99)["error"] == "malformed"
    assert log.c.apply("garbage", 100)["error"] == "malformed"


def test_snapshot_round_trip() -> None:
    log = Log()
    out = log.submit(sub="s")
    log("hello", node="node-1", boot="b")
    doc = log.c.to_doc()
    again = Controller.from_doc(doc)
    assert again.to_doc() == doc and again.table() == log.c.table()
    assert again.apply({"op": "submit", "name": "j", "spec": {}, "tasks": REFS, "limit": 32, "sub": "s"}, 50) \
        == Controller._submitted(again.runs[out["key"]])

import pytest

from rainstorm.leader_core import FAILED, FINISHED, RUNNING, STOPPED, LeaderCore, LeaderError

TASKS = [f"j:{s}:{p}" for s in range(2) for p in range(3)]


def _leader(nodes: int = 5) -> LeaderCore:
    core = LeaderCore("node-1")
    core.on_membership([f"node-{i}" for i in range(1, nodes + 1)])
    return core


def test_places_evenly_off_the_leader() -> None:
    core = _leader()
    job = core.submit("j", {"src": "s"}, TASKS)
    nodes = [a.node for a in job.assign.values()]
    assert "node-1" not in nodes
    assert sorted(nodes.count(n) for n in set(nodes)) in ([1, 1, 2, 2], [1, 1, 1, 1, 2])
    assert all(a.epoch == 1 for a in job.assign.values())


def test_failure_moves_tasks_with_higher_epoch() -> None:
    core = _leader()
    job = core.submit("j", {}, TASKS)
    victims = {t for t, a in job.assign.items() if a.node == "node-2"}
    v0 = core.version
    moved = core.on_membership(["node-1", "node-3", "node-4", "node-5"])
    assert {m.task for m in moved} == victims and core.version > v0
    for t in victims:
        a = job.assign[t]
        assert a.node not in ("node-1", "node-2") and a.epoch == 2 and a.restarts == 1
    # two nodes at once, adjacent stages included: everything still lands on live workers
    core.on_membership(["node-1", "node-5"])
    assert {a.node for a in job.assign.values()} == {"node-5"}


def test_only_leader_left_runs_there() -> None:
    core = _leader(2)
    job = core.submit("j", {}, TASKS[:2])
    core.on_membership(["node-1"])
    assert {a.node for a in job.assign.values()} == {"node-1"}


def test_reports_finish_fail_and_ignore_stale_epochs() -> None:
    core = _leader()
    job = core.submit("j", {}, TASKS[:2])
    t0, t1 = TASKS[:2]
    assert not core.report("j", t0, 99, "done")          # not the current instance
    assert core.report("j", t0, 1, "done") and job.state == RUNNING
    assert core.report("j", t1, 1, "done") and job.state == FINISHED
    job2 = core.submit("k", {}, TASKS[:1])
    core.report("k", TASKS[0], 1, "failed", "boom")
    assert job2.state == FAILED and job2.error == "boom"


def test_stop_and_duplicate_names() -> None:
    core = _leader()
    core.submit("j", {}, TASKS)
    with pytest.raises(LeaderError, match="already running"):
        core.submit("j", {}, TASKS)
    assert core.stop("j").state == STOPPED
    again = core.submit("j", {}, TASKS)  # same name after stop: epochs continue above the old ones
    assert all(a.epoch == 2 for a in again.assign.values())
    with pytest.raises(LeaderError, match="no job named"):
        core.stop("nope")


def test_no_workers() -> None:
    core = LeaderCore("node-1")
    with pytest.raises(LeaderError, match="no live worker"):
        core.submit("j", {}, TASKS)


def test_document_roundtrip_keeps_epochs() -> None:
    core = _leader()
    core.submit("j", {"dest": "out"}, TASKS)
    core.on_membership(["node-1", "node-3", "node-4", "node-5"])
    again = LeaderCore.from_doc("node-1", core.to_doc())
    assert again.table()["jobs"] == core.table()["jobs"]
    assert again.version > core.version


def test_lost_instance_restarts_in_place_with_next_epoch() -> None:
    core = _leader()
    job = core.submit("j", {}, TASKS[:1])
    node = job.assign[TASKS[0]].node
    assert core.restart("j", TASKS[0], 1)
    assert job.assign[TASKS[0]].node == node and job.assign[TASKS[0]].epoch == 2
    assert not core.restart("j", TASKS[0], 1)  # a stale report changes nothing


def test_restarted_worker_process_gets_new_epochs() -> None:
    core = _leader()
    job = core.submit("j", {}, TASKS)
    node = job.assign[TASKS[0]].node
    mine = [t for t, a in job.assign.items() if a.node == node]
    core.report("j", mine[0], 1, "done")
    assert core.node_restarted(node) == len(mine)
    assert all(job.assign[t].epoch == 2 and job.assign[t].node == node for t in mine)
    assert mine[0] in job.done                          # finished stays finished

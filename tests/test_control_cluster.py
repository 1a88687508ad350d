"""The control plane on a real 5-node cluster: the controller's leader is SIGKILLed or SIGSTOPped
mid-job, a job name runs again, admission, and a wide job that must not trip the failure detector.

Jobs must end exactly as the failure-free reference (see tests/test_stream_cluster.py for the checks).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rainstorm import cluster as local
from rainstorm.errors import UserError
from tests.conftest import LocalCluster, wait_for
from tests.test_stream_cluster import _check, _job, _submit, _wait_done, cluster  # noqa: F401
from tests.test_stream_load import _gossip

pytestmark = pytest.mark.cluster


class Answers(threading.Thread):
    """Asks `rainstorm jobs` (through any node) every 0.2 s while a fault happens: every request must
    be answered (the bound is the front door's request_timeout), none may fail."""

    def __init__(self, c: LocalCluster) -> None:
        super().__init__(daemon=True)
        self.c, self.stop, self.errors, self.slowest, self.asked = c, threading.Event(), [], 0.0, 0

    def run(self) -> None:
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                self.c.control("jobs")
                self.asked += 1
            except Exception as exc:   # any failure to answer is what this thread counts
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self.slowest = max(self.slowest, time.monotonic() - t)
            time.sleep(0.2)


def _new_leader(c: LocalCluster, old: str, timeout: float = 20.0) -> str:
    found: list[str] = []

    def elected() -> bool:
        lead = c.leader()
        if lead and lead != old:
            found.append(lead)
            return True
        return False

    wait_for(elected, timeout, f"a controller leader other than {old}", step=0.1)
    return found[-1]


def test_sigkill_the_leader_mid_job_then_restart_it(cluster: LocalCluster) -> None:  # noqa: F811
    old = cluster.leader()
    assert old is not None
    answers = Answers(cluster)
    answers.start()
    for job in ("filter", "count"):
        _submit(cluster, job, f"lk-{job}")
    time.sleep(1.0)
    local.kill(cluster.dir, old)
    t0 = time.monotonic()
    new = _new_leader(cluster, old)
    took = time.monotonic() - t0
    for job in ("filter", "count"):
        _wait_done(cluster, f"{job}-lk-{job}")
        _check(cluster, job, f"lk-{job}")
    answers.stop.set()
    answers.join()
    assert not answers.errors, answers.errors
    assert answers.asked > 0
    print(f"new leader {new} {took:.2f}s after the kill; slowest answer {answers.slowest:.2f}s")
    # the old leader comes back as a follower: the runs stay finished, nothing runs on it
    local.restart(cluster.dir, old)
    cluster.reload()
    wait_for(lambda: cluster.call(old, "node.info")["controller"]["leader"] == new, 15, "the old leader to follow")
    time.sleep(2.0)
    info = cluster.call(old, "node.info")
    assert not info["controller"]["leading"] and info["tasks"] == 0
    assert all(j["state"] == "finished" for j in cluster.control("jobs"))


def test_sigkill_the_leader_and_a_worker_at_once(cluster: LocalCluster) -> None:  # noqa: F811
    old = cluster.leader()
    for job in ("filter", "count"):
        _submit(cluster, job, f"lw-{job}")
    time.sleep(1.0)
    worker = next(t["node"] for t in _job(cluster, "count-lw-count")["tasks"] if t["node"] != old)
    local.kill(cluster.dir, old)
    local.kill(cluster.dir, worker)
    for job in ("filter", "count"):
        _wait_done(cluster, f"{job}-lw-{job}")
        _check(cluster, job, f"lw-{job}")


def test_sigstop_the_leader_it_must_not_act_once_woken(cluster: LocalCluster) -> None:  # noqa: F811
    old = cluster.leader()
    assert old is not None
    pid = cluster.node(old)["pid"]
    for job in ("filter", "count"):
        _submit(cluster, job, f"ls-{job}")
    time.sleep(1.0)
    os.kill(pid, signal.SIGSTOP)
    try:
        _new_leader(cluster, old)
        time.sleep(10.0 - 1.0)
    finally:
        os.kill(pid, signal.SIGCONT)
    # woken: its lease ran out while it slept, so it serves nothing itself (requests it gets are
    # forwarded to the new leader) and it learns the new term at the next message
    info = cluster.call(old, "node.info")
    assert not info["controller"]["leading"], info["controller"]
    assert any(j["name"] == "filter-ls-filter" for j in cluster.control("jobs"))   # the new leader answers
    wait_for(lambda: cluster.call(old, "node.info")["controller"]["leader"] not in (None, old), 10,
             "the old leader to follow")
    for job in ("filter", "count"):
        _wait_done(cluster, f"{job}-ls-{job}")
        _check(cluster, job, f"ls-{job}")


def test_a_finished_jobs_name_runs_again_with_another_dest(cluster: LocalCluster) -> None:  # noqa: F811
    from cli import submit_job

    for dest in ("again-1", "again-2"):
        submit_job(cluster.jobs / "count.py", "signs", dest, 2 if dest == "again-1" else 3, "again", {}, None,
                   None, cluster.dir)
        _wait_done(cluster, "again")
        _check(cluster, "count", dest)
    runs = [j for j in cluster.control("jobs") if j["name"] == "again"]
    assert len(runs) == 2 and runs[0]["run"] != runs[1]["run"] and [j["latest"] for j in runs] == [False, True]
    assert {len(j["tasks"]) for j in runs} == {4, 6}


def test_admission_refuses_and_a_wide_job_trips_no_detector(cluster: LocalCluster) -> None:  # noqa: F811
    from cli import submit_job

    with pytest.raises(UserError, match=r"cannot take 2000 more tasks.*max_tasks_per_node"):
        submit_job(cluster.jobs / "count.py", "signs", "wide", 1000, "too-wide", {}, None, None, cluster.dir)
    assert not [j for j in cluster.control("jobs") if j["name"] == "too-wide"]
    before = _gossip(cluster)
    submit_job(cluster.jobs / "count.py", "signs", "wide", 40, "wide", {}, None, None, cluster.dir)
    assert len(_job(cluster, "wide")["tasks"]) == 80
    # while 80 tasks start and run, the front door answers (its latency: bench/control.py)
    assert any(len(j["tasks"]) == 80 for j in cluster.control("jobs"))
    _wait_done(cluster, "wide", timeout=120)
    _check(cluster, "count", "wide")
    after = _gossip(cluster)
    delta = {k: after[k] - before.get(k, 0) for k in after}
    # shown, and counted by bench/control.py: on 2 cores, 5 nodes starting 80 tasks at once delay some
    # probe acks past the 150 ms probe window (suspected, refuted within a period; docs/performance.md).
    # A member declared failed would be a false failure: tasks would move for nothing.
    print(f"gossip during the 80-task job: {delta}")
    assert delta["declared_failed"] == 0, delta


def test_every_node_answers_and_a_quorum_loss_says_why(make_cluster: Any, tmp_path: Path) -> None:
    c = make_cluster(4)                      # 3 voters (node-1..3) and node-4, which only forwards
    assert c.data["voters"] == ["node-1", "node-2", "node-3"]
    lead = c.leader()
    for n in c.data["nodes"]:   # any node, the non-voter included: served by the leader (forwarded)
        assert c.call(n["id"], "control.jobs") == []
    assert c.call("node-4", "node.info")["controller"]["leader"] == lead
    others = [v for v in c.data["voters"] if v != lead]
    local.kill(c.dir, others[0])
    local.kill(c.dir, others[1])
    time.sleep(3.0)   # the leader's lease (check-quorum: one election timeout) runs out
    # one voter of three left: no quorum; the request waits its bound, then one clear line
    t = time.monotonic()
    with pytest.raises(Exception, match="no controller leader within"):
        c.control("jobs", timeout=30.0)
    assert time.monotonic() - t < 25.0

"""`rainstorm rm` on a real 5-node cluster: a finished run's task logs, job file, Redis keys (on every
node, one that was down during the rm included) and controller record go; the output stays; a
running run is refused; a second rm says the job is gone. One line on stderr for each refusal."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from rainstorm import cluster as local
from rainstorm.redis_proc import redis_password
from tests.conftest import LocalCluster, run_cli, wait_for

pytestmark = pytest.mark.cluster

JOB = '''
from rainstorm import FilteredTransform

def keep(key, value):
    return "Stop" in value

stages = [FilteredTransform(keep)]
'''


def _redis(c: LocalCluster, node_id: str) -> redis.Redis:
    n = c.node(node_id)
    return redis.Redis(host="127.0.0.1", port=n["redis_port"], password=redis_password(c.data["secret"], node_id))


def _keys_of(c: LocalCluster, node_id: str, run: str) -> list[bytes]:
    return list(_redis(c, node_id).scan_iter(match=f"rs:{run}:*"))


def _cli(c: LocalCluster, *args: str) -> Any:
    return run_cli(*args, "--dir", str(c.dir), cwd=c.dir.parent)


def _jobs(c: LocalCluster) -> list[dict[str, Any]]:
    res = _cli(c, "jobs", "--json")
    assert res.returncode == 0, res.stderr
    return list(json.loads(res.stdout)["jobs"])


def _one_line(res: Any, needle: str) -> None:
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr


def test_rm_removes_a_finished_run_everywhere_and_keeps_the_output(make_cluster: Any, tmp_path: Path) -> None:
    c = make_cluster(5)
    src = tmp_path / "signs.csv"
    src.write_text("".join(f"{i},{'Stop' if i % 3 else 'Yield'},x\n" for i in range(3000)))
    (tmp_path / "stops.py").write_text(JOB)
    assert _cli(c, "dfs", "create", str(src), "signs").returncode == 0
    time.sleep(3)     # every replica vouches for its files `settle` s after joining
    res = _cli(c, "submit", str(tmp_path / "stops.py"), "--src", "signs", "--dest", "stops.out", "--tasks", "2")
    assert res.returncode == 0, res.stderr
    assert _cli(c, "wait", "stops", "--timeout", "60").returncode == 0
    [row] = [j for j in _jobs(c) if j["name"] == "stops"]
    run = f"stops@{row['run']}"
    logs = [f"rs/{run}/log/0.{p}" for p in range(2)]
    for name in logs:
        assert _cli(c, "dfs", "ls", name).returncode == 0
    # a node killed with its Redis still holding keys of the run (an earlier process left them: it died
    # before the run ended) and a live one with such leftovers: both must lose them
    for node in ("node-4", "node-5"):
        r = _redis(c, node)
        r.set(f"rs:{run}:0:1:owner", 1)
        r.zadd(f"rs:{run}:0:1:out:0", {b"b": 1})
        r.set("rs:other@1:0:0:owner", 1)           # another run's key: not ours to touch
    time.sleep(1.5)                                  # AOF: appendfsync everysec
    local.kill(c.dir, "node-5")
    wait_for(lambda: c.view("node-1")["node-5"]["state"] == "failed", 15, "node-5 to be declared failed")

    # a running run is refused, in one line
    slow = _cli(c, "submit", str(tmp_path / "stops.py"), "--src", "signs", "--dest", "slow.out", "--tasks", "1",
                "--name", "slow", "--rate", "50")
    assert slow.returncode == 0, slow.stderr
    _one_line(_cli(c, "rm", "slow"), "is running")
    _one_line(_cli(c, "rm", "nope"), "no job named 'nope'")

    res = _cli(c, "rm", "stops", "--json")
    assert res.returncode == 0, res.stderr
    [done] = json.loads(res.stdout)["runs"]
    assert done["key"] == run and done["of"] == 3 and done["files"] == 3        # 2 logs + the job file
    assert "node-5" not in done["nodes"] and {"node-1", "node-4"} <= set(done["nodes"])
    for name in logs:
        gone = _cli(c, "dfs", "ls", name)
        assert gone.returncode == 1 and "no such HyDFS file" in gone.stderr, gone.stderr
    assert [j for j in _jobs(c) if j["name"] == "stops"] == []
    for node in ("node-1", "node-2", "node-3", "node-4"):
        assert _keys_of(c, node, run) == [], node
    assert _redis(c, "node-4").exists("rs:other@1:0:0:owner")
    out = _cli(c, "dfs", "cat", "stops.out")                          # the user's output stays
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 2000

    # the node that was down comes back: its worker sees the run gone and deletes its keys
    local.restart(c.dir, "node-5")
    c.reload()
    wait_for(lambda: _keys_of(c, "node-5", run) == [], 20, "node-5 to delete the removed run's keys")
    assert not _redis(c, "node-5").exists("rs:other@1:0:0:owner")   # no such run in the table either
    _one_line(_cli(c, "rm", "stops"), "no job named 'stops' (never submitted, or already removed")
    assert _cli(c, "stop", "slow").returncode == 0


def test_a_task_moved_off_a_node_leaves_no_keys_there_while_the_run_goes_on(make_cluster: Any,
                                                                            tmp_path: Path) -> None:
    import os
    import signal

    c = make_cluster(5)
    src = tmp_path / "signs.csv"
    src.write_text("".join(f"{i},Stop,x\n" for i in range(3000)))
    (tmp_path / "stops.py").write_text(JOB)
    assert _cli(c, "dfs", "create", str(src), "signs").returncode == 0
    time.sleep(3)
    res = _cli(c, "submit", str(tmp_path / "stops.py"), "--src", "signs", "--dest", "slow.out", "--tasks", "3",
               "--name", "slow", "--rate", "25")           # 1000 lines a task at 25/s: 40 s
    assert res.returncode == 0, res.stderr
    leader = c.leader()
    job = next(j for j in c.control("jobs") if j["name"] == "slow")
    task = next(t for t in job["tasks"] if t["node"] != leader)
    victim, name = task["node"], task["task"]
    wait_for(lambda: _redis(c, victim).exists(f"rs:{name}:owner"), 15, f"{name} to open its inbox on {victim}")
    pid = c.node(victim)["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:   # declared failed: its tasks move (a new epoch elsewhere)
        wait_for(lambda: next(t for t in next(j for j in c.control("jobs") if j["name"] == "slow")["tasks"]
                              if t["task"] == name)["node"] != victim, 20, f"{name} to move off {victim}", step=0.3)
    finally:
        os.kill(pid, signal.SIGCONT)
    # the woken node stops its instance and, once its store calls ended, deletes the task's keys
    wait_for(lambda: list(_redis(c, victim).scan_iter(match=f"rs:{name}:*")) == [], 20,
             f"{victim} to delete the keys of {name}")
    assert next(j for j in c.control("jobs") if j["name"] == "slow")["state"] == "running"   # not at the run's end
    assert _cli(c, "stop", "slow").returncode == 0

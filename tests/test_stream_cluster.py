"""Jobs on a real 5-node cluster (real Redis, real processes) with failures injected mid-job.

After each failure the destination must equal the failure-free result (computed by the reference
run of the same job file) as a full multiset of lines, each count group's values must be exactly
1..n, and the dead-letter file must hold exactly what the operator raised on.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from hydfs.api import Client
from rainstorm import cluster as local
from rainstorm.locate import run_rpc
from rainstorm.stream.jobfile import load_job
from rainstorm.stream.reference import run_reference
from tests.conftest import LocalCluster, pid_alive, wait_for

pytestmark = pytest.mark.cluster

FILTER_JOB = '''
from rainstorm import FilteredTransform, args

def keep(key, value):
    return args.get("pattern", "Stop") in value

def project(key, value):
    f = value.split(",")
    return key, f"{f[2]},{f[3]}"      # rows with too few columns raise IndexError: dead letters

stages = [FilteredTransform(keep, project)]
'''

COUNT_JOB = '''
from rainstorm import AggregateByKey, FilteredTransform, args

def is_stop(key, value):
    return args.get("pattern", "Stop") in value

def sign_and_post(key, value):
    f = value.split(",")
    return key, f"{f[2]},{f[3]}"

stages = [
    FilteredTransform(is_stop, sign_and_post),
    AggregateByKey(lambda key, value: value.split(",")[1], "count"),
]
'''

LINES = 9000
RATE = 1000.0  # lines/s per source task: with 3 source tasks a job runs about 3 s, long enough to hit


def _data() -> list[str]:
    r = random.Random(7)
    rows = []
    for i in range(LINES):
        if i % 500 == 17:
            rows.append(f"{i},Stop,broken")          # too few columns
        else:
            rows.append(f"{i},{r.choice(['Stop', 'Yield', 'Speed Limit'])},{r.choice(['Wood', 'U-Channel', 'Round'])},"
                        f"{r.choice(['Regulatory', 'Warning', 'Guide'])},Main St")
    return rows


@pytest.fixture
def cluster(make_cluster, tmp_path: Path):  # type: ignore[no-untyped-def]
    return _prepare(make_cluster(5), tmp_path)


def _prepare(c: LocalCluster, tmp_path: Path) -> LocalCluster:
    rows = _data()
    c.rows = rows
    (tmp_path / "filter.py").write_text(FILTER_JOB)
    (tmp_path / "count.py").write_text(COUNT_JOB)
    c.jobs = tmp_path
    _dfs(c, lambda cl: cl.create("signs", ("\n".join(rows) + "\n").encode()))
    # every replica vouches for its files only `settle` s after joining: start jobs after that
    time.sleep(3)
    return c  # type: ignore[no-any-return]


def _dfs(c: LocalCluster, fn: Any) -> Any:
    async def body(rpc: Any) -> Any:
        cl = Client(rpc, [n["address"] for n in c.data["nodes"]])
        try:
            return await fn(cl)
        finally:
            await cl.close()

    return run_rpc(c.data["secret"], body)


def _control(c: LocalCluster, method: str, args: dict[str, Any] | None = None) -> Any:
    """Ask the controller through the first node that is up (any node forwards to the leader)."""
    return c.control(method, args)


def _submit(c: LocalCluster, job: str, dest: str) -> None:
    from cli import submit_job

    local_dir = c.dir
    submit_job(c.jobs / f"{job}.py", "signs", dest, 3, f"{job}-{dest}", {}, RATE, None, local_dir)


def _job(c: LocalCluster, name: str) -> dict[str, Any]:
    return next(j for j in _control(c, "jobs") if j["name"] == name and j["latest"])


def _wait_done(c: LocalCluster, name: str, timeout: float = 90) -> None:
    wait_for(lambda: _job(c, name)["state"] != "running", timeout, f"{name} to end", step=0.3)
    assert _job(c, name)["state"] == "finished", _job(c, name)


def _lines(c: LocalCluster, name: str) -> list[str]:
    async def get(cl: Client) -> bytes:
        try:
            return await cl.get(name)
        except Exception:
            return b""

    return _dfs(c, get).decode().splitlines()


def _check(c: LocalCluster, job: str, dest: str) -> None:
    stages = load_job((c.jobs / f"{job}.py").read_text(), {})
    want, want_dead = run_reference(stages, "signs", c.rows)
    got = _lines(c, dest)
    assert collections.Counter(got) == collections.Counter(x.decode() for x in want), f"{dest} differs"
    if job == "count":
        groups: dict[str, list[int]] = collections.defaultdict(list)
        for line in got:
            k, v = json.loads(line)
            groups[k].append(v)
        assert groups and all(sorted(v) == list(range(1, len(v) + 1)) for v in groups.values())
    dead = _lines(c, f"{dest}.deadletters")
    assert collections.Counter(dead) == collections.Counter(x.decode() for x in want_dead)
    if job == "filter":
        assert len(dead) == LINES // 500 + (1 if LINES % 500 > 17 else 0)


def _run_with(c: LocalCluster, tag: str, inject: Any) -> None:
    for job in ("filter", "count"):
        _submit(c, job, f"{tag}-{job}")
    time.sleep(1.0)  # mid-job
    inject()
    for job in ("filter", "count"):
        _wait_done(c, f"{job}-{tag}-{job}")
        _check(c, job, f"{tag}-{job}")


def _node_running(c: LocalCluster, job: str, stage: int, exclude: set[str] | None = None) -> str:
    """A node (not the controller's leader: these tests kill workers) that runs a task of ``stage``."""
    j = _job(c, job)
    leader = c.leader()
    for t in j["tasks"]:
        if t["stage"] == stage and t["node"] != leader and t["node"] not in (exclude or set()):
            return str(t["node"])
    raise AssertionError(f"no worker runs stage {stage} of {job}")


def test_failure_free(cluster: LocalCluster) -> None:
    import redis

    from rainstorm.redis_proc import redis_password

    _run_with(cluster, "clean", lambda: None)

    def leftovers() -> list[bytes]:  # a finished job leaves no Redis keys behind (its logs stay in HyDFS)
        out: list[bytes] = []
        for n in cluster.data["nodes"]:
            pw = redis_password(cluster.data["secret"], n["id"])
            r = redis.Redis(host="127.0.0.1", port=n["redis_port"], password=pw)
            out += r.keys("rs:*clean*")
            r.close()
        return out

    left: list[bytes] = []

    def clean() -> bool:
        left[:] = leftovers()
        return not left

    try:
        wait_for(clean, 10, "the finished jobs' Redis keys to be removed", step=0.3)
    except AssertionError as exc:   # name the keys: which task, which node's kind of key
        raise AssertionError(f"{exc}; left: {sorted(left)[:8]}") from None


def test_sigkill_one_worker(cluster: LocalCluster) -> None:
    _run_with(cluster, "kill1", lambda: local.kill(cluster.dir, _node_running(cluster, "count-kill1-count", 1)))
    assert sum(t["restarts"] for t in _job(cluster, "count-kill1-count")["tasks"]) >= 1


def test_snapshots_compact_the_logs_and_a_killed_task_rebuilds_from_one(make_cluster, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Real nodes snapshotting every 10 commits: the count task's node is SIGKILLed mid-job; the output
    is exact, the replacement read a snapshot and a short log, and the logs were trimmed in HyDFS."""
    every = 10
    toml = tmp_path / "rainstorm.toml"
    toml.write_text(f"[worker]\nsnapshot_every = {every}\n")
    monkeypatch.setenv("RAINSTORM_CONFIG", str(toml))     # the node processes inherit it
    c = _prepare(make_cluster(5), tmp_path)
    name = "count-snap-count"
    _submit(c, "count", "snap-count")
    wait_for(lambda: any(t["stage"] == 1 and t["snapshots"] >= 2 for t in _job(c, name)["tasks"]), 30,
             "a count task's second snapshot", step=0.2)
    victim = next(t for t in _job(c, name)["tasks"] if t["stage"] == 1 and t["snapshots"] >= 2
                  and t["node"] != c.leader())
    local.kill(c.dir, victim["node"])
    _wait_done(c, name)
    _check(c, "count", "snap-count")
    job = _job(c, name)
    again = next(t for t in job["tasks"] if t["task"] == victim["task"])
    assert again["reported_epoch"] > victim["epoch"], again
    # it started from a snapshot: what it read of the log is about one interval, not everything before
    assert 0 < again["rebuilt_records"] <= every + 8, again

    async def firsts(cl: Client) -> list[int]:
        out = []
        for t in job["tasks"]:
            _, stage, index = t["task"].rsplit(":", 2)
            out.append((await cl.ls(f"rs/{job['key']}/log/{stage}.{index}"))["first"])
        return out

    got = dict(zip([t["task"] for t in job["tasks"]], _dfs(c, firsts), strict=True))
    busy = [t["task"] for t in job["tasks"] if t["commits"] >= every]   # (a source task without blocks commits once)
    assert len(busy) >= 3 and all(got[t] > 1 for t in busy), got      # their logs were trimmed behind a snapshot


def test_sigkill_two_workers_adjacent_stages(cluster: LocalCluster) -> None:
    def inject() -> None:
        a = _node_running(cluster, "count-kill2-count", 1)
        b = _node_running(cluster, "count-kill2-count", 0, exclude={a})
        local.kill(cluster.dir, a)
        local.kill(cluster.dir, b)

    _run_with(cluster, "kill2", inject)


def test_node_process_dies_redis_lives(cluster: LocalCluster) -> None:
    def inject() -> None:
        victim = _node_running(cluster, "count-proc-count", 1)
        node = cluster.node(victim)
        os.kill(node["pid"], signal.SIGKILL)             # the node process only
        wait_for(lambda: not pid_alive(node["pid"]), 10, "the killed node process to be gone")
        redis_pid = int((Path(node["data"]) / "redis" / "redis.pid").read_text())
        assert pid_alive(redis_pid)                     # its Redis lives on
        local.restart(cluster.dir, victim)
        cluster.reload()
        assert cluster.call(victim, "node.info")["redis_pid"] == redis_pid   # adopted, not replaced

    _run_with(cluster, "proc", inject)


def test_redis_restart_alone(cluster: LocalCluster) -> None:
    def inject() -> None:
        victim = _node_running(cluster, "count-redis-count", 1)
        info = cluster.call(victim, "node.info")
        os.kill(info["redis_pid"], signal.SIGKILL)      # the node's supervisor restarts it

    _run_with(cluster, "redis", inject)


def test_sigstop_zombie(cluster: LocalCluster) -> None:
    def inject() -> None:
        victim = _node_running(cluster, "count-zombie-count", 1)
        pid = cluster.node(victim)["pid"]
        os.kill(pid, signal.SIGSTOP)
        try:
            # long enough to be declared failed and have its tasks replaced
            wait_for(lambda: all(t["node"] != victim for t in _job(cluster, "count-zombie-count")["tasks"]
                                 if not t["done"]), 20, "tasks moved off the stopped node", step=0.3)
        finally:
            os.kill(pid, signal.SIGCONT)                 # the zombie wakes: it must neither commit nor deliver

    _run_with(cluster, "zombie", inject)


def test_malformed_job_and_unknown_source(cluster: LocalCluster) -> None:
    from cli import submit_job
    from rainstorm.errors import UserError

    bad = cluster.jobs / "bad.py"
    bad.write_text("stages = [\n")
    with pytest.raises(UserError, match=r"bad\.py:1: syntax error"):
        submit_job(bad, "signs", "x", 3, None, {}, None, None, cluster.dir)
    with pytest.raises(UserError, match="unknown source file: nope"):
        submit_job(cluster.jobs / "filter.py", "nope", "x", 3, None, {}, None, None, cluster.dir)


def test_follow_reads_appended_lines_until_stopped(cluster: LocalCluster) -> None:
    from cli import submit_job

    more = [f"{LINES + i},Stop,Wood,Guide,Late St" for i in range(1, 301)]
    submit_job(cluster.jobs / "filter.py", "signs", "follow-out", 3, "follow", {}, None, None, cluster.dir,
               follow=True)
    first = [x.decode() for x in run_reference(load_job(FILTER_JOB, {}), "signs", cluster.rows)[0]]
    wait_for(lambda: collections.Counter(_lines(cluster, "follow-out")) == collections.Counter(first), 60,
             "the existing lines processed", step=0.5)
    assert _job(cluster, "follow")["state"] == "running"   # at the end of the file it waits, not finishes
    _dfs(cluster, lambda cl: cl.append("signs", ("\n".join(more) + "\n").encode()))
    want = [x.decode() for x in run_reference(load_job(FILTER_JOB, {}), "signs", cluster.rows + more)[0]]
    wait_for(lambda: collections.Counter(_lines(cluster, "follow-out")) == collections.Counter(want), 60,
             "the appended lines processed exactly once", step=0.5)
    assert _control(cluster, "stop", {"name": "follow"})["state"] == "stopped"

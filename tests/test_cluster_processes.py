"""Real node processes on 127.0.0.1, real redis-servers, real SIGKILL / SIGTERM."""

from __future__ import annotations

import collections
import os
import re
import signal
from pathlib import Path

import pytest
import redis

from rainstorm import cluster as local
from rainstorm.redis_proc import redis_password
from tests.conftest import LocalCluster, pid_alive, run_cli, wait_for

pytestmark = pytest.mark.cluster
DETECT_BOUND = 10.0  # generous for a loaded CI machine; docs/membership.md gives measured figures


def _all_see(c: LocalCluster, observers: list[str], node_id: str, state: str) -> bool:
    return all(c.view(o).get(node_id, {}).get("state") == state for o in observers)


def test_kill_leave_restart(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c = make_cluster(5)
    ids = [f"node-{i}" for i in range(1, 6)]
    for i in ids:
        view = c.view(i)
        assert sorted(view) == ids and all(m["state"] == "alive" for m in view.values())

    # a SIGKILLed node is marked failed by all 4 others
    killed = local.kill(c.dir, "node-3")
    assert killed == {"id": "node-3", "node_killed": True, "redis_killed": True}
    others = ["node-1", "node-2", "node-4", "node-5"]
    wait_for(lambda: _all_see(c, others, "node-3", "failed"), DETECT_BOUND, "node-3 failed everywhere")

    # a SIGTERMed node leaves gracefully: the others see "left", never "failed"
    os.kill(c.node("node-4")["pid"], signal.SIGTERM)
    rest = ["node-1", "node-2", "node-5"]
    wait_for(lambda: _all_see(c, rest, "node-4", "left"), DETECT_BOUND, "node-4 left everywhere")
    wait_for(lambda: not pid_alive(c.node("node-4")["pid"]), 10, "node-4 exit")

    # a restarted node is alive again everywhere, with a higher incarnation
    before = c.view("node-1")["node-3"]["incarnation"]
    local.restart(c.dir, "node-3")
    c.reload()
    wait_for(lambda: _all_see(c, [*rest, "node-3"], "node-3", "alive"), DETECT_BOUND, "node-3 alive again")
    assert c.view("node-1")["node-3"]["incarnation"] > before
    assert c.view("node-1")["node-4"]["state"] == "left"


def test_down_leaves_no_process(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c = make_cluster(3)
    pids = [n["pid"] for n in c.data["nodes"]] + [n["redis_pid"] for n in c.data["nodes"]]
    assert all(pid_alive(p) for p in pids)
    local.kill(c.dir, "node-2")  # killed nodes are cleaned up too
    c.down()
    wait_for(lambda: not any(pid_alive(p) for p in pids), 10, "every node and redis gone")
    assert not (c.dir / "cluster.json").exists()


def test_node_supervises_its_redis(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c = make_cluster(1)
    node = c.node("node-1")
    host = node["address"].split(":")[0]
    pw = redis_password(c.data["secret"], "node-1")
    r = redis.Redis(host=host, port=node["redis_port"], password=pw)
    r.set("k", "v")
    # the append-only file is rewritten from [node] redis_aof_rewrite_min on (8mb), not Redis's 64mb
    assert r.config_get("auto-aof-rewrite-min-size") == {"auto-aof-rewrite-min-size": str(8 << 20)}
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=host, port=node["redis_port"], password="wrong").ping()
    old = node["redis_pid"]
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: c.call("node-1", "node.info")["redis_pid"] not in (None, old), 15, "redis restarted")
    assert r.get("k") == b"v"  # AOF (everysec; the write was well over a second ago... or just fsynced)
    info = c.call("node-1", "node.info")
    assert info["redis_restarts"] == 1 and pid_alive(info["redis_pid"])




def test_cli_up_status_members_down(tmp_path: Path) -> None:
    cfg = tmp_path / "rainstorm.toml"
    from tests.conftest import free_base
    base = free_base(7)
    cfg.write_text(f"[cluster]\nbase_port = {base}\nredis_base_port = {base + 200}\n")
    up = run_cli("cluster", "up", "--nodes", "3", cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stderr
        assert "node-3" in up.stdout
        st = run_cli("cluster", "status", "--json", cwd=tmp_path)
        import json
        rows = json.loads(st.stdout)["nodes"]
        assert [r["state"] for r in rows] == ["up"] * 3
        assert all(r["membership"] == "alive" and r["redis_pid"] for r in rows)
        # 3 nodes: all three vote; one of them leads the controller, and every node reports that one
        assert all(r["roles"][-2:] == ["voter", "worker"] for r in rows)
        leaders = [r["id"] for r in rows if "leader" in r["roles"]]
        assert len(leaders) == 1 and {r["leader"] for r in rows} == set(leaders), rows
        human = run_cli("cluster", "status", cwd=tmp_path).stdout
        assert f"controller: leader {leaders[0]}, term " in human
        m = json.loads(run_cli("members", "--json", cwd=tmp_path).stdout)["members"]
        assert {r["id"] for r in m} == {"node-1", "node-2", "node-3"}
        assert set(m[0]) == {"id", "address", "state", "incarnation", "seconds", "ring_position"}
        rc = run_cli("redis-cli", "node-2", "PING", cwd=tmp_path)
        assert rc.stdout.strip() == "PONG", rc.stderr
    finally:
        down = run_cli("cluster", "down", cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    assert "stopped 3 nodes" in down.stdout


def test_demo_main_job(tmp_path: Path) -> None:
    from tests.conftest import free_base

    base = free_base(9)
    (tmp_path / "rainstorm.toml").write_text(f"[cluster]\nbase_port = {base}\nredis_base_port = {base + 200}\n")
    try:
        res = run_cli("demo", "--rows", "3000", cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert "signs on 'Punched" in res.stdout and "Try next:" in res.stdout
        # the count table's numbers are the true counts of the synthetic data
        from rainstorm.demo import sign_rows

        want = collections.Counter(r.split(",")[3] for r in sign_rows(3000) if "Punched Telespar" in r)
        for cat, n in want.items():
            assert re.search(rf"{cat}\s*│\s*{n}\s*│", res.stdout), (cat, n, res.stdout)
    finally:
        run_cli("cluster", "down", cwd=tmp_path)


def test_node_heap_reports_what_grew_and_trims(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """node.heap: object counts always; tracemalloc only once asked (``start``), then what grew since
    the baseline; ``trim`` hands free heap memory back. node.info carries the periodic trims' stats."""
    c = make_cluster(1)
    off = c.call("node-1", "node.heap", {"top": 3})
    assert off["traced"] is False and off["objects"] > 0 and len(off["types"]) == 3
    on = c.call("node-1", "node.heap", {"start": 4, "reset": True, "top": 3})
    assert on["traced"] is True and "current_mb" in on
    later = c.call("node-1", "node.heap", {"top": 3})
    assert later["traced"] is True and isinstance(later["grew"], list)
    assert all({"site", "kb", "count", "total_kb"} <= set(g) for g in later["grew"])
    assert c.call("node-1", "node.heap", {"stop": True})["traced"] is False
    trimmed = c.call("node-1", "node.heap", {"trim": True})
    assert trimmed["rss_after_mb"] > 0
    info = c.call("node-1", "node.info")
    assert info["malloc_trim"]["runs"] >= 1 and "tail_cache_mb" in info["hydfs"]

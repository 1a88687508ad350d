"""A local cluster on this machine: node processes in the background, described by cluster.json.

Processes are identified by pid *and* command line before any signal is sent, so a recycled pid
never gets a stray kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from net.rpc import RpcClient, Unreachable
from rainstorm.config import Config
from rainstorm.errors import UserError
from rainstorm.locate import read_cluster, run_rpc, write_cluster


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _is_ours(pid: int | None, marker: str) -> bool:
    """``marker`` is ``|``-separated parts that must all be in the process's command line."""
    if not pid:
        return False
    try:
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    cmd = _cmdline(pid) + " "
    return status != "Z" and all(w in cmd for w in marker.split("|"))


def _kill(pid: int | None, marker: str, sig: int = signal.SIGKILL) -> bool:
    if _is_ours(pid, marker):
        assert pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            return True
    return False


def _free(host: str, port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def _ports(host: str, start: int, count: int, taken: set[int]) -> list[int]:
    out: list[int] = []
    port = start
    while len(out) < count:
        if port > 65000:
            raise UserError(f"no free ports on {host} from {start}")
        if port not in taken and _free(host, port):
            out.append(port)
        port += 1
    return out


def _node_marker(node: dict[str, Any]) -> str:
    return f"--id {node['id']} "


def _redis_marker(node: dict[str, Any]) -> str:
    # redis-server rewrites its process title to "<binary> <host>:<port>"
    return f"redis-server|:{node['redis_port']} "


def _redis_pid(node: dict[str, Any]) -> int | None:
    """The node's redis pid from its pidfile (current even after the node restarted it)."""
    try:
        return int((Path(node["data"]) / "redis" / "redis.pid").read_text().strip())
    except (OSError, ValueError):
        return node.get("redis_pid")


def local_voters(ids: list[str], configured: list[str]) -> list[str]:
    """The controller's voters: the configured ones, or the first 1, 3 or 5 nodes (an odd number: an
    even one adds a node that must answer without adding a failure the quorum survives)."""
    if configured:
        return list(configured)
    n = min(5, len(ids))
    return ids[:n if n % 2 else n - 1]


def spawn(node: dict[str, Any], join: list[str], secret: str, voters: list[str]) -> int:
    cmd = [sys.executable, "-m", "rainstorm", "node", "start", "--id", node["id"], "--bind", node["address"],
           "--data", node["data"], "--redis-port", str(node["redis_port"]), "--voters", ",".join(voters)]
    if join:
        cmd += ["--join", ",".join(join)]
    log = open(node["log"], "ab")
    env = {**os.environ, "RAINSTORM_SECRET": secret}
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    log.close()
    return proc.pid


async def _info(client: RpcClient, addr: str, timeout: float = 1.0) -> dict[str, Any] | None:
    try:
        return await client.call(addr, "node.info", timeout=timeout)
    except (Unreachable, Exception):
        return None


async def _views(client: RpcClient, addrs: list[str]) -> dict[str, list[dict[str, Any]] | None]:
    async def one(a: str) -> list[dict[str, Any]] | None:
        try:
            return await client.call(a, "node.members", timeout=1.0)
        except Exception:
            return None

    res = await asyncio.gather(*(one(a) for a in addrs))
    return dict(zip(addrs, res, strict=True))


def wait_converged(cluster: dict[str, Any], expect_alive: set[str], timeout: float) -> dict[str, Any]:
    """Wait until every node in ``expect_alive`` sees exactly those ids alive and names one controller
    leader (so a job can be submitted at once); returns node infos."""
    addr = {n["id"]: n["address"] for n in cluster["nodes"]}

    async def body(client: RpcClient) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            views = await _views(client, [addr[i] for i in expect_alive])
            ok = all(v is not None and {m["id"] for m in v if m["state"] == "alive"} == expect_alive
                     for v in views.values())
            if ok:
                infos = await asyncio.gather(*(_info(client, addr[i]) for i in sorted(expect_alive)))
                leaders = {(i.get("controller") or {}).get("leader") for i in infos if i}
                # and HyDFS on every node acts on a committed view of exactly those nodes
                views_ok = all(i.get("hydfs_view") is None or set(i["hydfs_view"]) == expect_alive
                               for i in infos if i)
                if all(infos) and len(leaders) == 1 and None not in leaders and views_ok:
                    return {i["id"]: i for i in infos if i}
            if time.monotonic() > deadline:
                bad = sorted(i for i in expect_alive if views[addr[i]] is None)
                raise UserError(f"cluster did not converge (members, a controller leader, its view) in {timeout:g}s"
                                + (f"; not answering: {', '.join(bad)}" if bad else "")
                                + f" (logs in {Path(cluster['dir']).resolve()})")
            await asyncio.sleep(0.1)

    return run_rpc(cluster["secret"], body)


def up(directory: Path, nodes: int, cfg: Config) -> dict[str, Any]:
    existing = read_cluster(directory)
    if existing and any(_is_ours(n.get("pid"), _node_marker(n)) for n in existing["nodes"]):
        raise UserError(f"a cluster already runs from {directory} (run `rainstorm cluster down` first)")
    if nodes < 1:
        raise UserError("--nodes must be at least 1")
    cc = cfg.cluster
    ports = _ports(cc.host, cc.base_port, nodes, set())
    rports = _ports(cc.host, cc.redis_base_port, nodes, set(ports))
    directory.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(16)
    ids = [f"node-{i + 1}" for i in range(nodes)]
    cluster: dict[str, Any] = {"version": 2, "dir": str(directory.resolve()), "secret": secret,
                               "voters": local_voters(ids, cfg.control.voters), "nodes": []}
    for i, nid in enumerate(ids):
        data = directory.resolve() / nid
        data.mkdir(parents=True, exist_ok=True)
        cluster["nodes"].append({"id": nid, "address": f"{cc.host}:{ports[i]}", "redis_port": rports[i],
                                 "data": str(data), "log": str(directory.resolve() / f"{nid}.log"),
                                 "pid": None, "redis_pid": None})
    introducer = cluster["nodes"][0]["address"]
    for i, node in enumerate(cluster["nodes"]):
        node["pid"] = spawn(node, [] if i == 0 else [introducer], secret, cluster["voters"])
    write_cluster(directory, cluster)
    try:
        infos = wait_converged(cluster, {n["id"] for n in cluster["nodes"]}, cc.up_timeout)
    except UserError:
        down(directory)
        raise
    for node in cluster["nodes"]:
        node["redis_pid"] = infos[node["id"]]["redis_pid"]
    write_cluster(directory, cluster)
    return cluster


def require(directory: Path) -> dict[str, Any]:
    cluster = read_cluster(directory)
    if cluster is None:
        raise UserError(f"no local cluster in {directory} (run `rainstorm cluster up`)")
    return cluster


def node_of(cluster: dict[str, Any], node_id: str) -> dict[str, Any]:
    for n in cluster["nodes"]:
        if n["id"] == node_id:
            return n
    raise UserError(f"unknown node {node_id!r}; nodes are {', '.join(n['id'] for n in cluster['nodes'])}")


def status(directory: Path) -> list[dict[str, Any]]:
    """One row per node: what runs, and how the first answering node's gossip sees it."""
    cluster = require(directory)

    async def body(client: RpcClient) -> list[dict[str, Any]]:
        infos = await asyncio.gather(*(_info(client, n["address"]) for n in cluster["nodes"]))
        view: dict[str, str] = {}
        for n, info in zip(cluster["nodes"], infos, strict=True):
            if info:
                with contextlib.suppress(Exception):
                    rows = await client.call(n["address"], "node.members", timeout=1.0)
                    view = {m["id"]: m["state"] for m in rows}
                    break
        rows = []
        for n, info in zip(cluster["nodes"], infos, strict=True):
            running = _is_ours(n.get("pid"), _node_marker(n))
            ctl = (info or {}).get("controller") or {}
            rows.append({
                "id": n["id"], "address": n["address"],
                "pid": n.get("pid") if running else None,
                "redis_pid": (info or {}).get("redis_pid") or (
                    rp if _is_ours(rp := _redis_pid(n), _redis_marker(n)) else None),
                "redis_port": n["redis_port"],
                "state": "up" if info else ("unresponsive" if running else "down"),
                "membership": view.get(n["id"], "unknown"),
                "roles": (info or {}).get("roles", []),
                # this node's view of the controller: who leads, in which term
                "leader": ctl.get("leader"), "term": ctl.get("term"),
                "disk": (info or {}).get("hydfs", {}).get("disk"),
            })
        return rows

    return run_rpc(cluster["secret"], body)


def kill(directory: Path, node_id: str) -> dict[str, Any]:
    """SIGKILL a node and its Redis: a crash, for users and tests."""
    cluster = require(directory)
    node = node_of(cluster, node_id)
    killed_node = _kill(node.get("pid"), _node_marker(node))
    killed_redis = _kill(_redis_pid(node), _redis_marker(node))
    if not (killed_node or killed_redis):
        raise UserError(f"{node_id} is not running")
    return {"id": node_id, "node_killed": killed_node, "redis_killed": killed_redis}


def restart(directory: Path, node_id: str, timeout: float = 20.0) -> dict[str, Any]:
    cluster = require(directory)
    node = node_of(cluster, node_id)
    if _is_ours(node.get("pid"), _node_marker(node)):
        raise UserError(f"{node_id} is running; `rainstorm cluster kill {node_id}` first")
    others = [n for n in cluster["nodes"] if n["id"] != node_id and _is_ours(n.get("pid"), _node_marker(n))]
    node["pid"] = spawn(node, [n["address"] for n in others], cluster["secret"], cluster.get("voters", []))
    write_cluster(directory, cluster)
    infos = wait_converged(cluster, {node_id} | {n["id"] for n in others}, timeout)
    node["redis_pid"] = infos[node_id]["redis_pid"]
    write_cluster(directory, cluster)
    return node


def down(directory: Path, grace: float = 5.0) -> list[str]:
    """Stop every node (graceful first), then make sure no node or Redis process is left."""
    cluster = require(directory)
    nodes = cluster["nodes"]
    for n in nodes:
        _kill(n.get("pid"), _node_marker(n), signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_is_ours(n.get("pid"), _node_marker(n)) for n in nodes):
        time.sleep(0.05)
    stopped = []
    for n in nodes:
        _kill(n.get("pid"), _node_marker(n))
        for pid in {_redis_pid(n), n.get("redis_pid")}:
            _kill(pid, _redis_marker(n))
        stopped.append(n["id"])
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(
            _is_ours(p, _redis_marker(n)) for n in nodes for p in (_redis_pid(n), n.get("redis_pid"))):
        time.sleep(0.05)
    cluster_path = Path(directory) / "cluster.json"
    cluster_path.unlink(missing_ok=True)
    return stopped

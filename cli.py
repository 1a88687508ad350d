"""The ``rainstorm`` command: one typer app for clusters, nodes, membership and (later) files and jobs.

User mistakes end in one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from rainstorm import cluster as local
from rainstorm import config as configmod
from rainstorm.errors import UserError
from rainstorm.locate import DEFAULT_DIR, call_any, locate, read_secret_file, run_rpc

if TYPE_CHECKING:
    from rainstorm.node import NodeSpec

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="RainStorm: exactly-once stream processing on Redis Streams, HyDFS and gossip.")
cluster_app = typer.Typer(no_args_is_help=True, help="A local cluster of background node processes.")
node_app = typer.Typer(no_args_is_help=True, help="Run one node in the foreground.")
app.add_typer(cluster_app, name="cluster")
dfs_app = typer.Typer(no_args_is_help=True, help="HyDFS: replicated files on the ring.")
app.add_typer(node_app, name="node")
app.add_typer(dfs_app, name="dfs")
out = Console()
T = TypeVar("T")

DirOpt = Annotated[Path, typer.Option("--dir", help="Where the local cluster keeps data, logs and cluster.json.")]
AtOpt = Annotated[str | None, typer.Option("--at", help="HOST:PORT of a node (else $RAINSTORM_AT, else cluster.json).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output (stable keys).")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="rainstorm.toml to read (default ./rainstorm.toml).")]


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def _table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*("" if r.get(c) is None else
                        ", ".join(map(str, r[c])) if isinstance(r.get(c), list) else str(r[c]) for c in columns))
    out.print(table)


# -- cluster --------------------------------------------------------------------------------------
@cluster_app.command("up")
def cluster_up(nodes: Annotated[int, typer.Option("--nodes", help="How many nodes.")] = 5,
               directory: DirOpt = DEFAULT_DIR, config: ConfigOpt = None) -> None:
    """Start a local cluster and wait until every node sees all others alive."""
    cfg = _local_config(config)
    with out.status(f"starting {nodes} nodes..."):
        local.up(directory, nodes, cfg)
    _show_status(directory, as_json=False)


def _local_config(path: Path | None) -> configmod.Config:
    """Settings for a local cluster, which picks each node's address, id, data and secret itself: a
    rainstorm.toml written for one host's node (``[node] bind``...) would make every node the same."""
    cfg = configmod.load(path)
    own = [k for k in ("bind", "join", "id", "data", "redis_port", "secret_file") if getattr(cfg.node, k)]
    if own:
        raise UserError(f"[node] {', '.join(own)}: settings of one host's node (`rainstorm node start`); a local "
                        f"cluster chooses them per node, so leave them out of the rainstorm.toml it reads")
    return cfg


def _remote_status(at: str | None, directory: Path) -> list[dict[str, Any]]:
    """``cluster status`` of nodes on other hosts (no cluster.json there): every member the first node
    that answers knows of, each asked for its own ``node.info``; same rows as the local status."""
    target = locate(at, directory)

    async def body(client: Any) -> list[dict[str, Any]]:
        view = await call_any(client, target.addresses, "node.members")

        async def info(addr: str) -> dict[str, Any] | None:
            try:
                res: dict[str, Any] = await client.call(addr, "node.info", timeout=2.0)
                return res
            except Exception:   # down, or not answering: the row says so
                return None

        infos = await asyncio.gather(*(info(m["address"]) for m in view))
        rows = []
        for m, i in sorted(zip(view, infos, strict=True), key=lambda mi: mi[0]["id"]):
            ctl = (i or {}).get("controller") or {}
            rows.append({"id": m["id"], "address": m["address"], "pid": (i or {}).get("pid"),
                         "redis_pid": (i or {}).get("redis_pid"), "redis_port": (i or {}).get("redis_port"),
                         "state": "up" if i else "down", "membership": m["state"], "roles": (i or {}).get("roles", []),
                         "leader": ctl.get("leader"), "term": ctl.get("term"),
                         "disk": (i or {}).get("hydfs", {}).get("disk")})
        return rows

    return run_rpc(target.secret, body)


def _show_status(directory: Path, as_json: bool, at: str | None = None) -> None:
    rows = _remote_status(at, directory) if at or os.environ.get("RAINSTORM_AT") else local.status(directory)
    if as_json:
        _print_json({"nodes": rows})
        return
    _table("RainStorm cluster", rows,
           ["id", "address", "pid", "redis_pid", "redis_port", "state", "membership", "roles", "disk"])
    # the controller as its leader sees itself (else the highest term any node reports)
    known = [r for r in rows if r.get("leader")]
    if known:
        best = max(known, key=lambda r: (r["id"] == r["leader"], r.get("term") or 0))
        out.print(f"controller: leader {best['leader']}, term {best['term']}")
    else:
        out.print("controller: no leader known (an election is under way or a quorum of voters is down)")


@cluster_app.command("status")
def cluster_status(directory: DirOpt = DEFAULT_DIR, as_json: JsonOpt = False, at: AtOpt = None) -> None:
    """Nodes of the local cluster (id, address, pids, redis port, state, roles, whether its disk takes
    writes) and the controller's leader and term; with --at (or $RAINSTORM_AT), every member a node
    on another host knows of."""
    _show_status(directory, as_json, at)


@cluster_app.command("kill")
def cluster_kill(node_id: str, directory: DirOpt = DEFAULT_DIR) -> None:
    """SIGKILL a node and its Redis (fault injection)."""
    res = local.kill(directory, node_id)
    out.print(f"killed {node_id}" + ("" if res["redis_killed"] else " (its redis was not running)"))


@cluster_app.command("restart")
def cluster_restart(node_id: str, directory: DirOpt = DEFAULT_DIR) -> None:
    """Start a killed node again; it rejoins with a new incarnation."""
    with out.status(f"restarting {node_id}..."):
        local.restart(directory, node_id)
    out.print(f"{node_id} is alive again")


@cluster_app.command("down")
def cluster_down(directory: DirOpt = DEFAULT_DIR) -> None:
    """Stop every node and Redis of the local cluster, killed ones included."""
    stopped = local.down(directory)
    out.print(f"stopped {len(stopped)} nodes")


# -- node -----------------------------------------------------------------------------------------
def _address(addr: str, source: str) -> int:
    """The port of ``addr``, or one line naming where the bad address came from."""
    from net.rpc import split_addr

    try:
        _, port = split_addr(addr)
    except ValueError as exc:
        raise UserError(f"{source}: {exc}") from None
    if not 0 < port < 65536:
        raise UserError(f"{source}: bad address {addr!r}: port {port} is out of range")
    return port


def _node_spec(cfg: configmod.Config, bind: str | None, join: str | None, data: Path | None, redis_port: int | None,
               node_id: str | None, voters: str | None, secret_file: Path | None) -> NodeSpec:
    """The node's settings: each flag wins over its ``[node]`` (or ``[control] voters``) setting."""
    from rainstorm.node import NodeSpec
    from rainstorm.redis_proc import find_binary

    nc = cfg.node
    address = bind or nc.bind
    if not address:
        raise UserError("no address to bind: give --bind HOST:PORT or [node] bind in rainstorm.toml")
    port = _address(address, "--bind" if bind else "[node] bind")
    joins = [j.strip() for j in join.split(",") if j.strip()] if join is not None else list(nc.join)
    for j in joins:
        _address(j, "--join" if join is not None else "[node] join")
    secret_path = str(secret_file) if secret_file else nc.secret_file
    secret = read_secret_file(secret_path) if secret_path else os.environ.get("RAINSTORM_SECRET")
    if not secret:
        raise UserError("no cluster secret: set [node] secret_file in rainstorm.toml, pass --secret-file or set "
                        "RAINSTORM_SECRET (every node of a cluster shares it)")
    if voters:
        cfg.control.voters = [v.strip() for v in voters.split(",") if v.strip()]
    if not cfg.control.voters:
        raise UserError("no controller voters: give --voters ID,ID,... or [control] voters in rainstorm.toml")
    rport = redis_port or nc.redis_port or port + 200
    if not 0 < rport < 65536:
        raise UserError(f"redis port {rport} is out of range: give --redis-port or [node] redis_port")
    try:
        find_binary(configured=nc.redis_server)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    nid = node_id or nc.id or address
    # absolute: the node's redis-server runs in a directory of its own and is told paths under this one
    data_dir = (data or Path(nc.data or f"data-{nid.replace(':', '-')}")).absolute()
    return NodeSpec(nid, address, joins, data_dir, rport, secret, cfg)


@node_app.command("start")
def node_start(
    bind: Annotated[str | None, typer.Option(
        "--bind", help=r"HOST:PORT for gossip (UDP) and RPC (TCP) (\[node] bind).")] = None,
    join: Annotated[str | None, typer.Option(
        "--join", help=r"HOST:PORT of a member, comma-separated for several (\[node] join; none: first node).")] = None,
    data: Annotated[Path | None, typer.Option(
        "--data", help=r"Data directory (\[node] data; default ./data-<id>).")] = None,
    redis_port: Annotated[int | None, typer.Option(
        "--redis-port", help=r"Port of this node's redis-server (\[node] redis_port; default PORT+200).")] = None,
    node_id: Annotated[str | None, typer.Option("--id", help=r"Node id (\[node] id; default HOST:PORT).")] = None,
    voters: Annotated[str | None, typer.Option(
        "--voters", help=r"Node ids of the controller's Raft voters, comma-separated (\[control] voters).")] = None,
    secret_file: Annotated[Path | None, typer.Option(
        "--secret-file", help=r"File holding the cluster secret, mode 0600 (\[node] secret_file; "
                              "default: $RAINSTORM_SECRET).")] = None,
    config: ConfigOpt = None,
) -> None:
    r"""Run a node: gossip member, RPC server and its own redis-server, until SIGTERM (graceful leave).

    rainstorm.toml can hold every setting, so a service runs `rainstorm node start --config FILE` alone:
    \[node] bind, join, id, data, redis_port, secret_file, redis_server and \[control] voters.
    A flag wins over the file (docs/configuration.md).
    """
    from hydfs.disk import StorageError
    from rainstorm import logs
    from rainstorm.node import Node

    spec = _node_spec(configmod.load(config), bind, join, data, redis_port, node_id, voters, secret_file)
    logs.setup(spec.node_id)
    try:
        asyncio.run(Node(spec).run())
    except (OSError, StorageError, RuntimeError) as exc:
        raise UserError(f"cannot start node {spec.node_id}: {exc}") from None


# -- membership -----------------------------------------------------------------------------------
@app.command("members")
def members(at: AtOpt = None, as_json: JsonOpt = False, directory: DirOpt = DEFAULT_DIR) -> None:
    """Membership as one node sees it: id, address, state, incarnation, seconds in that state."""
    target = locate(at, directory)

    async def body(client: Any) -> Any:
        return await call_any(client, target.addresses, "node.members")

    from hydfs.ring import position

    rows = run_rpc(target.secret, body)
    for r in rows:  # where the node sits on the HyDFS ring (the classic list_mem_ids)
        r["ring_position"] = position(r["id"])
    if as_json:
        _print_json({"members": rows})
    else:
        _table("members", rows, ["id", "address", "state", "incarnation", "seconds", "ring_position"])


# -- dfs --------------------------------------------------------------------------------------------
def _dfs(at: str | None, directory: Path, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``fn(client)`` with a HyDFS client on the located cluster; HyDFS errors become one line."""
    from hydfs.api import Client, HydfsError
    from hydfs.names import BadName

    target = locate(at, directory)

    async def body(rpc: Any) -> T:
        client = Client(rpc, target.addresses)
        try:
            return await fn(client)
        except (HydfsError, BadName) as exc:
            raise UserError(str(exc)) from None
        finally:
            await client.close()

    return run_rpc(target.secret, body)


def _read_local(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"no such local file: {path}") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None


def _upload(local_file: Path, name: str, at: str | None, directory: Path, create: bool) -> int:
    """Stream a local file in 1 MiB entries, with a progress bar for anything bigger than one."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from hydfs.api import CHUNK

    try:
        f = open(local_file, "rb")
        size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise UserError(f"no such local file: {local_file}") from None
    except OSError as exc:
        raise UserError(f"cannot read {local_file}: {exc.strerror}") from None
    with f, Progress(BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=out,
                     disable=size <= CHUNK, transient=True) as bar:
        task = bar.add_task(name, total=size)

        def tick(n: int) -> None:
            bar.advance(task, n)

        if create:
            return _dfs(at, directory, lambda c: c.create_from(name, f, progress=tick))
        return _dfs(at, directory, lambda c: c.append_from(name, f, progress=tick))


@dfs_app.command("create")
def dfs_create(local_file: Path, name: str, at: AtOpt = None, directory: DirOpt = DEFAULT_DIR) -> None:
    """Create NAME from a local file (fails if NAME exists)."""
    entries = _upload(local_file, name, at, directory, create=True)
    out.print(f"created {name} ({local_file.stat().st_size} bytes in {entries} entries)")


@dfs_app.command("append")
def dfs_append(local_file: Path, name: str, at: AtOpt = None, directory: DirOpt = DEFAULT_DIR) -> None:
    """Append a local file's bytes to NAME."""
    idx = _upload(local_file, name, at, directory, create=False)
    out.print(f"appended {local_file.stat().st_size} bytes to {name} (last entry {idx})")


@dfs_app.command("get")
def dfs_get(name: str, local_file: Path, at: AtOpt = None, directory: DirOpt = DEFAULT_DIR) -> None:
    """Fetch NAME into a local file."""
    size = _download(name, local_file, at, directory, None)
    out.print(f"wrote {size} bytes to {local_file}")


@dfs_app.command("cat")
def dfs_cat(name: str, at: AtOpt = None, directory: DirOpt = DEFAULT_DIR) -> None:
    """Print NAME to stdout."""
    _dfs(at, directory, lambda c: c.get_to(name, sys.stdout.buffer))
    sys.stdout.flush()


@dfs_app.command("getfromreplica")
def dfs_getfromreplica(node_id: str, name: str, local_file: Path, at: AtOpt = None,
                       directory: DirOpt = DEFAULT_DIR) -> None:
    """Fetch NAME from one replica's copy (for checking replicas against each other)."""
    size = _download(name, local_file, at, directory, node_id)
    out.print(f"wrote {size} bytes from {node_id}'s copy to {local_file}")


def _download(name: str, path: Path, at: str | None, directory: Path, replica: str | None) -> int:
    """Stream NAME into a temporary file beside PATH, then rename it: whole or not at all, in bounded
    memory, with a progress bar once it is past a few MiB."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    tmp = path.with_name(f".{path.name}.part")
    try:
        f = open(tmp, "wb")
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None
    bar = Progress(BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=out, transient=True)
    task = bar.add_task(f"get {name}", total=None)
    seen = 0

    def progress(n: int) -> None:
        nonlocal seen
        seen += n
        if seen > 4 << 20 and not bar.live.is_started:
            bar.start()
        bar.advance(task, n)

    try:
        with f:
            size = _dfs(at, directory, lambda c: c.get_to(name, f, replica, progress))
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        bar.stop()
        tmp.unlink(missing_ok=True)
    return size


@dfs_app.command("merge")
def dfs_merge(name: str, at: AtOpt = None, directory: DirOpt = DEFAULT_DIR, as_json: JsonOpt = False) -> None:
    """Make every replica of NAME identical."""
    res = _dfs(at, directory, lambda c: c.merge(name))
    row = {"name": name, "replicas_checked": res.get("checked"), "entries": res.get("commit")}
    if as_json:
        _print_json(row)
    else:
        out.print(f"merged {name}: the primary and {row['replicas_checked']} replicas hold the same "
                  f"{row['entries']} entries")


@dfs_app.command("ls")
def dfs_ls(name: str, at: AtOpt = None, directory: DirOpt = DEFAULT_DIR, as_json: JsonOpt = False) -> None:
    """Where NAME lives: its replicas (node id, address, ring position), the in-sync set, its version."""
    from hydfs.ring import position

    async def fn(c: Any) -> tuple[dict[str, Any], dict[str, str]]:
        return await c.ls(name), dict(c.addrs)

    res, addrs = _dfs(at, directory, fn)
    if not res.get("commit") and not res.get("last"):   # a file holds at least its create entry
        raise UserError(f"no such HyDFS file: {name}")
    isr = set(res.get("isr", []))
    rows = [{"id": r, "address": addrs.get(r), "ring_position": position(r), "in_sync": r in isr}
            for r in res.get("replicas", [])]
    doc = {"name": name, "primary": rows[0]["id"] if rows else None, "term": res.get("term"),
           "entries": res.get("commit"), "version": [res.get("term"), res.get("commit")], "replicas": rows,
           "first": res.get("first", 1)}  # first retained index: a trim dropped the entries below it
    if as_json:
        _print_json(doc)
    else:
        trimmed = f" (from index {doc['first']}: trimmed below it)" if doc["first"] > 1 else ""
        _table(f"{name}: term {doc['term']}, {doc['entries']} entries{trimmed}", rows,
               ["id", "address", "ring_position", "in_sync"])


@dfs_app.command("store")
def dfs_store(node: Annotated[str | None, typer.Option("--node", help="Node id (default: every live node).")] = None,
              at: AtOpt = None, directory: DirOpt = DEFAULT_DIR, as_json: JsonOpt = False) -> None:
    """Files held on a node (or on each node)."""

    async def fn(c: Any) -> dict[str, list[str]]:
        await c.refresh()
        ids = [node] if node else sorted(c.addrs)
        return {i: await c.store(i) for i in ids}

    held = _dfs(at, directory, fn)
    if as_json:
        _print_json({"nodes": [{"id": i, "files": f} for i, f in held.items()]})
    else:
        _table("files held", [{"node": i, "files": len(f), "names": f} for i, f in held.items()],
               ["node", "files", "names"])


@dfs_app.command("list")
def dfs_list(at: AtOpt = None, directory: DirOpt = DEFAULT_DIR, as_json: JsonOpt = False) -> None:
    """Every file in HyDFS and how many nodes hold it."""

    async def fn(c: Any) -> dict[str, list[str]]:
        await c.refresh()
        holders: dict[str, list[str]] = {}
        for i in sorted(c.addrs):
            for f in await c.store(i):
                holders.setdefault(f, []).append(i)
        return holders

    holders = _dfs(at, directory, fn)
    rows = [{"name": n, "copies": len(h), "nodes": h} for n, h in sorted(holders.items())]
    if as_json:
        _print_json({"files": rows})
    else:
        _table("HyDFS files", rows, ["name", "copies", "nodes"])


@dfs_app.command("rm")
def dfs_rm(name: str, at: AtOpt = None, directory: DirOpt = DEFAULT_DIR) -> None:
    """Remove NAME from every replica."""
    _dfs(at, directory, lambda c: c.rm(name))
    out.print(f"removed {name}")


# -- jobs -------------------------------------------------------------------------------------------
async def _control(client: Any, addresses: list[str], method: str, args: dict[str, Any] | None = None) -> Any:
    """Ask any node: it answers from the controller's leader (forwarding), waiting out an election up
    to its ``[control] request_timeout``, then says why in one line."""
    timeout = configmod.load(None).control.request_timeout + 5.0
    return await call_any(client, addresses, f"control.{method}", args, timeout=timeout)


def _control_call(at: str | None, directory: Path, method: str, args: dict[str, Any] | None = None) -> Any:
    target = locate(at, directory)
    return run_rpc(target.secret, lambda c: _control(c, target.addresses, method, args))


def _parse_args(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise UserError(f"--arg {p!r}: expected NAME=VALUE")
        out[k] = v
    return out


def submit_job(job_file: Path, src: str, dest: str, tasks: int, name: str | None, args: dict[str, str],
               rate: float | None, at: str | None, directory: Path, follow: bool = False) -> dict[str, Any]:
    """Check the job file here (one clear error), store it in HyDFS and hand the job to the leader."""
    import uuid

    from hydfs.api import Client, HydfsError
    from rainstorm.stream.jobfile import JobError, load_job
    from rainstorm.stream.plan import build_plan

    text = _read_local(job_file)
    try:
        stages = load_job(text, args, filename=job_file.name)
        job = name or job_file.stem
        plan = build_plan(job, src, dest, stages, tasks)
    except (JobError, ValueError) as exc:
        raise UserError(str(exc)) from None
    target = locate(at, directory)
    stored = f"rs/jobs/{job}-{uuid.uuid4().hex[:8]}.py"
    spec = {"job_file": stored, "job_name": job_file.name, "src": src, "dest": dest, "tasks": tasks,
            "args": args, "rate": rate, "follow": follow, "block": configmod.load(None).worker.source_block}
    refs = [list(r) for r in plan.tasks()]

    async def body(rpc: Any) -> Any:
        client = Client(rpc, target.addresses)
        try:
            exists = bool((await client.ls(src)).get("commit"))  # a file holds at least its create entry
        except HydfsError as exc:
            raise UserError(str(exc)) from None
        if not exists:
            raise UserError(f"unknown source file: {src} (not in HyDFS; `rainstorm dfs create LOCAL {src}`)")
        await client.create(stored, text)
        return await _control(rpc, target.addresses, "submit", {"name": job, "spec": spec, "tasks": refs})

    return run_rpc(target.secret, body)


@app.command("submit")
def submit(
    job_file: Path, src: Annotated[str, typer.Option("--src", help="HyDFS file to read, line by line.")],
    dest: Annotated[str, typer.Option("--dest", help="HyDFS file the sink appends [key, value] lines to.")],
    tasks: Annotated[int, typer.Option("--tasks", help="Tasks per stage.")] = 3,
    name: Annotated[str | None, typer.Option("--name", help="Job name (default: the file's stem).")] = None,
    arg: Annotated[list[str] | None, typer.Option("--arg", help="NAME=VALUE, read by the job as args.")] = None,
    rate: Annotated[float | None, typer.Option("--rate", help="Source lines per second per source task.")] = None,
    follow: Annotated[bool, typer.Option("--follow", help="Keep reading lines appended to the source until "
                                         "`rainstorm stop JOB`.")] = False,
    at: AtOpt = None, directory: DirOpt = DEFAULT_DIR,
) -> None:
    """Run a job file on the cluster."""
    res = submit_job(job_file, src, dest, tasks, name, _parse_args(arg or []), rate, at, directory, follow)
    out.print(f"submitted {res['name']} (run {res['run']}): {len(res['assign'])} tasks; "
              f"`rainstorm status {res['name']}` to follow")


def _job_rows(at: str | None, directory: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = _control_call(at, directory, "jobs")
    return rows


@app.command("jobs")
def jobs(at: AtOpt = None, directory: DirOpt = DEFAULT_DIR, as_json: JsonOpt = False) -> None:
    """Every run of every job the controller knows (a name submitted again is a new run)."""
    rows = _job_rows(at, directory)
    summary = [{"name": j["name"], "run": j["run"], "state": j["state"], "src": j["src"], "dest": j["dest"],
                "tasks": len(j["tasks"]), "restarts": sum(t["restarts"] for t in j["tasks"]),
                "removing": bool(j.get("removing"))} for j in rows]
    if as_json:
        _print_json({"jobs": summary})
    else:
        _table("jobs", [{**j, "state": j["state"] + " (removing)" if j["removing"] else j["state"]} for j in summary],
               ["name", "run", "state", "src", "dest", "tasks", "restarts"])


def _job(at: str | None, directory: Path, name: str) -> dict[str, Any]:
    for j in _job_rows(at, directory):
        if j["name"] == name and j["latest"]:
            return j
    raise UserError(f"no job named {name!r} (see `rainstorm jobs`)")


@app.command("status")
def status(name: str, at: AtOpt = None, directory: DirOpt = DEFAULT_DIR, as_json: JsonOpt = False) -> None:
    """A job's state and, per task: stage, index, node, processed, emitted, pending, restarts."""
    j = _job(at, directory, name)
    if as_json:
        _print_json(j)
        return
    out.print(f"{j['name']} (run {j['run']}): {j['state']}" + (f" ({j['error']})" if j.get("error") else ""))
    _table("tasks", j["tasks"], ["stage", "index", "node", "epoch", "processed", "emitted", "pending",
                                 "deadletters", "restarts", "done"])


@app.command("wait")
def wait(name: str, timeout: Annotated[float, typer.Option("--timeout", help="Seconds (0: forever).")] = 0,
         at: AtOpt = None, directory: DirOpt = DEFAULT_DIR) -> None:
    """Wait until the job finished (exit 0), failed or was stopped (exit 1)."""
    import time

    start = time.monotonic()
    while True:   # long polls: the answer comes as soon as the job ends (an unknown job: one clear line)
        left = timeout - (time.monotonic() - start) if timeout else 5.0
        if left <= 0:
            raise UserError(f"{name} still running after {timeout:g}s")
        j = _control_call(at, directory, "wait", {"name": name, "wait": min(left, 5.0)})
        if j["state"] != "running":
            break
    if j["state"] != "finished":
        raise UserError(f"{name} {j['state']}" + (f": {j['error']}" if j.get("error") else ""))
    out.print(f"{name} finished")


@app.command("stop")
def stop(name: str, at: AtOpt = None, directory: DirOpt = DEFAULT_DIR) -> None:
    """Stop a running job."""
    res = _control_call(at, directory, "stop", {"name": name})
    out.print(f"{name} (run {res['run']}): {res['state']}")


@app.command("rm")
def rm(name: str,
       run: Annotated[int | None, typer.Option("--run", help="Only this run (default: every ended run).")] = None,
       dead_letters: Annotated[bool, typer.Option("--dead-letters", help="Also remove <dest>.deadletters.")] = False,
       timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for the removal.")] = 60.0,
       at: AtOpt = None, directory: DirOpt = DEFAULT_DIR, as_json: JsonOpt = False) -> None:
    """Remove a job's ended runs: task logs, job file, Redis keys, controller record (not the output)."""
    import time

    res = _control_call(at, directory, "rm", {"name": name, "run": run, "deadletters": dead_letters})
    runs = {r["key"]: r for r in res["runs"]}
    if not as_json:
        for r in runs.values():
            out.print(f"removing {name} run {r['run']} ({r['state']}): {r['files']} files, Redis keys on every node")
        for k in res["kept"]:
            out.print(f"kept {name} run {k}: running")
    deadline = time.monotonic() + timeout
    pending, done = list(runs), {}
    while pending:   # long polls: each run is reported as soon as its record is dropped
        left = deadline - time.monotonic()
        if left <= 0:
            raise UserError(f"{name}: run {', '.join(str(runs[k]['run']) for k in pending)} still being removed "
                            f"after {timeout:g}s; the controller goes on (`rainstorm jobs` shows it until done)")
        ans = _control_call(at, directory, "removal", {"keys": pending, "wait": min(left, 5.0)})
        for k, summary in ans["done"].items():
            done[k] = summary
            if not as_json:
                out.print(_removed_line(name, runs[k]["run"], summary), highlight=False)
        pending = ans["pending"]
    if as_json:
        _print_json({"name": name, "kept": res["kept"], "runs": [
            {"run": r["run"], "key": k, "state": r["state"], **(done.get(k) or {})} for k, r in runs.items()]})


def _removed_line(name: str, run: int, summary: dict[str, Any] | None) -> str:
    if summary is None:   # a former leader finished it and took the details with it
        return f"removed {name} run {run}"
    line = (f"removed {name} run {run}: {summary['files']} of {summary['of']} files were there; Redis keys "
            f"deleted on {len(summary['nodes'])} nodes")
    if summary["later"]:
        line += f" ({', '.join(summary['later'])} delete theirs when they answer again)"
    return line


@app.command("deadletters")
def deadletters(name: str, at: AtOpt = None, directory: DirOpt = DEFAULT_DIR, as_json: JsonOpt = False) -> None:
    """The tuples a job's operators raised on, with the error."""
    from hydfs.api import HydfsError

    j = _job(at, directory, name)

    async def fn(c: Any) -> bytes:
        try:
            data: bytes = await c.get(f"{j['dest']}.deadletters")
            return data
        except HydfsError as exc:
            if exc.code == "not_found":
                return b""
            raise

    lines = [json.loads(x) for x in _dfs(at, directory, fn).decode().splitlines() if x.strip()]
    if as_json:
        _print_json({"deadletters": lines})
    else:
        for x in lines:
            out.print(json.dumps(x), highlight=False)
        out.print(f"{len(lines)} dead letters", style="dim")


@app.command("demo")
def demo(directory: DirOpt = DEFAULT_DIR, rows: Annotated[int, typer.Option("--rows", help="Synthetic rows.")] = 30_000,
         tasks: Annotated[int, typer.Option("--tasks", help="Tasks per stage.")] = 3) -> None:
    """A local cluster (started if none runs), a synthetic sign inventory in HyDFS, the two classic jobs."""
    import time

    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    from rainstorm import demo as sample

    if local.read_cluster(directory) is None:
        with out.status("starting a 5-node local cluster..."):
            local.up(directory, 5, _local_config(None))
        out.print(f"cluster up (data and logs in {directory}/)")
    work = directory / "demo"
    work.mkdir(parents=True, exist_ok=True)
    data = sample.sign_rows(rows)
    csv = work / "signs.csv"
    csv.write_text("\n".join(data) + "\n")
    (work / "filter_stop.py").write_text(sample.FILTER_JOB)
    (work / "count_telespar.py").write_text(sample.COUNT_JOB)
    stamp = time.strftime("%H%M%S")
    src = f"demo/signs-{stamp}.csv"
    _dfs(None, directory, lambda c: c.create(src, csv.read_bytes()))
    out.print(f"wrote {len(data)} synthetic sign rows to HyDFS as {src}")
    jobs_run = [("filter_stop", {"pattern": "Stop"}), ("count_telespar", {"pattern": "Punched Telespar"})]
    names = []
    for job, args in jobs_run:
        name = f"{job}-{stamp}"
        submit_job(work / f"{job}.py", src, f"demo/{name}.out", tasks, name, args, None, None, directory)
        names.append(name)
    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), console=out) as bar:
        ids = {n: bar.add_task(n, total=len(data)) for n in names}
        while True:
            state = {j["name"]: j for j in _job_rows(None, directory) if j["name"] in ids}
            for n, j in state.items():
                read = sum(t["processed"] for t in j["tasks"] if t["stage"] == 0)
                bar.update(ids[n], completed=len(data) if j["state"] == "finished" else min(read, len(data)))
            if all(j["state"] != "running" for j in state.values()):
                break
            time.sleep(0.3)
    for n in names:
        if state[n]["state"] != "finished":
            raise UserError(f"{n} {state[n]['state']}: {state[n].get('error')}")
    filtered = _dfs(None, directory, lambda c: c.get(f"demo/{names[0]}.out")).decode().splitlines()
    pairs = sorted((json.loads(x) for x in filtered), key=lambda p: int(p[0].rsplit(":", 1)[1]))
    _table(f"{names[0]}: lines with 'Stop' -> (post type, category), first 8 of {len(pairs)}",
           [{"id": k, "post type, category": v} for k, v in pairs[:8]], ["id", "post type, category"])
    counts: dict[str, int] = {}
    for x in _dfs(None, directory, lambda c: c.get(f"demo/{names[1]}.out")).decode().splitlines():
        k, v = json.loads(x)
        counts[k] = max(counts.get(k, 0), v)
    _table(f"{names[1]}: signs on 'Punched Telespar' posts per category",
           [{"category": k, "count": v} for k, v in sorted(counts.items())], ["category", "count"])
    out.print("\nTry next:")
    for cmd in [f"rainstorm status {names[1]}", "rainstorm jobs", "rainstorm members",
                f"rainstorm dfs ls demo/{names[1]}.out", "rainstorm redis-cli node-2 KEYS 'rs:*'",
                f"rainstorm submit {work}/count_telespar.py --src {src} --dest mine.out --arg pattern=Wood",
                "rainstorm cluster kill node-3   # then re-run the submit: same results",
                "rainstorm cluster down"]:
        out.print(f"  {cmd}", highlight=False)


@app.command("redis-cli", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def redis_cli(ctx: typer.Context, node_id: str, directory: DirOpt = DEFAULT_DIR) -> None:
    """redis-cli on a local cluster node's Redis, address and password filled in."""
    from rainstorm.redis_proc import find_binary, redis_password

    cluster = local.require(directory)
    node = local.node_of(cluster, node_id)
    host = node["address"].rsplit(":", 1)[0]
    env = {**os.environ, "REDISCLI_AUTH": redis_password(cluster["secret"], node_id)}
    argv = [find_binary("redis-cli"), "-h", host, "-p", str(node["redis_port"]), *ctx.args]
    os.execve(argv[0], argv, env)


def main() -> None:
    try:
        app()
    except (UserError, configmod.ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()

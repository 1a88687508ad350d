"""The ``rainstorm`` command: one typer app for clusters, nodes, membership and (later) files and jobs.

User mistakes end in one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from rainstorm import cluster as local
from rainstorm import config as configmod
from rainstorm.errors import UserError
from rainstorm.locate import DEFAULT_DIR, call_any, locate, run_rpc

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="RainStorm: exactly-once stream processing on Redis Streams, HyDFS and gossip.")
cluster_app = typer.Typer(no_args_is_help=True, help="A local cluster of background node processes.")
node_app = typer.Typer(no_args_is_help=True, help="Run one node in the foreground.")
app.add_typer(cluster_app, name="cluster")
app.add_typer(node_app, name="node")
out = Console()

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
    cfg = configmod.load(config)
    with out.status(f"starting {nodes} nodes..."):
        local.up(directory, nodes, cfg)
    _show_status(directory, as_json=False)


def _show_status(directory: Path, as_json: bool) -> None:
    rows = local.status(directory)
    if as_json:
        _print_json({"nodes": rows})
        return
    _table("RainStorm cluster", rows,
           ["id", "address", "pid", "redis_pid", "redis_port", "state", "membership", "roles"])


@cluster_app.command("status")
def cluster_status(directory: DirOpt = DEFAULT_DIR, as_json: JsonOpt = False) -> None:
    """Nodes of the local cluster: id, address, pids, redis port, state."""
    _show_status(directory, as_json)


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
@node_app.command("start")
def node_start(
    bind: Annotated[str, typer.Option("--bind", help="HOST:PORT for gossip (UDP) and RPC (TCP).")],
    join: Annotated[str | None, typer.Option(
        "--join", help="HOST:PORT of a member (comma-separated for several).")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Data directory (default ./data-<id>).")] = None,
    redis_port: Annotated[int | None, typer.Option(
        "--redis-port", help="Port of this node's redis-server (default PORT+200).")] = None,
    node_id: Annotated[str | None, typer.Option("--id", help="Node id (default HOST:PORT).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Run a node: gossip member, RPC server and its own redis-server, until SIGTERM (graceful leave)."""
    from gossip.rpc import split_addr
    from rainstorm import logs
    from rainstorm.node import Node, NodeSpec

    try:
        _, port = split_addr(bind)
        joins = [j.strip() for j in (join or "").split(",") if j.strip()]
        for j in joins:
            split_addr(j)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    secret = os.environ.get("RAINSTORM_SECRET")
    if not secret:
        raise UserError("no cluster secret: set RAINSTORM_SECRET (every node of a cluster shares it)")
    nid = node_id or bind
    cfg = configmod.load(config)
    logs.setup(nid)
    spec = NodeSpec(nid, bind, joins, data or Path(f"data-{nid.replace(':', '-')}"),
                    redis_port or port + 200, secret, cfg)
    try:
        asyncio.run(Node(spec).run())
    except OSError as exc:
        raise UserError(f"cannot start node {nid}: {exc}") from None
    except RuntimeError as exc:
        raise UserError(f"cannot start node {nid}: {exc}") from None


# -- membership -----------------------------------------------------------------------------------
@app.command("members")
def members(at: AtOpt = None, as_json: JsonOpt = False, directory: DirOpt = DEFAULT_DIR) -> None:
    """Membership as one node sees it: id, address, state, incarnation, seconds in that state."""
    target = locate(at, directory)

    async def body(client: Any) -> Any:
        return await call_any(client, target.addresses, "node.members")

    rows = run_rpc(target.secret, body)
    if as_json:
        _print_json({"members": rows})
    else:
        _table("members", rows, ["id", "address", "state", "incarnation", "seconds"])


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

"""How a command finds the cluster: ``--at``, else ``$RAINSTORM_AT``, else ``cluster.json``."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from net.rpc import RpcClient, RpcError, Unreachable
from net.wire import derive_key
from rainstorm.errors import UserError

T = TypeVar("T")
DEFAULT_DIR = Path(os.environ.get("RAINSTORM_DIR", ".rainstorm"))


def cluster_file(directory: Path) -> Path:
    return directory / "cluster.json"


def read_cluster(directory: Path) -> dict[str, Any] | None:
    path = cluster_file(directory)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is unreadable ({exc}); remove it or pass --at HOST:PORT") from None
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
        raise UserError(f"{path} is not a cluster file; remove it or pass --at HOST:PORT")
    return data


def write_cluster(directory: Path, data: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = cluster_file(directory).with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(cluster_file(directory))


@dataclass
class Target:
    addresses: list[str]           # nodes to try, in order
    secret: str
    cluster: dict[str, Any] | None = field(default=None)


def read_secret_file(path: str) -> str:
    """The cluster secret from a file only its owner may open: a service keeps it out of its unit file
    and its environment (both readable by others), the way ssh treats a private key."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
        if mode & 0o077:
            raise UserError(f"secret file {path} is open to group or others (mode {mode & 0o777:o}); "
                            f"run `chmod 600 {path}`")
        secret = p.read_text().strip()
    except FileNotFoundError:
        raise UserError(f"secret file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read secret file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not secret:
        raise UserError(f"secret file {path} is empty")
    return secret


def locate(at: str | None, directory: Path = DEFAULT_DIR) -> Target:
    at = at or os.environ.get("RAINSTORM_AT")
    cluster = read_cluster(directory)
    # $RAINSTORM_SECRET_FILE: on a node's host, its secret file (no secret on a command line)
    secret_file = os.environ.get("RAINSTORM_SECRET_FILE")
    secret = os.environ.get("RAINSTORM_SECRET") or (read_secret_file(secret_file) if secret_file else None) or (
        cluster or {}).get("secret")
    if at:
        if not secret:
            raise UserError("no cluster secret: set RAINSTORM_SECRET (or RAINSTORM_SECRET_FILE) to reach a node "
                            "with --at")
        return Target([at], secret, cluster)
    if cluster is None:
        raise UserError(f"no cluster found: run `rainstorm cluster up`, pass --at HOST:PORT or set "
                        f"RAINSTORM_AT (looked for {cluster_file(directory)})")
    assert secret is not None
    return Target([n["address"] for n in cluster["nodes"]], secret, cluster)


def run_rpc(secret: str, body: Callable[[RpcClient], Awaitable[T]]) -> T:
    """Run ``body`` with a connected client in a fresh event loop (for the sync CLI)."""

    async def main() -> T:
        client = RpcClient(derive_key(secret))
        try:
            return await body(client)
        finally:
            await client.close()

    return asyncio.run(main())


async def call_any(client: RpcClient, addresses: list[str], method: str, args: dict[str, Any] | None = None,
                   timeout: float = 5.0) -> Any:
    """Ask the first node that answers; the error names every address tried."""
    errors = []
    for addr in addresses:
        try:
            return await client.call(addr, method, args, timeout=timeout)
        except Unreachable as exc:
            errors.append(str(exc))
        except RpcError as exc:
            raise UserError(str(exc)) from None
    raise UserError("no node answered: " + "; ".join(errors) if errors else "no node to ask")

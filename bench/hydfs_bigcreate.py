"""Large files written as ONE entry (as `rainstorm dfs create` does) vs in 1 MB entries, on a real cluster.

    python bench/hydfs_bigcreate.py [--sizes 20,50,100] [--base-port 24000]

For each size: the time of ``Client.create(name, data)`` with the whole file, the client's retries and
redirects, whether it succeeded, what ``ls`` says afterwards, the slowest answer of any node to a
trivial RPC meanwhile (its event loop was blocked that long) and the false failure declarations
(``member fail`` about a node that was never killed) in the nodes' logs. Then the same bytes as a
``create`` of 1 MB and 1 MB appends (first). Each write starts once no membership change was logged
for 5 s. Findings in docs/hydfs-bench.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine
from bench.hydfs import MB, Bench, StallMonitor, member_events, put_file
from hydfs.api import HydfsError
from net.rpc import RpcClient
from net.wire import derive_key
from rainstorm import cluster as local
from rainstorm.config import Config

console = Console(width=None if sys.stdout.isatty() else 200)


async def one(b: Bench, name: str, data: bytes, chunked: bool) -> dict[str, Any]:
    cl = b.client(timeout=60.0)
    mon = StallMonitor(b, "")
    t_wall = time.time()
    t0 = time.perf_counter()
    err = ""
    try:
        if chunked:
            await put_file(cl, name, data)
        else:
            await cl.create(name, data)
    except HydfsError as exc:
        err = str(exc)
    took = time.perf_counter() - t0
    stall = await mon.stop()
    await asyncio.sleep(0.3)
    flaps = sum(1 for _, _, ev, _ in member_events(b.c, t_wall) if ev in ("fail", "self_failed"))
    ls = await b.client().ls(name)
    got = len(await b.client(timeout=60.0).get(name))
    stats = dict(cl.core.stats)
    return {"size": len(data), "how": "1 MB entries" if chunked else "one entry", "seconds": took,
            "error": err, "retries": stats["retries"], "redirects": stats["redirects"], "stall": stall,
            "flaps": flaps, "term": ls["term"], "entries": ls["last"], "bytes_read_back": got}


async def quiet(b: Bench, calm: float = 5.0, limit: float = 90.0) -> float:
    """Wait until no node logged a membership change for ``calm`` seconds (at most ``limit``)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        recent = member_events(b.c, time.time() - calm)
        if not recent:
            break
        await asyncio.sleep(1.0)
    return time.monotonic() - t0


async def run(d: Path, c: dict[str, Any], sizes: list[int]) -> list[dict[str, Any]]:
    rpc = RpcClient(derive_key(c["secret"]))
    b = Bench(d, c, rpc)
    await asyncio.sleep(3.5)
    out = []
    try:
        for chunked in (True, False):
            for size in sizes:
                data = bytes(range(256)) * (size // 256)
                waited = await quiet(b)
                if waited > 1:
                    console.print(f"  (waited {waited:.0f}s for the membership to calm down)", highlight=False)
                r = await one(b, f"big/{'c' if chunked else 'e'}{size}", data, chunked)
                out.append(r)
                console.print(f"  {r['how']:12} {size // MB:4} MB: {r['seconds']:.2f}s "
                              f"{'ERROR ' + r['error'] if r['error'] else 'ok'}; retries {r['retries']}, "
                              f"term {r['term']}, read back {r['bytes_read_back'] // MB} MB, "
                              f"worst stall {r['stall']:.2f}s, {r['flaps']} false failure declarations",
                              highlight=False)
    finally:
        for cl in list(b.made):
            await cl.close()
        await rpc.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="20,50,100", help="MB")
    ap.add_argument("--base-port", type=int, default=24000)
    a = ap.parse_args()
    console.print(f"machine: {machine()}", highlight=False)
    cfg = Config()
    cfg.cluster.base_port, cfg.cluster.redis_base_port = a.base_port, a.base_port + 500
    with tempfile.TemporaryDirectory(prefix="hydfs-big-") as tmp:
        d = Path(tmp) / "cluster"
        c = local.up(d, 5, cfg)
        try:
            rows = asyncio.run(run(d, c, [int(s) * MB for s in a.sizes.split(",")]))
        finally:
            local.down(d)
    t = Table(title="large files: one entry vs 1 MB entries (5 nodes)")
    for col in ["written as", "size", "seconds", "result", "client retries", "primary term after",
                "read back", "worst node stall (s)", "false failure declarations"]:
        t.add_column(col)
    for r in rows:
        t.add_row(r["how"], f"{r['size'] // MB} MB", f"{r['seconds']:.2f}", r["error"] or "ok", str(r["retries"]),
                  str(r["term"]), f"{r['bytes_read_back'] // MB} MB", f"{r['stall']:.2f}", str(r["flaps"]))
    console.print(t)


if __name__ == "__main__":
    main()

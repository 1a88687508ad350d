"""End-to-end latency of a paced source: from a line's arrival to its output being durable in the sink.

    python bench/latency.py [--rates 10000,50000] [--seconds 20] [--nodes 3] [--linger 0.005]

A filter job (keep the status-500 lines of the access log, write them) runs on a local cluster with
``--rate``: the source task's lines *arrive* at that rate (line k at t0 + k / rate) and are taken in
batches that close on size (``[worker] batch_lines``) or once their oldest line has waited ``linger``.
The task is source and sink at once (the job is one fused stage), so one clock measures each output
line from its line's arrival to the acknowledgement of the sink append that made it durable (every
in-sync replica holds it): arrival -> batch -> commit record appended to the task log (replicated)
-> sink lines appended to the destination (replicated). The tasks' histograms are read from
``rainstorm status --json`` and merged; p50 / p99 / max are printed with the commit rate and the
gossip suspicions of the run (a false suspicion is a bug to show).

The same run measures the floor under it: two sequential replicated HyDFS appends of the same size
from one client (what every batch must pay at least), p50 / p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine, pct  # noqa: E402
from bench.streaming import BenchError, Cluster, generate, gossip_delta  # noqa: E402
from rainstorm.locate import run_rpc  # noqa: E402
from rainstorm.stream.latency import merge, quantile  # noqa: E402

console = Console()
OUT = ROOT / "docs" / "bench" / "latency"
JOB = ROOT / "bench" / "streaming_jobs" / "rainstorm_filter.py"


def floor_appends(cluster: Cluster, size: int, n: int = 300) -> list[float]:
    """Pairs of sequential replicated appends (log record, then sink lines) from one client: the least
    a batch pays between its arrival and its durability."""
    from hydfs.api import Client

    meta = json.loads((cluster.dir / "cluster.json").read_text())

    async def body(rpc: Any) -> list[float]:
        c = Client(rpc, [n["address"] for n in meta["nodes"]])
        await c.create("bench/floor-a", b"")
        await c.create("bench/floor-b", b"")
        out = []
        data = b"x" * size
        for _ in range(n):
            t0 = time.perf_counter()
            await c.append("bench/floor-a", data)
            await c.append("bench/floor-b", data)
            out.append(time.perf_counter() - t0)
        return out

    return run_rpc(meta["secret"], body)


def one_rate(cluster: Cluster, src: str, rate: float, seconds: float, tag: str) -> dict[str, Any]:
    name = f"lat-{tag}"
    lines = int(rate * seconds)
    before = cluster.gossip()
    t0 = time.perf_counter()
    cluster.cli("submit", str(JOB), "--src", src, "--dest", f"{name}.out", "--tasks", "1", "--name", name,
                "--rate", str(rate), timeout=120)
    cluster.wait(name, t0 + seconds * 4 + 60)
    wall = time.perf_counter() - t0
    for _ in range(40):   # the final counters ride on the task's "done" report
        j = json.loads(cluster.cli("status", name, "--json", timeout=30).stdout)
        if all(t.get("latency") for t in j["tasks"]):
            break
        time.sleep(0.25)
    hist = merge([t.get("latency") or {} for t in j["tasks"]])
    total, _ = gossip_delta(before, cluster.gossip())
    q = {k: quantile(hist, p) for k, p in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999))}
    top = max(hist) if hist else None
    return {"rate": rate, "lines": lines, "wall_s": wall, "samples": sum(hist.values()),
            "p50_ms": _ms(q["p50"]), "p99_ms": _ms(q["p99"]), "p999_ms": _ms(q["p999"]),
            "max_ms": _ms(quantile(hist, 1.0)) if top is not None else None,
            "commits": sum(t.get("commits", 0) for t in j["tasks"]), "gossip": total}


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="10000,50000", help="lines per second, comma-separated")
    ap.add_argument("--seconds", type=float, default=20.0, help="how long each paced run lasts")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--linger", type=float, default=None, help="[worker] linger (s) for the cluster")
    a = ap.parse_args()
    rates = [float(r) for r in a.rates.split(",")]
    sources = {r: generate(int(r * a.seconds)) for r in rates}   # each paced run lasts ``seconds``
    cluster = Cluster(a.nodes, offset=7)
    if a.linger is not None:
        toml = cluster.dir / "rainstorm.toml"
        toml.write_text(toml.read_text() + f"\n[worker]\nlinger = {a.linger}\n")
    results: list[dict[str, Any]] = []
    try:
        cluster.up()
        for r, data in sources.items():
            cluster.upload(data, f"access-{int(r)}")
        time.sleep(3)   # replicas vouch for new files `settle` s after joining
        floor = floor_appends(cluster, 4096)
        for r in rates:
            results.append(one_rate(cluster, f"access-{int(r)}", r, a.seconds, f"{int(r)}"))
    except BenchError as exc:
        console.print(f"[red]{exc}[/red]")
        cluster.keep_logs(OUT / "failed-logs")
        return 1
    finally:
        cluster.down()
    show(results, floor)
    OUT.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine(), "nodes": a.nodes, "linger": a.linger, "results": results,
              "floor_two_appends_ms": {"p50": round(statistics.median(floor) * 1000, 2),
                                       "p99": round(pct(floor, 99) * 1000, 2)}}
    (OUT / "results.json").write_text(json.dumps(report, indent=1))
    return 0 if all(r["gossip"].get("suspected", 0) == 0 for r in results) else 1


def show(results: list[dict[str, Any]], floor: list[float]) -> None:
    t = Table(title="arrival -> durable in the sink (filter job, 1 fused task)")
    for col in ("rate (lines/s)", "output lines", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "commits", "suspicions"):
        t.add_column(col, justify="right")
    for r in results:
        t.add_row(f"{r['rate']:,.0f}", f"{r['samples']:,}", str(r["p50_ms"]), str(r["p99_ms"]), str(r["p999_ms"]),
                  str(r["max_ms"]), f"{r['commits']:,}", str(r["gossip"].get("suspected", 0)))
    console.print(t)
    console.print(f"floor, two sequential replicated 4 KB appends: p50 {statistics.median(floor) * 1000:.2f} ms, "
                  f"p99 {pct(floor, 99) * 1000:.2f} ms")
    console.print(machine())


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    sys.exit(main())

"""The control plane's figures (issue 11): leader takeover, commit rate and latency, and whether
membership and the front door keep their timing under full job load.

    python bench/control.py [--kills 10] [--quick] [--out DIR]

On a local 5-node cluster (5 Raft voters, temporary directory):

- **takeover**: the controller's leader is SIGKILLed ``--kills`` times. Per kill: *elected* = the
  first time a surviving node reports itself leading (polled every 20 ms), *answered* = the first
  time `rainstorm jobs` (``control.jobs`` through a surviving node) answers. The node is restarted
  and rejoins as a follower before the next kill. Goal: a new leader within 3 s of the kill.
- **commits**: ``control.report`` commands for a run that does not exist are real log entries
  (proposed, fsynced on a quorum, applied, answered ``applied: false``). Sequential latency p50/p99
  over 300, then entries/s with 64 in flight for 3 s. Baseline in the same run: ``control.leader``
  on the same node, a round trip that commits nothing (the RPC floor).
- **under load**: a count job over a 60 MB access log with ``--tasks 2``; meanwhile every node's
  gossip probe round trips (``node.probe_rtt``) and the latency of ``control.jobs``; then
  ``control.stop``. Idle probe round trips are measured first in the same run. A suspicion while
  nothing was killed is a false failure detection and is counted.

Results: docs/bench/control/results.{json,md} (bench/out/control with --quick).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine, median, pct  # noqa: E402
from bench.streaming import JOBS, generate  # noqa: E402
from hydfs.api import Client  # noqa: E402
from net.rpc import RpcClient, RpcError, Unreachable  # noqa: E402
from net.wire import derive_key  # noqa: E402
from rainstorm import cluster as local  # noqa: E402
from rainstorm.config import Config  # noqa: E402

console = Console(width=None if sys.stdout.isatty() else 200)
NODES = 5
GOAL_TAKEOVER = 3.0


class Bench:
    def __init__(self, directory: Path) -> None:
        cfg = Config()
        cfg.cluster.base_port = 10000 + (os.getpid() * 37) % 21000
        cfg.cluster.redis_base_port = cfg.cluster.base_port + 200
        self.dir = directory
        self.data = local.up(directory, NODES, cfg)
        self.addr = {n["id"]: n["address"] for n in self.data["nodes"]}
        self.loop = asyncio.new_event_loop()
        self.rpc = RpcClient(derive_key(self.data["secret"]), connect_timeout=0.5)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def call(self, node: str, method: str, args: dict[str, Any] | None = None, timeout: float = 2.0) -> Any:
        return await self.rpc.call(self.addr[node], method, args or {}, timeout=timeout)

    def up_nodes(self) -> list[str]:
        return [n["id"] for n in local.read_cluster(self.dir)["nodes"]   # type: ignore[index]
                if local._is_ours(n.get("pid"), local._node_marker(n))]

    async def leader(self) -> str | None:
        for n in self.up_nodes():
            try:
                info = await self.call(n, "control.leader", timeout=0.5)
            except (Unreachable, RpcError):
                continue
            if info.get("leading"):
                return str(n)
        return None

    async def suspicions(self) -> int:
        total = 0
        for n in self.up_nodes():
            try:
                total += (await self.call(n, "node.info"))["gossip"]["suspected"]
            except (Unreachable, RpcError):
                pass
        return total

    def close(self) -> None:
        self.run(self.rpc.close())
        self.loop.close()
        local.down(self.dir)


# -- takeover ---------------------------------------------------------------------------------------
def takeover(b: Bench, kills: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(kills):
        old = None
        while old is None:
            old = b.run(b.leader())
            time.sleep(0.05)
        survivors = [n for n in b.up_nodes() if n != old]
        t0 = time.monotonic()
        local.kill(b.dir, old)
        elected = answered = None
        while time.monotonic() - t0 < 30 and (elected is None or answered is None):
            for n in survivors:
                try:
                    info = b.run(b.call(n, "control.leader", timeout=0.3))
                except (Unreachable, RpcError):
                    continue
                if elected is None and info.get("leading"):
                    elected = time.monotonic() - t0
            if answered is None:
                try:
                    b.run(b.call(survivors[i % len(survivors)], "control.jobs", timeout=12.0))
                    answered = time.monotonic() - t0
                except (Unreachable, RpcError):
                    pass
            time.sleep(0.02)
        rows.append({"kill": i + 1, "old": old, "elected_s": elected, "answered_s": answered})
        console.print(f"kill {i + 1}: {old} -> new leader after {elected if elected is None else round(elected, 2)} s, "
                      f"`jobs` answered after {answered if answered is None else round(answered, 2)} s")
        local.restart(b.dir, old)

        def follows(old: str = old) -> bool:
            try:
                return b.run(b.call(old, "control.leader"))["leader"] not in (None, old)
            except (Unreachable, RpcError):
                return False

        deadline = time.monotonic() + 20
        while not follows() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2.0)
    return rows


# -- commits ----------------------------------------------------------------------------------------
def commits(b: Bench, sequential: int = 300, seconds: float = 3.0, inflight: int = 64) -> dict[str, Any]:
    lead = None
    while lead is None:
        lead = b.run(b.leader())
    args = {"run": "bench@0", "task": "bench@0:0:0", "epoch": 1, "status": "done"}

    async def seq(method: str, a: dict[str, Any]) -> list[float]:
        out = []
        for _ in range(sequential):
            t = time.perf_counter()
            await b.call(lead, method, a, timeout=5.0)
            out.append(time.perf_counter() - t)
        return out

    floor = b.run(seq("control.leader", {}))
    lat = b.run(seq("control.report", args))

    async def rate() -> int:
        done = 0
        stop = time.perf_counter() + seconds

        async def one() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                await b.call(lead, "control.report", args, timeout=5.0)
                done += 1

        await asyncio.gather(*(one() for _ in range(inflight)))
        return done

    n = b.run(rate())
    return {"leader": lead, "floor_p50_ms": median(floor) * 1e3, "floor_p99_ms": pct(floor, 99) * 1e3,
            "commit_p50_ms": median(lat) * 1e3, "commit_p99_ms": pct(lat, 99) * 1e3,
            "entries_per_s": n / seconds, "inflight": inflight}


# -- under load -------------------------------------------------------------------------------------
def probe_rtts(b: Bench, reset: bool = True) -> dict[str, Any]:
    out = {}
    for n in b.up_nodes():
        out[n] = b.run(b.call(n, "node.probe_rtt", {"reset": reset}))
    return out


def summarize_rtts(per_node: dict[str, Any]) -> dict[str, float]:
    return {"p50_ms": median([r["p50"] for r in per_node.values() if r.get("n")]) * 1e3,
            "p99_ms": max(r["p99"] for r in per_node.values() if r.get("n")) * 1e3,
            "max_ms": max(r["max"] for r in per_node.values() if r.get("n")) * 1e3,
            "probes": sum(r.get("n", 0) for r in per_node.values())}


def under_load(b: Bench, lines: int) -> dict[str, Any]:
    from cli import submit_job

    data = generate(lines)
    nodes = b.up_nodes()
    probe_rtts(b)                                   # start both windows clean
    time.sleep(8.0)
    idle = summarize_rtts(probe_rtts(b))

    async def upload() -> None:
        c = Client(b.rpc, list(b.addr.values()))
        await c.create("access", data.path.read_bytes())

    b.run(upload())
    time.sleep(3.5)                                 # replicas vouch `settle` s after a create
    before = b.run(b.suspicions())
    probe_rtts(b)
    submit_job(JOBS / "rainstorm_count.py", "access", "paths", 2, "load", {}, None, None, b.dir)
    answers: list[float] = []
    t0 = time.monotonic()
    state = "running"
    while state == "running" and time.monotonic() - t0 < 300:
        t = time.perf_counter()
        rows = b.run(b.call(nodes[-1], "control.jobs", timeout=15.0))
        answers.append(time.perf_counter() - t)
        state = next(j["state"] for j in rows if j["name"] == "load" and j["latest"])
        time.sleep(0.25)
    job_s = time.monotonic() - t0
    busy = summarize_rtts(probe_rtts(b))
    # stop answers too: a second run of the same job, stopped while it runs
    submit_job(JOBS / "rainstorm_count.py", "access", "paths2", 2, "load", {}, None, None, b.dir)
    time.sleep(1.0)
    t = time.perf_counter()
    b.run(b.call(nodes[-1], "control.stop", {"name": "load"}, timeout=15.0))
    stop_s = time.perf_counter() - t
    after = b.run(b.suspicions())
    return {"source_mb": data.size / 2**20, "job_s": job_s, "state": state, "idle_probe": idle, "busy_probe": busy,
            "jobs_answer_p50_s": median(answers), "jobs_answer_max_s": max(answers), "jobs_asked": len(answers),
            "stop_answer_s": stop_s, "suspicions": after - before}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="3 kills and a 200k-line job")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    kills = 3 if a.quick else a.kills
    lines = 200_000 if a.quick else 800_000
    out = a.out or (ROOT / ("bench/out/control" if a.quick else "docs/bench/control"))
    console.print(machine())
    work = Path(tempfile.mkdtemp(prefix="bench-control-"))
    b = Bench(work / "cluster")
    try:
        console.print("[bold]commits[/bold]")
        c = commits(b)
        console.print(c)
        console.print("[bold]under load[/bold]")
        load = under_load(b, lines)
        console.print(load)
        console.print("[bold]takeover[/bold]")
        rows = takeover(b, kills)
    finally:
        b.close()
        shutil.rmtree(work, ignore_errors=True)
    el = [r["elected_s"] for r in rows if r["elected_s"] is not None]
    an = [r["answered_s"] for r in rows if r["answered_s"] is not None]
    summary = {"kills": len(rows), "elected_p50_s": median(el), "elected_p99_s": pct(el, 99),
               "answered_p50_s": median(an), "answered_p99_s": pct(an, 99), "goal_s": GOAL_TAKEOVER,
               "missed": len(rows) - len(el)}
    report = {"machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M:%S"), "takeover": summary,
              "kills": rows, "commits": c, "load": load}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    t = Table(title="control plane")
    t.add_column("figure")
    t.add_column("value")
    s = summary
    t.add_row("new leader after SIGKILL, p50 / p99",
              f"{s['elected_p50_s']:.2f} / {s['elected_p99_s']:.2f} s (goal {GOAL_TAKEOVER:g} s, {len(rows)} kills)")
    t.add_row("`jobs` answers after SIGKILL, p50 / p99", f"{s['answered_p50_s']:.2f} / {s['answered_p99_s']:.2f} s")
    t.add_row("commit latency p50 / p99", f"{c['commit_p50_ms']:.2f} / {c['commit_p99_ms']:.2f} ms "
              f"(RPC floor {c['floor_p50_ms']:.2f} / {c['floor_p99_ms']:.2f} ms)")
    t.add_row("committed entries/s", f"{c['entries_per_s']:.0f} ({c['inflight']} in flight)")
    rtt = "{p50_ms:.2f} / {p99_ms:.2f} / {max_ms:.2f} ms ({probes} probes)"
    t.add_row("probe RTT idle p50 / p99 / max", rtt.format(**load["idle_probe"]))
    t.add_row("probe RTT under job p50 / p99 / max", rtt.format(**load["busy_probe"]))
    t.add_row("`jobs` during the job p50 / max", f"{load['jobs_answer_p50_s'] * 1e3:.0f} / "
              f"{load['jobs_answer_max_s'] * 1e3:.0f} ms ({load['jobs_asked']} asked)")
    t.add_row("`stop` during a job", f"{load['stop_answer_s'] * 1e3:.0f} ms")
    t.add_row("suspicions during the job", str(load["suspicions"]))
    console.print(t)
    md = ["# bench/control.py", "", f"`python bench/control.py` on {report['machine']}, {report['when']}", "",
          "| figure | value |", "|---|---|"]
    cells = [list(col._cells) for col in t.columns]
    md += [f"| {cells[0][i]} | {cells[1][i]} |" for i in range(len(cells[0]))]
    (out / "results.md").write_text("\n".join(md) + "\n")
    console.print(f"wrote {out}/results.json and results.md")
    return 0 if not summary["missed"] else 1


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise SystemExit(main())

"""Membership benchmark: real processes (failure detection under SIGKILL) and the simulation.

    python bench/membership.py [--kills 20] [--sizes 5,10] [--no-sim]

(a) Real node processes on 127.0.0.1: for each cluster size, SIGKILL a random node ``--kills``
times; detection time is from the kill to the ``member fail`` log line of the first / the last
surviving member (the nodes' own log timestamps, so polling does not load the machine). The node is
restarted and seen alive everywhere before the next kill.
(b) Simulation at N = 10, 100, 1000 (bench/membership_sim.py).
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, median, pct
from rainstorm import cluster as local
from rainstorm.config import Config

console = Console()
FAIL_LINE = re.compile(r"^ts=(\S+)Z .*msg=\"member fail\" peer=(\S+)")


def _fail_times(c: dict, victim: str, after: float) -> list[float]:
    """Wall-clock times at which each other node logged ``victim`` as failed after ``after``."""
    out = []
    for n in c["nodes"]:
        if n["id"] == victim:
            continue
        best = None
        for line in Path(n["log"]).read_text(errors="replace").splitlines():
            m = FAIL_LINE.match(line)
            if m and m.group(2) == victim:
                t = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC).timestamp()
                if t >= after - 0.01:
                    best = t if best is None else min(best, t)
        if best is not None:
            out.append(best)
    return out


def real_processes(size: int, kills: int, base_port: int) -> dict:
    cfg = Config()
    cfg.cluster.base_port, cfg.cluster.redis_base_port = base_port, base_port + 500
    rng = random.Random(size)
    first: list[float] = []
    last: list[float] = []
    missed = 0
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        c = local.up(d, size, cfg)
        try:
            ids = [n["id"] for n in c["nodes"]]
            for k in range(kills):
                victim = rng.choice(ids)
                t0 = time.time()
                local.kill(d, victim)
                deadline = time.monotonic() + 15
                times: list[float] = []
                while time.monotonic() < deadline:
                    times = _fail_times(c, victim, t0)
                    if len(times) == size - 1:
                        break
                    time.sleep(0.1)
                if len(times) < size - 1:
                    missed += 1
                if times:
                    first.append(min(times) - t0)
                    last.append(max(times) - t0)
                local.restart(d, victim)
                c = local.read_cluster(d) or c
                console.print(f"  n={size} kill {k + 1}/{kills} {victim}: first {first[-1]:.2f}s "
                              f"all {last[-1]:.2f}s", highlight=False)
        finally:
            local.down(d)
    return {"nodes": size, "kills": kills, "first_median": median(first), "first_p99": pct(first, 99),
            "all_median": median(last), "all_p99": pct(last, 99), "missed": missed}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--sizes", default="5,10")
    ap.add_argument("--no-sim", action="store_true")
    ap.add_argument("--no-real", action="store_true")
    a = ap.parse_args()
    console.print(f"machine: {machine()}")
    g = Config().gossip
    console.print(f"settings: period {g.period}s, ack timeout {g.ack_timeout}s, k={g.indirect_k}, "
                  f"suspicion {'on' if g.suspicion else 'off'}")
    if not a.no_real:
        rows = [real_processes(int(s), a.kills, 21000 + 1000 * i) for i, s in enumerate(a.sizes.split(","))]
        t = Table(title="(a) real processes: SIGKILL -> marked failed (seconds)")
        for col in ["nodes", "kills", "first detector median", "first p99", "all members median",
                    "all members p99", "undetected"]:
            t.add_column(col)
        for r in rows:
            t.add_row(str(r["nodes"]), str(r["kills"]), f"{r['first_median']:.2f}", f"{r['first_p99']:.2f}",
                      f"{r['all_median']:.2f}", f"{r['all_p99']:.2f}", str(r["missed"]))
        console.print(t)
        worst = max(r["all_p99"] for r in rows)
        console.print(f"goal: detection p99 <= 2 s -> worst p99 (all members) {worst:.2f}s = "
                      f"{worst / 2.0:.2f}x the goal")
    if not a.no_sim:
        from bench import membership_sim
        membership_sim.main()


if __name__ == "__main__":
    main()

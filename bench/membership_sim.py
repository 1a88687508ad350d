"""Membership in simulation (gossip/sim.py) at N = 10, 100, 1000: detection time, message load and
false positives at 0 / 5 / 20 % message loss, with suspicion on and off.

    python bench/membership_sim.py [--sizes 10,100,1000] [--quick]

For each (N, suspicion) one simulated cluster runs three phases, one per loss rate. In a phase,
crash/restart cycles run back to back: a few members crash at once, the cycle waits for every live
member to declare them failed (or the window to end), then restarts them. Reported per phase:

* detection: seconds from a crash to a live member declaring it failed, over every
  (crashed, observer) pair -- median and p99; ``missed`` pairs were not declared in the window;
* msgs/member/period: datagrams sent per live member per protocol period (all types);
* false failures: ``fail`` verdicts on members that were up. ``incidents`` counts distinct
  (member, incarnation) verdicts, however many members reached each; the rate is per 1000
  member-periods.

Everything is seeded: the same command prints the same numbers (wall times aside).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, median, pct
from gossip.config import GossipConfig
from gossip.sim import Sim


@dataclass(frozen=True)
class Plan:
    """How much to simulate for one cluster size (bigger clusters: fewer periods, same questions)."""

    crashes: int      # members crashed at once per cycle
    window: int       # periods a cycle waits for detection
    settle: int       # periods after the restart before the next cycle
    periods: int      # protocol periods per loss phase (at least one cycle)


PLANS = {10: Plan(1, 25, 8, 400), 100: Plan(3, 30, 10, 200), 1000: Plan(5, 30, 0, 15)}
QUICK = {10: Plan(1, 25, 8, 200), 100: Plan(3, 30, 10, 60), 1000: Plan(5, 30, 0, 15)}
LOSSES = (0.0, 0.05, 0.2)


def _phase(sim: Sim, loss: float, plan: Plan, warmup: int) -> dict[str, Any]:
    period = sim.config.period
    sim.loss = loss
    sim.run_periods(warmup)
    sim.mark()
    start, ff_before = sim.now, len(sim.false_failures)
    end = start + plan.periods * period
    times: list[float] = []
    missed = crashes = 0
    while sim.now < end - 1e-9:
        victims = [m.node_id for m in sim.rng.sample(sim.live(), plan.crashes)]
        sim.crash(victims)
        crashes += len(victims)
        deadline = sim.now + plan.window * period
        while sim.now < deadline - 1e-9 and sim.undetected():
            sim.run_periods(1)
        live = {m.node_id for m in sim.live()}
        for v in victims:
            got = [t for (c, o), t in sim.detected.items() if c == v and o in live]
            times.extend(got)
            missed += len(live) - len(got)
        sim.restart(victims)
        sim.run_periods(plan.settle)
    load = sim.messages_per_member_period()
    periods = (sim.now - start) / period
    false = sim.false_failures[ff_before:]
    incidents = len({(f.target, f.incarnation) for f in false})
    return {
        "detect_median": median(times), "detect_p99": pct(times, 99), "pairs": len(times), "missed": missed,
        "crashes": crashes, "msgs_per_member_period": load, "false_fail_events": len(false),
        "false_incidents": incidents, "fp_per_1000_member_periods": 1000 * incidents / (sim.n * periods),
        "periods": round(periods),
    }


def run_sim_benchmarks(out: list[dict[str, Any]] | None = None, sizes: tuple[int, ...] = (10, 100, 1000),
                       quick: bool = False, progress: bool = False) -> list[dict[str, Any]]:
    """Append one plain-dict row per (N, suspicion, loss) to ``out`` (and return it)."""
    rows = out if out is not None else []
    for n in sizes:
        plan = (QUICK if quick else PLANS).get(n) or Plan(max(1, n // 200), 30, 5, 60)
        for suspicion in (True, False):
            t0 = time.perf_counter()
            sim = Sim(n, GossipConfig(suspicion=suspicion), seed=n)
            sim.start()
            for loss in LOSSES:  # rising, so what a phase leaves behind is no worse than the next one's own
                t1 = time.perf_counter()
                row = {"nodes": n, "suspicion": suspicion, "loss": loss, **_phase(sim, loss, plan, 3)}
                row["wall_s"] = time.perf_counter() - t1 + (t1 - t0 if loss == LOSSES[0] else 0.0)
                rows.append(row)
                if progress:
                    print(f"  n={n} suspicion={'on' if suspicion else 'off'} loss={loss:.0%}: "
                          f"{row['wall_s']:.1f}s", file=sys.stderr, flush=True)
    return rows


def _table(rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    t = Table(title="(b) simulation: detection, load and false positives")
    for col in ["N", "susp", "loss", "periods", "crashes", "detect p50 s", "detect p99 s", "missed",
                "msgs/member/period", "false fails", "incidents", "per 1k member-periods", "wall s"]:
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(str(r["nodes"]), "on" if r["suspicion"] else "off", f"{r['loss']:.0%}", str(r["periods"]),
                  str(r["crashes"]), f"{r['detect_median']:.2f}", f"{r['detect_p99']:.2f}", str(r["missed"]),
                  f"{r['msgs_per_member_period']:.2f}", str(r["false_fail_events"]), str(r["false_incidents"]),
                  f"{r['fp_per_1000_member_periods']:.3f}", f"{r['wall_s']:.1f}")
    return t


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    from rich.console import Console

    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--quick", action="store_true", help="fewer periods (a smoke run)")
    a = ap.parse_args(argv if argv is not None else [])
    console = Console()
    if not console.is_terminal:
        console = Console(width=170)  # a log file: do not squeeze the table to 80 columns
    g = GossipConfig()
    console.print(f"machine: {machine()}")
    console.print(f"settings: period {g.period}s, ack timeout {g.ack_timeout}s, k={g.indirect_k}, "
                  f"suspicion {g.suspicion_periods} periods x max(1, log10 N) (x{g.suspicion_max_mult} "
                  f"unconfirmed), piggyback {g.piggyback_max}, retransmit {g.retransmit_mult} ln(N+1)")
    t0 = time.perf_counter()
    rows = run_sim_benchmarks(sizes=tuple(int(s) for s in a.sizes.split(",")), quick=a.quick, progress=True)
    console.print(_table(rows))
    console.print(f"simulated in {time.perf_counter() - t0:.1f}s wall")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])

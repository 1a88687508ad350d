"""Does a `--follow` job's cost follow its input rate, or its input's size? (issue 13)

    python bench/follow.py [--quick] [--minutes 5] [--rate 2000] [--nodes 3] [--job filter|count]
                           [--every 5] [--out DIR]

A local cluster (3 nodes, temporary directory, ports from our pid) runs a `--follow` job with
`--tasks 1` (bench/streaming_jobs: the filter keeps the status-500 lines; the count counts them per
path) over a HyDFS file that starts empty and is appended to at a steady rate (``--rate`` lines/s,
a chunk every 0.5 s, through the HyDFS client from a thread of this process) for ``--minutes``.
First, once every task committed, the job runs for 20 s (6 s with --quick) with nothing appended: the
CPU it costs at a rate of zero. Then every ``--every`` seconds it samples:

- the source task's bytes fetched per second (its reader's ``fetched``, in `status --json`);
- the source node's CPU seconds per second, and the whole cluster's (nodes and redis-servers);
- the source file's size.

After a warm-up (the first 30 s; 10 s with --quick) each rate's least-squares slope is printed per
minute and as % of its mean per minute: FLAT when it grows by at most ``FLAT_PCT`` % of its mean per
minute (the file grows all along, so a cost that follows the file's size grows with it), GROWS
otherwise (with --quick's one minute of 3 s samples the slopes are noise: a smoke run). Then the
feeder stops, the job must catch up, and its output must be exact: the filter's output the multiset
of ``[feed:<offset>, line]`` of every status-500 line appended, each once; the count's every path's
counts 1..n, each once. The cluster is brought down whatever happens.
Results: bench/out/follow/results.{json,md}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine, median, pct  # noqa: E402
from bench.longrun import Feeder, LiveProbe, catch_up, cpu_s, loadavg, proc, trend  # noqa: E402
from bench.recovery import check_exact  # noqa: E402
from bench.streaming import JOBS, BenchError, Cluster, code_state, console, say  # noqa: E402
from rainstorm.cluster import _redis_pid  # noqa: E402

FLAT_PCT = 3.0          # a rate is flat when its slope is at most this % of its mean per minute
SRC, DEST, NAME = "feed", "follow-out", "follow"
CATCH_UP_S = 120        # after the feeder stops, the output must be complete within this
JOB_FILES = {"filter": JOBS / "rainstorm_filter.py", "count": JOBS / "rainstorm_count.py"}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 minute, samples every 3 s (a smoke run)")
    p.add_argument("--minutes", type=float, help="how long the source is fed (default 5)")
    p.add_argument("--rate", type=int, default=2000, help="lines appended per second (default 2000)")
    p.add_argument("--period", type=float, default=0.5, help="seconds between appends (default 0.5)")
    p.add_argument("--nodes", type=int, default=3, choices=(3, 5))
    p.add_argument("--job", choices=sorted(JOB_FILES), default="filter")
    p.add_argument("--every", type=float, help="seconds between samples (default 5; 3 with --quick)")
    p.add_argument("--out", type=Path, default=ROOT / "bench/out/follow")
    a = p.parse_args()
    a.minutes = a.minutes or (1.0 if a.quick else 5.0)
    a.every = a.every or (3.0 if a.quick else 5.0)
    a.warmup = 10.0 if a.quick else 30.0
    a.idle = 6.0 if a.quick else 20.0
    return a


def pids(cluster: Cluster) -> dict[str, tuple[int | None, int | None]]:
    data = json.loads((cluster.dir / "cluster.json").read_text())
    return {n["id"]: (n.get("pid"), _redis_pid(n)) for n in data["nodes"]}


def sample(probe: LiveProbe, cluster: Cluster, feeder: Feeder, t0: float) -> dict[str, Any]:
    j = probe.job(NAME) or {}
    src_tasks = [t for t in j.get("tasks", []) if t["stage"] == 0]
    node = src_tasks[0]["node"] if src_tasks else None
    fetched = [t.get("fetched") for t in src_tasks]
    row: dict[str, Any] = {"t": time.monotonic() - t0, "size": feeder.size, "lines": feeder.lines,
                           "source_node": node, "state": j.get("state"),
                           "fetched": sum(fetched) if fetched and None not in fetched else None,
                           "processed": sum(t.get("processed", 0) for t in src_tasks)}
    total = 0.0
    for nid, (pid, rpid) in pids(cluster).items():
        p = proc(pid)
        c = cpu_s(p)
        total += (c or 0.0) + (cpu_s(proc(rpid)) or 0.0)
        if nid == node:
            row["src_cpu"] = c
    row["all_cpu"] = total
    return row


def idle_cost(probe: LiveProbe, cluster: Cluster, feeder: Feeder, seconds: float) -> dict[str, Any]:
    """CPU s/s of the source node and the cluster while the job runs and nothing is appended: the cost
    of a rate of zero (every task started and committed first, or 30 s)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        j = probe.job(NAME) or {}
        if j.get("tasks") and all(t.get("reported_epoch") == t["epoch"] for t in j["tasks"]):
            break
        time.sleep(0.5)
    t0 = time.monotonic()
    a = sample(probe, cluster, feeder, t0)
    time.sleep(seconds)
    b = sample(probe, cluster, feeder, t0)
    dt = b["t"] - a["t"]
    return {"seconds": round(dt, 1), "source_node": b["source_node"],
            "src_cpu_s_s": ((b.get("src_cpu") or 0) - (a.get("src_cpu") or 0)) / dt,
            "all_cpu_s_s": (b["all_cpu"] - a["all_cpu"]) / dt}


def rates(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per interval between samples: appended, fetched and read bytes/s, CPU s/s."""
    out = []
    for a, b in itertools.pairwise(rows):
        dt = b["t"] - a["t"]
        if dt <= 0 or a.get("source_node") != b.get("source_node"):
            continue

        def per_s(k: str, a: dict[str, Any] = a, b: dict[str, Any] = b, dt: float = dt) -> float | None:
            return None if a.get(k) is None or b.get(k) is None else (b[k] - a[k]) / dt

        out.append({"t": round(b["t"], 1), "size_mb": round(b["size"] / 2**20, 2),
                    "appended_kb_s": per_s("size"), "fetched_kb_s": per_s("fetched"),
                    "src_cpu_s_s": per_s("src_cpu"),
                    "all_cpu_s_s": per_s("all_cpu")})
        for k in ("appended_kb_s", "fetched_kb_s"):
            if out[-1][k] is not None:
                out[-1][k] /= 1024
    return out


def check_output(probe: LiveProbe, a: argparse.Namespace, feeder: Feeder) -> str | None:
    data = probe.get(DEST)
    if data is None:
        return "output not readable"
    if a.job == "count":
        path = a.out / "output.jsonl"
        path.write_bytes(data)
        mismatch, _order = check_exact(path, dict(feeder.counts))
        return mismatch
    got = Counter(tuple(json.loads(line)) for line in data.decode().splitlines() if line.strip())
    want = Counter((f"{SRC}:{off}", line) for off, line in feeder.kept)
    if got == want:
        return None
    extra, missing = got - want, want - got
    return (f"{sum(got.values()):,} lines, want {sum(want.values()):,}: {sum(extra.values())} unexpected or "
            f"duplicated, {sum(missing.values())} missing" + (f" (e.g. {next(iter(missing))})" if missing else ""))


def summarize(a: argparse.Namespace, per: list[dict[str, Any]]) -> dict[str, Any]:
    warm = [r for r in per if r["t"] >= a.warmup]
    ts = [r["t"] for r in warm]
    out: dict[str, Any] = {}
    for k in ("fetched_kb_s", "src_cpu_s_s", "all_cpu_s_s", "appended_kb_s"):
        ys = [r[k] for r in warm]
        tr = trend(ts, ys) if all(y is not None for y in ys) else None
        out[k] = None if tr is None else {"n": tr.n, "mean": tr.mean, "slope_per_min": tr.slope_per_min,
                                          "pct_per_min": tr.pct_per_min,
                                          "verdict": "n/a (mean 0)" if not tr.mean else
                                          "FLAT" if tr.pct_per_min <= FLAT_PCT else "GROWS"}
    return out


LABELS = {"fetched_kb_s": "source bytes fetched (KB/s, status `fetched`)",
          "src_cpu_s_s": "source node CPU (s/s)", "all_cpu_s_s": "whole cluster CPU (s/s)",
          "appended_kb_s": "appended (KB/s, the input rate)"}


def show(per: list[dict[str, Any]], summ: dict[str, Any]) -> None:
    t = Table(title="per sample interval (after the first)")
    for col in ("t (s)", "source MB", "appended KB/s", "fetched KB/s", "src CPU s/s", "all CPU s/s"):
        t.add_column(col, justify="right")
    for r in per:
        t.add_row(f"{r['t']:.0f}", f"{r['size_mb']:.1f}", *(
            "-" if r[k] is None else f"{r[k]:.{2 if 'cpu' in k else 0}f}"
            for k in ("appended_kb_s", "fetched_kb_s", "src_cpu_s_s", "all_cpu_s_s")))
    console.print(t)
    s = Table(title=f"trends after the warm-up (FLAT: slope <= {FLAT_PCT:g} % of the mean per minute)")
    for col in ("series", "mean", "slope / min", "% of mean / min", "verdict"):
        s.add_column(col)
    for k, v in summ.items():
        if v is None:
            s.add_row(LABELS[k], "n/a", "", "", "not measured")
        else:
            s.add_row(LABELS[k], f"{v['mean']:.3f}", f"{v['slope_per_min']:+.3f}", f"{v['pct_per_min']:+.1f} %",
                      v["verdict"], style=None if v["verdict"] == "FLAT" else "bold red")
    console.print(s)


def markdown(rep: dict[str, Any]) -> str:
    out = ["# `--follow` cost against the source's size (issue 13)", "",
           f"`{rep['command']}`, {rep['started']}; {rep['machine']}; load average {rep['load_start']} at start, "
           f"{rep['load_end']} at the end.", "",
           f"{rep['nodes']} nodes, `--tasks 1` {rep['job']} job, `--follow`; {rep['rate']} lines/s appended every "
           f"{rep['period']} s for {rep['minutes']} min ({rep['fed_mb']} MB, {rep['fed_lines']:,} lines); "
           f"appends p50 {rep['append_ms_p50']} ms, p99 {rep['append_ms_p99']} ms, {rep['append_retries']} retried. "
           f"Idle before the feed ({rep['idle']['seconds']} s, job running, nothing appended): source node "
           f"{rep['idle']['src_cpu_s_s']:.2f} CPU s/s, whole cluster {rep['idle']['all_cpu_s_s']:.2f}.",
           "", "| series | mean | slope / min | % of mean / min | verdict |", "|---|---:|---:|---:|---|"]
    for k, v in rep["trends"].items():
        out.append(f"| {LABELS[k]} | n/a | | | not measured |" if v is None else
                   f"| {LABELS[k]} | {v['mean']:.3f} | {v['slope_per_min']:+.3f} | {v['pct_per_min']:+.1f} % | "
                   f"{v['verdict']} |")
    out += ["", f"Output: {rep['output']}.", "", f"Verdict: {rep['verdict']}", ""]
    return "\n".join(out)


def main() -> int:
    a = parse()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load_start = loadavg()
    say(f"{machine()}; load average {load_start}")
    say(f"follow: {a.nodes} nodes, {a.job} job --follow --tasks 1, {a.rate} lines/s every {a.period} s, "
        f"{a.minutes:g} min, a sample every {a.every:g} s")
    cluster = Cluster(a.nodes, 11)
    probe: LiveProbe | None = None
    feeder: Feeder | None = None
    rows: list[dict[str, Any]] = []
    output, verdict = "not checked", "FAIL (did not finish)"
    rep: dict[str, Any] = {}
    a.out.mkdir(parents=True, exist_ok=True)
    try:
        cluster.up()
        probe = LiveProbe(cluster.dir)
        probe.dfs(probe.hydfs.create(SRC, b""))
        cluster.cli("submit", str(JOB_FILES[a.job]), "--src", SRC, "--dest", DEST, "--tasks", "1", "--name", NAME,
                    "--follow", timeout=120)
        feeder = Feeder(cluster.dir, SRC, a.rate, a.period, keep_offsets=a.job == "filter")
        idle = idle_cost(probe, cluster, feeder, a.idle)
        say(f"idle (job running, nothing appended) for {a.idle:g} s: source node {idle['src_cpu_s_s']:.2f} CPU s/s, "
            f"whole cluster {idle['all_cpu_s_s']:.2f}")
        feeder.start()
        t0 = time.monotonic()
        end = t0 + a.minutes * 60
        n = 0
        while time.monotonic() < end and n < 100_000:
            n += 1
            rows.append(sample(probe, cluster, feeder, t0))
            if feeder.error:
                raise BenchError(f"feeder: {feeder.error}")
            if rows[-1]["state"] not in (None, "running"):
                raise BenchError(f"the job is {rows[-1]['state']}")
            time.sleep(max(0.0, min(a.every - (time.monotonic() - t0 - rows[-1]["t"]), end - time.monotonic())))
        feeder.stop()
        feeder.join(30)
        say(f"fed {feeder.lines:,} lines ({feeder.size / 2**20:.1f} MB); waiting for the job to catch up")
        mismatch, took = catch_up(lambda: check_output(probe, a, feeder), CATCH_UP_S, 2.0)
        cluster.cli("stop", NAME, timeout=60, check=False)
        if mismatch is None:
            time.sleep(2.0)
            mismatch = check_output(probe, a, feeder)   # still exact once stopped (nothing landed twice late)
        output = f"MISMATCH {mismatch}" if mismatch else f"exact (caught up {took:.1f} s after the feed stopped)"
        per = rates(rows)
        summ = summarize(a, per)
        show(per, summ)
        mb_s = (summ.get("appended_kb_s") or {}).get("mean", 0) / 1024
        src_cpu = (summ.get("src_cpu_s_s") or {}).get("mean")
        cost = f"; source node {src_cpu:.2f} CPU s/s fed ({src_cpu / mb_s:.2f} CPU s per MB appended), " \
            f"{idle['src_cpu_s_s']:.2f} CPU s/s idle" if src_cpu is not None and mb_s else ""
        if feeder.size and rows and rows[-1].get("fetched") is not None:
            cost += f"; fetched / appended over the run {rows[-1]['fetched'] / rows[-1]['size']:.3f}"
        flat = {k: v["verdict"] for k, v in summ.items() if v is not None and k != "appended_kb_s"}
        grows = sorted(k for k, v in flat.items() if v != "FLAT")
        verdict = ("PASS" if not grows and not mismatch else "FAIL") + (
            f": grows over the run, as the source grew: {', '.join(LABELS[k] for k in grows)}" if grows else
            ": every measured cost is flat while the source grows") + ("; output " + output) + cost
        ms = feeder.append_ms
        rep = {"command": "python bench/follow.py " + " ".join(sys.argv[1:]), "started": started,
               "machine": machine(), "tree": code_state(), "nodes": a.nodes, "job": a.job,
               "rate": a.rate, "period": a.period,
               "minutes": a.minutes, "fed_lines": feeder.lines, "fed_mb": round(feeder.size / 2**20, 1),
               "append_ms_p50": round(median(ms), 2), "append_ms_p99": round(pct(ms, 99), 2),
               "append_retries": feeder.retries, "idle": idle, "feeder_late_s": round(feeder.late_s, 3),
               "samples": rows, "per_interval": per, "trends": summ, "output": output, "verdict": verdict}
    except BenchError as exc:
        verdict = f"FAIL: {exc}"
        say(f"[red]{exc}[/red]")
    finally:
        if feeder is not None:
            feeder.stop()
        if probe is not None:
            probe.close()
        cluster.down()
        if not verdict.startswith("PASS"):
            cluster.keep_logs(a.out / "logs")
        shutil.rmtree(cluster.dir, ignore_errors=True)
    load_end = loadavg()
    rep.update(load_start=load_start, load_end=load_end, verdict=verdict)
    if "trends" in rep:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "results.json").write_text(json.dumps(rep, indent=2, default=str) + "\n")
        (a.out / "results.md").write_text(markdown(rep))
        say(f"wrote {a.out / 'results.json'} and results.md")
    say(f"load average at the end {load_end} (at start {load_start}; 2 cores, shared)")
    console.print(f"[bold]verdict[/bold]: {verdict}")
    return 0 if verdict.startswith("PASS") else 1


if __name__ == "__main__":
    os.environ.pop("RAINSTORM_AT", None)
    sys.exit(main())

"""Rebuild time of a replaced count task as the task ages: after ``--early`` committed batches and after
``--late`` ones, with snapshots (the default) and without (``snapshot_every = 0``), in one command.

    python bench/rebuild.py [--early 1000] [--late 100000] [--keys 1000] [--modes snapshots,none] [--quick]

Each mode runs on a fresh local cluster of 3 real node processes whose ``[worker]`` makes every
source line its own commit and every inbox entry its own commit (``batch_lines = 1``,
``batch_entries = 1``), so a count job over ``late + early`` lines commits that many batches in its
count task. When the count task has committed ``--early`` batches, its node is SIGKILLed with its
Redis (``rainstorm cluster kill``) and restarted; the replacement's rebuild (from its fence to its
inbox opened: read the log, read the snapshot, replay the records after it) is reported by the node
itself (``status --json``: ``rebuild_s``, ``rebuilt_records``). The same again after ``--late``.
The job's output is checked exact at the end (every key's counts 1..n). Goal: the late rebuild within
2x of the early one with snapshots; ``none`` shows what the log's growth costs without them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from rainstorm import cluster as local  # noqa: E402
from rainstorm.config import Config  # noqa: E402

JOB = '''
from rainstorm import AggregateByKey, Transform

def key(k, v):
    return v.split(",")[0], 1

stages = [Transform(key), AggregateByKey(lambda key, value: key, "count")]
'''
COUNT_TASK = ":1:0"


def cli(d: Path, *args: str, timeout: float = 60.0) -> str:
    r = subprocess.run([sys.executable, "-m", "rainstorm", *args, "--dir", str(d)], capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"rainstorm {' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


def count_task(d: Path, name: str) -> dict[str, Any]:
    st = json.loads(cli(d, "status", name, "--json"))
    return next(t for t in st["tasks"] if t["task"].endswith(COUNT_TASK))


def wait(cond: Any, timeout: float, what: str, step: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            got = cond()
            if got:
                return got
            last = got
        except Exception as exc:   # a node may be restarting while we ask
            last = exc
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r:.300})")


def one_mode(mode: str, a: argparse.Namespace, work: Path) -> dict[str, Any]:
    d = work / mode
    d.mkdir()
    toml = d / "rainstorm.toml"
    toml.write_text("[worker]\nbatch_lines = 1\nbatch_entries = 1\n"
                    f"snapshot_every = {a.every if mode == 'snapshots' else 0}\n")
    os.environ["RAINSTORM_CONFIG"] = str(toml)      # the nodes read it (they inherit the environment)
    cfg = Config()
    cfg.cluster.base_port = a.base_port + (0 if mode == "snapshots" else 100)
    cfg.cluster.redis_base_port = cfg.cluster.base_port + 500
    n = a.early + a.late + a.margin   # still running when the second kill comes
    src = d / "src.txt"
    with src.open("w") as f:
        for i in range(n):
            f.write(f"k{i % a.keys},{i}\n")
    (d / "count.py").write_text(JOB)
    local.up(d, 3, cfg)
    out: dict[str, Any] = {"mode": mode, "lines": n, "rebuilds": []}
    try:
        cli(d, "dfs", "create", str(src), "src")
        cli(d, "submit", str(d / "count.py"), "--src", "src", "--dest", "out", "--tasks", "1", "--name", "c")
        done_before = 0          # batches the count task's earlier instances committed
        t0 = time.monotonic()
        for target in (a.early, a.early + a.late):
            def reached(target: int = target, before: int = done_before) -> dict[str, Any] | None:
                t = count_task(d, "c")
                return t if before + t["commits"] >= target else None
            t = wait(reached, a.timeout, f"{target} commits of the count task", step=0.2)
            committed = done_before + t["commits"]
            victim, epoch = t["node"], t["epoch"]
            print(f"  killing {victim} (count task at epoch {epoch}, {committed} commits)", flush=True)
            local.kill(d, victim)
            killed = time.monotonic()
            def rebuilt(epoch: int = epoch) -> dict[str, Any]:
                x = count_task(d, "c")
                if (x["reported_epoch"] or 0) <= epoch or x["rebuild_s"] is None:
                    raise LookupError(f"placed at epoch {x['epoch']} on {x['node']}, last report from epoch "
                                      f"{x['reported_epoch']}, rebuild {x['rebuild_s']}")
                return x
            new = wait(rebuilt, 60, "the replacement's rebuild", step=0.2)
            r = {"after_commits": committed, "rebuild_s": new["rebuild_s"], "records_read": new["rebuilt_records"],
                 "at_s": round(killed - t0, 1), "node": victim, "to": new["node"]}
            out["rebuilds"].append(r)
            print(f"  {mode}: after {committed} commits: rebuild {new['rebuild_s'] * 1000:.0f} ms, "
                  f"{new['rebuilt_records']} log entries read (killed {victim}, replaced on {new['node']})",
                  flush=True)
            done_before = committed
            local.restart(d, victim)
        cli(d, "wait", "c", timeout=a.timeout)
        counts: dict[str, list[int]] = {}
        for line in cli(d, "dfs", "cat", "out", timeout=120).splitlines():
            k, v = json.loads(line)
            counts.setdefault(k, []).append(v)
        want = {f"k{i}": len(range(i, n, a.keys)) for i in range(min(a.keys, n))}
        out["exact"] = {k: sorted(v) for k, v in counts.items()} == {k: list(range(1, c + 1)) for k, c in want.items()}
        out["job_s"] = round(time.monotonic() - t0, 1)
    finally:
        local.down(d)
        os.environ.pop("RAINSTORM_CONFIG", None)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--early", type=int, default=None, help="commits before the first kill (1000; 200 quick)")
    ap.add_argument("--late", type=int, default=None, help="commits between the kills (100000; 5000 quick)")
    ap.add_argument("--keys", type=int, default=1000, help="distinct keys (the count task's groups)")
    ap.add_argument("--every", type=int, default=1000, help="snapshot_every in the snapshots mode")
    ap.add_argument("--margin", type=int, default=None, help="lines after the second kill (20000; 5000 quick)")
    ap.add_argument("--modes", default="snapshots,none")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the clusters' directories (node logs)")
    ap.add_argument("--timeout", type=float, default=1200.0)
    ap.add_argument("--base-port", type=int, default=10000 + (os.getpid() * 37) % 20000)
    a = ap.parse_args()
    a.early = a.early or (200 if a.quick else 1000)
    a.late = a.late or (5000 if a.quick else 100000)
    a.margin = a.margin or (5000 if a.quick else 20000)
    if a.quick:
        a.every = min(a.every, 100)
    print(f"machine: {machine()}; load {os.getloadavg()[0]:.1f}; early {a.early}, late +{a.late} commits, "
          f"{a.keys} keys, snapshot_every {a.every}", flush=True)
    results = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-rebuild-"))
    try:
        for mode in a.modes.split(","):
            results.append(one_mode(mode, a, tmp))
    finally:
        if a.keep:
            print(f"kept {tmp} (node logs)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    ok = True
    for r in results:
        early, late = r["rebuilds"]
        ratio = late["rebuild_s"] / early["rebuild_s"]
        print(f"{r['mode']:>9}: rebuild after {early['after_commits']} commits {early['rebuild_s'] * 1000:.0f} ms "
              f"({early['records_read']} entries read), "
              f"after {late['after_commits']} {late['rebuild_s'] * 1000:.0f} ms "
              f"({late['records_read']} read): {ratio:.2f}x; output {'exact' if r['exact'] else 'NOT EXACT'}; "
              f"job {r['job_s']} s")
        ok = ok and r["exact"] and (r["mode"] != "snapshots" or ratio <= 2.0)
    print(f"goal: with snapshots the late rebuild within 2x of the early one -> {'met' if ok else 'NOT met'}")
    print(f"load at the end {os.getloadavg()[0]:.1f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

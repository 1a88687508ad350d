"""The soak: a `--follow` count job fed at a steady rate for minutes, with worker nodes SIGKILLed and
restarted, and every resource sampled: does anything grow with the job's age? (issue 13)

    python bench/soak.py [--quick] [--minutes 10] [--rate 2000] [--kill-every 120] [--every 15]
                         [--warmup 120] [--tasks 2] [--record]

A local cluster of 5 nodes (temporary directory, ports from our pid) runs bench/streaming_jobs'
count job (status-500 lines, running count per path) with `--follow --tasks 2` over a HyDFS file
that starts empty and gets ``--rate`` lines/s (a chunk every 0.5 s, through the HyDFS client from a
thread of this process, each chunk retried with its own idempotency key until acknowledged).
Every ``--kill-every`` seconds a node hosting tasks of the job, never the controller's leader, is
SIGKILLed with its Redis (rainstorm.cluster.kill); once each of its tasks committed again elsewhere
it is restarted (rainstorm.cluster.restart). Every ``--every`` seconds, per node: RSS of the node
process and of its redis-server, the node's open files (psutil num_fds), Redis ``used_memory``
(INFO), the node's HyDFS directory and Redis AOF on disk; and the size of every task log of the job
(a zero-byte ranged read through HyDFS: the bytes a rebuild has to read). Per replacement instance:
its rebuild (``first_commit_at - started_at`` from `status --json`: fence, whole-log replay, first
batch) and its recovery (kill to ``first_commit_at``), beside the size of its log at the kill.

After the warm-up (``--warmup``, 2 minutes), each series gets its least-squares slope per minute and
as % of its mean per minute, and PASS when it grows by at most its stated threshold (% of its mean per
minute; ``THRESHOLDS``), FAIL otherwise. A per-node series is taken over the longest stretch of one
process (a restarted node starts small again: its slope across the restart means nothing); the
series' verdict is its worst node's. Today task logs are never compacted, so the task-log series and
the rebuild time are expected to FAIL: this bench is how snapshots and compaction will be seen to work.

At the end the feeder stops, the job must catch up (every path's counts exactly 1..n, each once, n
from what was appended), it is stopped and checked again. The cluster is brought down whatever
happens. Figures go to bench/out/soak/ (``--quick``: bench/out/soak/quick/), and to docs/bench/soak/
only with ``--record``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import sys
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine, median, pct  # noqa: E402
from bench.longrun import Feeder, LiveProbe, Trend, catch_up, loadavg, proc, trend  # noqa: E402
from bench.recovery import check_exact  # noqa: E402
from bench.streaming import JOBS, BenchError, Cluster, code_state, console, say  # noqa: E402
from hydfs.disk import _slug  # noqa: E402   # a HyDFS file's name on disk
from rainstorm import cluster as local  # noqa: E402
from rainstorm.cluster import _redis_pid  # noqa: E402
from rainstorm.errors import UserError  # noqa: E402
from rainstorm.redis_proc import redis_password  # noqa: E402
from rainstorm.worker import WorkerConfig  # noqa: E402

NODES = 5
SRC, DEST, NAME = "soak-feed", "soak-counts", "soak"
JOB_FILE = JOBS / "rainstorm_count.py"
CATCH_UP_S = 180
REPLACE_TIMEOUT = 60.0     # a kill whose tasks have not committed again by then: the node is restarted anyway
MB = 2**20
# PASS when the slope is at most this % of the series' mean per minute (after the warm-up)
THRESHOLDS = {"node_rss_mb": 2.0, "node_rss_less_tail_mb": 2.0, "tail_cache_mb": 2.0,
              "redis_rss_mb": 2.0, "node_fds": 2.0, "redis_used_mb": 2.0,
              "redis_aof_mb": 5.0, "hydfs_dir_mb": 2.0, "task_log_kb": 2.0, "rebuild_s": 5.0, "recovery_s": 5.0,
              "replay_s": 5.0, "replayed_records": 5.0, "task_log_disk_kb": 2.0}
LABELS = {"node_rss_mb": "node process RSS (MB)",
          "node_rss_less_tail_mb": "node RSS less its HyDFS tail cache (MB)",
          "tail_cache_mb": "HyDFS tail cache, bounded by tail_bytes (MB)", "redis_rss_mb": "redis-server RSS (MB)",
          "node_fds": "node open files", "redis_used_mb": "Redis used_memory (MB)",
          "redis_aof_mb": "Redis AOF on disk (MB)", "hydfs_dir_mb": "HyDFS dir on disk (MB)",
          "task_log_kb": "task log size, mean over the job's logs (KB)",
          "task_log_disk_kb": "task log on disk, mean over the job's logs (KB)",
          "rebuild_s": "replacement: start to first commit (s)", "recovery_s": "kill to first commit (s)",
          "replay_s": "replacement: its own rebuild_s (status; replay)",
          "replayed_records": "records replayed (status)"}
# hydfs_dir_mb holds the growing source and output files: growth there is by design. The HyDFS tail
# cache (the latest entries' data, kept in memory) fills up to its bound (16 MiB) over minutes at this
# rate, and a restarted node's starts empty again: raw RSS shows that fill. What must stay flat is the
# RSS less the cache's level, which the node reports itself (node.info: hydfs.tail_cache_mb).
# Redis rewrites its append-only file once it is [node] redis_aof_rewrite_min (8mb) and twice its size
# after the last rewrite (a small RDB preamble here): its top stays near 8 MB however long the node runs
AOF_BOUND_MB = 2 * 8.0
SNAPSHOT_AGE = WorkerConfig.snapshot_age   # a busy task snapshots at least this often (60 s)
INFLIGHT = 8                                # commits past the last snapshot a replacement may also replay
INFO_ONLY = {"hydfs_dir_mb", "node_rss_mb", "tail_cache_mb"}
PER_NODE = ("node_rss_mb", "node_rss_less_tail_mb", "tail_cache_mb", "redis_rss_mb", "node_fds", "redis_used_mb",
            "redis_aof_mb", "hydfs_dir_mb")


@dataclass
class Kill:
    node: str
    t: float                              # seconds into the feed
    at: float                             # wall clock
    tasks: dict[str, int]                 # task -> epoch it had on the node
    log_kb: dict[str, float | None]       # task -> its log's size at the last sample before the kill
    rebuild_s: dict[str, float] = field(default_factory=dict)
    # the task's own figures where the status carries them (rebuild_s / rebuilt_records: the snapshot work)
    reported_rebuild_s: dict[str, float] = field(default_factory=dict)
    rebuilt_records: dict[str, int] = field(default_factory=dict)
    recovery_s: dict[str, float] = field(default_factory=dict)
    to: dict[str, str] = field(default_factory=dict)
    restarted_s: float | None = None      # from the kill until `restart` returned
    note: str | None = None


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="75 s fed: kills every 25 s, samples every 5 s, 15 s warm-up (a smoke run)")
    p.add_argument("--minutes", type=float, help="how long the source is fed (default 10)")
    p.add_argument("--rate", type=int, default=2000, help="lines appended per second (default 2000)")
    p.add_argument("--period", type=float, default=0.5)
    p.add_argument("--tasks", type=int, default=2, help="tasks per stage (default 2)")
    p.add_argument("--kill-every", type=float, help="seconds between kills (default 120)")
    p.add_argument("--every", type=float, help="seconds between samples (default 15)")
    p.add_argument("--warmup", type=float, help="seconds left out of the trends (default 120)")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--snapshot-every", type=int, help="[worker] snapshot_every for the nodes (commits between a "
                   "task's snapshots; default: the nodes' own default)")
    p.add_argument("--record", action="store_true", help="write the figures to docs/bench/soak/")
    p.add_argument("--out", type=Path, help="where results go (default bench/out/soak[/quick])")
    p.add_argument("--report", type=Path, help="no run: the trends and tables again from a results.json (after a "
                   "change to the analysis)")
    a = p.parse_args()
    q = a.quick
    a.minutes = a.minutes or (75 / 60 if q else 10.0)
    a.kill_every = a.kill_every or (25.0 if q else 120.0)
    a.every = a.every or (5.0 if q else 15.0)
    a.warmup = a.warmup if a.warmup is not None else (15.0 if q else 120.0)
    a.out = a.out or (ROOT / "docs/bench/soak" if a.record else ROOT / ("bench/out/soak/quick" if q else
                                                                         "bench/out/soak"))
    return a


def dir_mb(path: Path) -> float | None:
    total = 0
    try:
        for root, _dirs, files in os.walk(path):
            for f in files:
                with contextlib.suppress(OSError):
                    total += os.stat(os.path.join(root, f)).st_size
    except OSError:
        return None
    return total / MB


def file_kb(path: Path) -> float:
    try:
        return path.stat().st_size / 1024
    except OSError:
        return 0.0


class Soak:
    def __init__(self, a: argparse.Namespace, cluster: Cluster, probe: LiveProbe, feeder: Feeder) -> None:
        self.a, self.cluster, self.probe, self.feeder = a, cluster, probe, feeder
        self.rows: list[dict[str, Any]] = []       # one per sample: t, per node {...}, task logs
        self.kills: list[Kill] = []
        self.rng = random.Random(a.seed)
        self.restarting: threading.Thread | None = None
        self.restart_errors: list[str] = []
        self.t0 = 0.0
        self.key: str | None = None                # the run key (name@run): its logs are rs/<key>/log/...

    # -- samples --------------------------------------------------------------------------------
    def sample(self) -> None:
        data = json.loads((self.cluster.dir / "cluster.json").read_text())
        row: dict[str, Any] = {"t": round(time.monotonic() - self.t0, 1), "load1": round(os.getloadavg()[0], 2),
                               "fed_mb": round(self.feeder.size / MB, 2), "nodes": {}, "logs_kb": {}}
        for n in data["nodes"]:
            if n["id"] in self.probe.down:
                continue
            p, rp = proc(n.get("pid")), proc(_redis_pid(n))
            x: dict[str, Any] = {"pid": n.get("pid")}
            with contextlib.suppress(Exception):
                assert p is not None
                x["node_rss_mb"] = p.memory_info().rss / MB
                x["node_fds"] = p.num_fds()
            with contextlib.suppress(Exception):
                assert rp is not None
                x["redis_rss_mb"] = rp.memory_info().rss / MB
            with contextlib.suppress(Exception):
                r = redis.Redis(host=n["address"].rsplit(":", 1)[0], port=n["redis_port"],
                                password=redis_password(data["secret"], n["id"]), socket_timeout=2)
                try:
                    x["redis_used_mb"] = int(r.info("memory")["used_memory"]) / MB
                finally:
                    r.close()
            with contextlib.suppress(Exception):
                info = self.probe.call(n["id"], "node.info", None, timeout=3.0) or {}
                x["tail_cache_mb"] = float(info["hydfs"]["tail_cache_mb"])
                x["node_rss_less_tail_mb"] = x["node_rss_mb"] - x["tail_cache_mb"]
            x["hydfs_dir_mb"] = dir_mb(Path(n["data"]) / "hydfs")
            with contextlib.suppress(OSError):
                x["redis_aof_mb"] = (Path(n["data"]) / "redis" / "appendonly.aof").stat().st_size / MB
            row["nodes"][n["id"]] = x
        j = self.probe.job(NAME) or {}
        self.key = j.get("key") or self.key
        row["snapshots"] = {t["task"]: t.get("snapshots") for t in j.get("tasks", [])}
        for t in j.get("tasks", []):
            log = f"rs/{self.key}/log/{t['stage']}.{t['index']}"
            size = self.probe.size(log)
            row["logs_kb"][t["task"]] = None if size is None else size / 1024
            # its bytes on disk: the largest of the replicas' files (nodes' data dirs)
            disk = [file_kb(Path(n["data"]) / "hydfs" / f"{_slug(log)}.log") for n in data["nodes"]]
            row.setdefault("logs_disk_kb", {})[t["task"]] = max(disk)
        sizes = [v for v in row["logs_kb"].values() if v is not None]
        row["task_log_kb"] = sum(sizes) / len(sizes) if sizes and len(sizes) == len(row["logs_kb"]) else None
        disk_kb = list((row.get("logs_disk_kb") or {}).values())
        row["task_log_disk_kb"] = sum(disk_kb) / len(disk_kb) if disk_kb else None
        self.rows.append(row)
        worst = {k: max((v.get(k) or 0) for v in row["nodes"].values()) for k in ("node_rss_mb", "node_fds")}
        say(f"t={row['t']:.0f}s fed {row['fed_mb']:.1f} MB; node RSS max {worst['node_rss_mb']:.0f} MB, fds max "
            f"{worst['node_fds']}; task log mean "
            + ("?" if row["task_log_kb"] is None else f"{row['task_log_kb']:.0f} KB") + f"; load {row['load1']}")

    # -- kills ----------------------------------------------------------------------------------
    def kill(self) -> Kill | None:
        j = self.probe.job(NAME)
        if j is None or j["state"] != "running":
            return None
        leader = self.probe.leader()
        hosts: dict[str, dict[str, int]] = defaultdict(dict)
        for t in j["tasks"]:
            if not t["done"] and t["node"] != leader and t["node"] not in self.probe.down:
                hosts[t["node"]][t["task"]] = t["epoch"]
        if not hosts:
            return None
        killed = defaultdict(int, {k.node: 0 for k in self.kills})
        for k in self.kills:
            killed[k.node] += 1
        fewest = min(killed.get(n, 0) for n in hosts)
        node = self.rng.choice(sorted(n for n in hosts if killed.get(n, 0) == fewest))
        last = self.rows[-1]["logs_kb"] if self.rows else {}
        try:
            local.kill(self.cluster.dir, node)
        except UserError as exc:
            say(f"[red]kill {node}: {exc}[/red]")
            return None
        self.probe.down.add(node)
        k = Kill(node, round(time.monotonic() - self.t0, 1), time.time(), hosts[node],
                 {t: last.get(t) for t in hosts[node]})
        self.kills.append(k)
        say(f"SIGKILL {node} (tasks {', '.join(sorted(k.tasks))}; leader {leader})")
        return k

    def replaced(self, k: Kill) -> bool:
        """True once every task the node held committed at a new epoch (rebuild times noted)."""
        j = self.probe.job(NAME) or {}
        for t in j.get("tasks", []):
            old = k.tasks.get(t["task"])
            if old is None or t["task"] in k.rebuild_s:
                continue
            if t["epoch"] > old and t["reported_epoch"] == t["epoch"] and t["first_commit_at"] and t["started_at"]:
                k.rebuild_s[t["task"]] = round(t["first_commit_at"] - t["started_at"], 3)
                k.recovery_s[t["task"]] = round(t["first_commit_at"] - k.at, 3)
                k.to[t["task"]] = t["node"]
                if t.get("rebuild_s") is not None:
                    k.reported_rebuild_s[t["task"]] = t["rebuild_s"]
                if t.get("rebuilt_records") is not None:
                    k.rebuilt_records[t["task"]] = t["rebuilt_records"]
        return len(k.rebuild_s) == len(k.tasks)

    def restart(self, k: Kill) -> None:
        def body() -> None:
            t = time.time()
            for attempt in range(2):
                try:
                    local.restart(self.cluster.dir, k.node, timeout=30.0)
                    k.restarted_s = round(time.time() - k.at, 2)
                    self.probe.down.discard(k.node)
                    return
                except UserError as exc:
                    self.restart_errors.append(f"{k.node} (attempt {attempt + 1}): {exc}")
                    if "is running" in str(exc):
                        self.probe.down.discard(k.node)
                        return
            k.note = f"not restarted ({time.time() - t:.0f} s of tries)"

        self.restarting = threading.Thread(target=body, name="restart", daemon=True)
        self.restarting.start()

    # -- the run --------------------------------------------------------------------------------
    def run(self) -> None:
        a = self.a
        self.t0 = time.monotonic()
        end = self.t0 + a.minutes * 60
        next_sample, next_kill = self.t0, self.t0 + a.kill_every
        pending: Kill | None = None
        polled = 0.0
        for _ in range(1_000_000):
            now = time.monotonic()
            if now >= end:
                break
            if self.feeder.error:
                raise BenchError(f"feeder: {self.feeder.error}")
            if now >= next_sample:
                self.sample()
                next_sample += a.every
                if self.rows[-1]["nodes"] and (self.probe.job(NAME) or {}).get("state") not in ("running", None):
                    raise BenchError(f"the job is {(self.probe.job(NAME) or {}).get('state')}")
            busy = pending is not None or (self.restarting is not None and self.restarting.is_alive())
            if now >= next_kill and not busy and end - now > min(20.0, a.kill_every / 2):
                pending = self.kill()
                next_kill = now + a.kill_every
            if pending is not None and now - polled >= 0.5:
                polled = now
                if self.replaced(pending) or time.time() - pending.at > REPLACE_TIMEOUT:
                    if len(pending.rebuild_s) < len(pending.tasks):
                        pending.note = f"not all tasks committed again within {REPLACE_TIMEOUT:g} s"
                    rebuilt = ", ".join(f"{v:.2f} s" for v in pending.rebuild_s.values())
                    recovered = ", ".join(f"{v:.2f} s" for v in pending.recovery_s.values())
                    say(f"{pending.node}'s tasks: rebuild {rebuilt}; recovery {recovered}; restarting it")
                    self.restart(pending)
                    pending = None
            time.sleep(0.1)
        if pending is not None:
            self.restart(pending)
        if self.restarting is not None:
            self.restarting.join(60)


# -- the figures ------------------------------------------------------------------------------------
def tr_dict(tr: Trend | None, limit: float, extra: dict[str, Any] | None = None) -> dict[str, Any] | None:
    if tr is None:
        return None
    return {"n": tr.n, "mean": tr.mean, "first": tr.first, "last": tr.last, "slope_per_min": tr.slope_per_min,
            "pct_per_min": tr.pct_per_min, "threshold_pct": limit,
            "verdict": "PASS" if tr.pct_per_min <= limit else "FAIL", **(extra or {})}


def info_only(d: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if d is None else {**d, "verdict": "info", "threshold_pct": None}


def per_node_trend(rows: list[dict[str, Any]], key: str, warm: float) -> dict[str, Any] | None:
    """Per node, over its longest stretch of one pid, each process's first ``warm`` seconds left out (a
    restarted node warms up too); the series is its worst node."""
    by_node: dict[str, dict[int, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    born: dict[int, float] = {}
    for r in rows:
        for nid, x in r["nodes"].items():
            born.setdefault(x["pid"], 0.0 if r is rows[0] else r["t"])
            if x.get(key) is not None and r["t"] >= born[x["pid"]] + warm:
                by_node[nid][x["pid"]].append((r["t"], float(x[key])))
    nodes: dict[str, dict[str, Any]] = {}
    for nid, segs in by_node.items():
        pts = max(segs.values(), key=len)
        tr = trend([t for t, _ in pts], [y for _, y in pts])
        d = tr_dict(tr, THRESHOLDS[key], {"restarts_seen": len(segs) - 1})
        if d is not None:
            nodes[nid] = d
    if not nodes:
        return None
    worst = max(nodes, key=lambda n: nodes[n]["pct_per_min"])
    return {**nodes[worst], "worst_node": worst, "nodes": nodes}


def analyse(warmup: float, rows: list[dict[str, Any]], kills: list[Kill], snapshot_every: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in PER_NODE:
        out[key] = per_node_trend(rows, key, warmup)
        if key in INFO_ONLY:
            out[key] = info_only(out[key])
    out["redis_aof_mb"] = bounded(out["redis_aof_mb"], [float(x["redis_aof_mb"]) for r in rows if r["t"] >= warmup
                                                        for x in r["nodes"].values()
                                                        if x.get("redis_aof_mb") is not None], AOF_BOUND_MB)
    for key, per_log in (("task_log_kb", "logs_kb"), ("task_log_disk_kb", "logs_disk_kb")):
        # each log's upper envelope, then their mean: the logs' sawtooths are out of phase, and the
        # envelope of their mean would still carry the phases
        warm = [r for r in rows if r["t"] >= warmup and r.get(key) is not None]
        envs: dict[str, dict[float, float]] = {}
        for log in {k for r in warm for k in (r.get(per_log) or {})}:
            pts = [(r["t"], float(r[per_log][log])) for r in warm if (r.get(per_log) or {}).get(log) is not None]
            ts, ys = envelope([t for t, _ in pts], [y for _, y in pts], SNAPSHOT_AGE)
            envs[log] = dict(zip(ts, ys, strict=True))
        common = sorted(set.intersection(*(set(e) for e in envs.values()))) if envs else []
        ys = [sum(e[t] for e in envs.values()) / len(envs) for t in common]
        out[key] = tr_dict(trend(common, ys), THRESHOLDS[key], {"envelope_s": SNAPSHOT_AGE})
    for key, attr in (("rebuild_s", "rebuild_s"), ("recovery_s", "recovery_s"), ("replay_s", "reported_rebuild_s"),
                      ("replayed_records", "rebuilt_records")):
        pts = [(k.t, float(v)) for k in kills for v in getattr(k, attr).values()]
        out[key] = tr_dict(trend([t for t, _ in pts], [v for _, v in pts]), THRESHOLDS[key])
    # three or four kills give no slope (0.02-0.4 s values, one slow start among them decides its sign):
    # these times are shown; how rebuild time follows a task's age is bench/rebuild.py's measure
    for key in ("rebuild_s", "recovery_s", "replay_s"):
        out[key] = info_only(out[key])
    # what a replacement replays is the records since the last snapshot: anywhere in 0..one interval by
    # the phase of the kill, whatever the job's age. Judged by that bound; 4 kills give no slope.
    out["replayed_records"] = bounded(out["replayed_records"],
                                      [float(v) for k in kills for v in k.rebuilt_records.values()],
                                      float(snapshot_every + INFLIGHT))
    return out


def envelope(ts: list[float], ys: list[float], span: float) -> tuple[list[float], list[float]]:
    """The rolling maximum over ``span`` seconds, from the first full window on: a task log is a
    sawtooth (a snapshot trims it at least every ``snapshot_age``), and a slope over a sawtooth sampled
    at another period is mostly phase. Its upper envelope grows only if the log does."""
    out_t, out_y = [], []
    for t in ts:
        if t - span < ts[0]:
            continue
        out_t.append(t)
        out_y.append(max(y for tj, y in zip(ts, ys, strict=True) if t - span <= tj <= t))
    return out_t, out_y


def thr(v: dict[str, Any]) -> str:
    if v.get("bound") is not None:
        return f"max {v['max']:.1f} ≤ {v['bound']:g}"
    return "-" if v["threshold_pct"] is None else f"{v['threshold_pct']:g} %"


def bounded(d: dict[str, Any] | None, values: list[float], bound: float) -> dict[str, Any] | None:
    """A series judged by its highest value against ``bound``, not by a slope: a sawtooth whose tooth
    can outlast the run (Redis rewrites its AOF at a size), or a figure set by the phase of a kill."""
    if d is None or not values:
        return d
    top = max(values)
    return {**d, "max": top, "bound": bound, "verdict": "PASS" if top <= bound else "FAIL"}


def fmt(v: float | None, d: int = 2) -> str:
    return "-" if v is None else f"{v:.{d}f}"


def show(trends: dict[str, Any], kills: list[Kill]) -> None:
    t = Table(title="kills: each replacement instance (start to commit = first_commit_at - started_at)")
    for col in ("t (s)", "node", "task", "log at kill (KB)", "to", "start to commit (s)", "replay (s)", "records",
                "kill to commit (s)", "note"):
        t.add_column(col)
    for k in kills:
        for task in sorted(k.tasks):
            t.add_row(f"{k.t:.0f}", k.node, task.rsplit("@", 1)[-1].split(":", 1)[-1], fmt(k.log_kb.get(task), 0),
                      k.to.get(task, "?"), fmt(k.rebuild_s.get(task)), fmt(k.reported_rebuild_s.get(task)),
                      str(k.rebuilt_records.get(task, "-")), fmt(k.recovery_s.get(task)), k.note or "")
    console.print(t)
    s = Table(title="trends after the warm-up: least-squares slope; PASS when it is at most the threshold")
    for col in ("series", "points", "mean", "first → last", "slope / min", "% of mean / min", "threshold", "verdict"):
        s.add_column(col)
    for key, v in trends.items():
        if v is None:
            s.add_row(LABELS[key], "< 3", "", "", "", "", f"{THRESHOLDS[key]:g} %", "n/a (too few points)")
            continue
        who = f" (worst: {v['worst_node']})" if "worst_node" in v else ""
        s.add_row(LABELS[key] + who, str(v["n"]), fmt(v["mean"]), f"{fmt(v['first'])} → {fmt(v['last'])}",
                  f"{v['slope_per_min']:+.3f}", f"{v['pct_per_min']:+.2f} %", thr(v),
                  v["verdict"], style="bold red" if v["verdict"] == "FAIL" else None)
    console.print(s)


def markdown(rep: dict[str, Any]) -> str:
    out = ["# Soak: a `--follow` count job with kills (issue 13)", "",
           f"`{rep['command']}`, {rep['started']}; {rep['machine']}; load average {rep['load_start']} at start, "
           f"{rep['load_end']} at the end (2 cores, shared). Code: the working tree at {rep['code']['commit']} with "
           f"uncommitted changes in {len(rep['code']['uncommitted'])} files of rainstorm/ hydfs/ gossip/ cli.py.", "",
           f"5 nodes, count job `--follow --tasks {rep['tasks']}`; {rep['rate']} lines/s appended every "
           f"{rep['period']} s for {rep['minutes']:.1f} min ({rep['fed_mb']} MB, {rep['fed_lines']:,} lines; appends "
           f"p50 {rep['append_ms_p50']} ms, p99 {rep['append_ms_p99']} ms, max {rep['append_ms_max']} ms, "
           f"{rep['append_retries']} retried; a chunk at most {rep['feeder_late_s']} s late); "
           f"{len(rep['kills'])} SIGKILLs, one every {rep['kill_every']:g} s; a sample every {rep['every']:g} s; "
           f"trends after a {rep['warmup']:g} s warm-up.", "",
           "| series | points | mean | first → last | slope / min | % of mean / min | threshold | verdict |",
           "|---|---:|---:|---|---:|---:|---:|---|"]
    for key, v in rep["trends"].items():
        if v is None:
            out.append(f"| {LABELS[key]} | < 3 | | | | | {THRESHOLDS[key]:g} % | n/a |")
            continue
        who = f" (worst: {v['worst_node']})" if "worst_node" in v else ""
        out.append(f"| {LABELS[key]}{who} | {v['n']} | {fmt(v['mean'])} | {fmt(v['first'])} → {fmt(v['last'])} | "
                   f"{v['slope_per_min']:+.3f} | {v['pct_per_min']:+.2f} % | {thr(v)} | "
                   f"{v['verdict']} |")
    out += ["", "| kill at (s) | node | task | log at kill (KB) | moved to | start to first commit (s) | replay, "
            "task's rebuild_s (s) | records replayed | kill to first commit (s) |",
            "|---:|---|---|---:|---|---:|---:|---:|---:|"]
    for k in rep["kills"]:
        for task in sorted(k["tasks"]):
            out.append(f"| {k['t']:.0f} | {k['node']} | {task.split(':', 1)[-1]} | {fmt(k['log_kb'].get(task), 0)} | "
                       f"{k['to'].get(task, '?')} | {fmt(k['rebuild_s'].get(task))} | "
                       f"{fmt(k.get('reported_rebuild_s', {}).get(task))} | "
                       f"{k.get('rebuilt_records', {}).get(task, '-')} | {fmt(k['recovery_s'].get(task))} |")
    snaps = (rep["samples"] or [{}])[-1].get("snapshots") or {}
    out += ["", "Snapshots reported by the tasks' instances at the last sample (an instance counts its own): "
            + (", ".join(f"{t.split(':', 1)[-1]} {n}" for t, n in sorted(snaps.items())) or "not in the status")
            + (f"; nodes ran with `[worker] snapshot_every = {rep['snapshot_every']}`"
               if rep.get("snapshot_every") is not None else "; nodes' default `snapshot_every`") + "."]
    loads = [r["load1"] for r in rep["samples"]]
    if loads:
        out += ["", f"1-minute load average during the run: {min(loads):g} to {max(loads):g} (median "
                f"{median(loads):g}) on 2 cores."]
    out += ["", f"Output: {rep['output']}.", "", f"Verdict: {rep['verdict']}", ""]
    return "\n".join(out)


def check(probe: LiveProbe, feeder: Feeder, path: Path) -> str | None:
    data = probe.get(DEST)
    if data is None:
        return "output not readable"
    path.write_bytes(data)
    mismatch, _order = check_exact(path, dict(feeder.counts))
    return mismatch


def finish(a: argparse.Namespace, rep: dict[str, Any]) -> str:
    """Trends, tables, verdict; results.{json,md} written to ``a.out``."""
    kills = [Kill(**k) for k in rep["kills"]]
    trends = analyse(rep["warmup"], rep["samples"], kills, rep.get("snapshot_every") or WorkerConfig.snapshot_every)
    show(trends, kills)
    fails = [LABELS[k] for k, v in trends.items() if v is not None and v["verdict"] == "FAIL"]
    output, failure = rep["output"], rep.get("failure")
    verdict = ("FAIL" if fails or failure or not output.startswith("exact") else "PASS") + (
        f": not flat: {'; '.join(fails)}" if fails else ": every series flat") + f"; output {output}" + (
        f"; ERROR {failure}" if failure else "") + (f"; restart errors: {rep['restart_errors']}"
                                                    if rep.get("restart_errors") else "")
    rep.update(thresholds_pct_per_min=THRESHOLDS, trends=trends, verdict=verdict)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(rep, indent=2, default=str) + "\n")
    (a.out / "results.md").write_text(markdown(rep))
    say(f"wrote {a.out / 'results.json'} and results.md")
    return verdict


def main() -> int:
    a = parse()
    if a.report:
        verdict = finish(a, json.loads(a.report.read_text()))
        console.print(f"[bold]verdict[/bold]: {verdict}")
        return 0 if verdict.startswith("PASS") else 1
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load_start = loadavg()
    say(f"{machine()}; load average {load_start}")
    say(f"soak: {NODES} nodes, count --follow --tasks {a.tasks}, {a.rate} lines/s, {a.minutes:g} min, a kill every "
        f"{a.kill_every:g} s, a sample every {a.every:g} s, warm-up {a.warmup:g} s; figures to {a.out}")
    a.out.mkdir(parents=True, exist_ok=True)
    code = code_state()
    say(f"nodes run the working tree at {code['commit']}, uncommitted changes in {len(code['uncommitted'])} files "
        "of rainstorm/ hydfs/ gossip/ cli.py (a restarted node loads the tree as it is then)")
    cluster = Cluster(NODES, 13)
    toml = cluster.dir / "rainstorm.toml"
    if a.snapshot_every is not None:
        toml.write_text(toml.read_text() + f"\n[worker]\nsnapshot_every = {a.snapshot_every}\n")
    os.environ["RAINSTORM_CONFIG"] = str(toml)   # restarted nodes (spawned by this process) read it too
    probe: LiveProbe | None = None
    feeder: Feeder | None = None
    soak: Soak | None = None
    output, verdict, failure = "not checked", "FAIL (did not finish)", None
    try:
        cluster.up()
        probe = LiveProbe(cluster.dir)
        probe.dfs(probe.hydfs.create(SRC, b""))
        cluster.cli("submit", str(JOB_FILE), "--src", SRC, "--dest", DEST, "--tasks", str(a.tasks), "--name", NAME,
                    "--follow", timeout=120)
        feeder = Feeder(cluster.dir, SRC, a.rate, a.period, seed=a.seed)
        soak = Soak(a, cluster, probe, feeder)
        feeder.start()
        soak.run()
        feeder.stop()
        feeder.join(60)
        say(f"fed {feeder.lines:,} lines ({feeder.size / MB:.1f} MB); waiting for the job to catch up")
        mismatch, took = catch_up(lambda: check(probe, feeder, a.out / "output.jsonl"), CATCH_UP_S, 3.0)
        cluster.cli("stop", NAME, timeout=60, check=False)
        if mismatch is None:
            time.sleep(2.0)
            mismatch = check(probe, feeder, a.out / "output.jsonl")
        output = f"MISMATCH {mismatch}" if mismatch else f"exact: every path's counts 1..n once (caught up " \
                                                          f"{took:.1f} s after the feed stopped)"
    except BenchError as exc:
        failure = str(exc)
        say(f"[red]{exc}[/red]")
    finally:
        if feeder is not None:
            feeder.stop()
        if probe is not None:
            probe.close()
        cluster.down()
        if failure or output.startswith("MISMATCH"):
            cluster.keep_logs(a.out / "logs")
        shutil.rmtree(cluster.dir, ignore_errors=True)
    load_end = loadavg()
    if soak is None or feeder is None:
        console.print(f"[bold]verdict[/bold]: FAIL: {failure}")
        return 1
    ms = feeder.append_ms
    rep = {"command": "python bench/soak.py " + " ".join(sys.argv[1:]), "started": started, "machine": machine(),
           "code": code, "snapshot_every": a.snapshot_every,
           "load_start": load_start, "load_end": load_end, "tasks": a.tasks, "rate": a.rate, "period": a.period,
           "minutes": a.minutes, "kill_every": a.kill_every, "every": a.every, "warmup": a.warmup,
           "fed_lines": feeder.lines, "fed_mb": round(feeder.size / MB, 1),
           "append_ms_p50": round(median(ms), 2) if ms else None,
           "append_ms_p99": round(pct(ms, 99), 2) if ms else None,
           "append_retries": feeder.retries, "feeder_late_s": round(feeder.late_s, 3),
           "append_ms_max": round(max(ms, default=0.0), 1),
           "kills": [asdict(k) for k in soak.kills], "samples": soak.rows, "output": output, "failure": failure,
           "restart_errors": soak.restart_errors}
    (a.out / "output.jsonl").unlink(missing_ok=True)
    verdict = finish(a, rep)
    say(f"feeder: appends p50 {rep['append_ms_p50']} ms, p99 {rep['append_ms_p99']} ms, max "
        f"{max(ms, default=0):.0f} ms, {feeder.retries} retried; a chunk went out at most {feeder.late_s:.2f} s late")
    say(f"load average at the end {load_end} (at start {load_start}; 2 cores, shared)")
    console.print(f"[bold]verdict[/bold]: {verdict}")
    return 0 if verdict.startswith("PASS") else 1


if __name__ == "__main__":
    os.environ.pop("RAINSTORM_AT", None)
    sys.exit(main())

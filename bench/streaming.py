"""Throughput of one streaming job on plain Python, Bytewax, Spark and RainStorm (issue 10).

    python bench/streaming.py [--quick] [--only plain,bytewax,...] [--lines N] [--runs R] [--no-spark] [--memory]
                              [--memory-lines N | --memory-size 2GiB]

The job everywhere: keep the web-access-log lines with status 500, take the path, keep a running
count per path. The data set is seeded and cached in .bench-data/ (2,000,000 lines, ~100 MB; the
line is ``ip,timestamp,method,path,status,bytes``, ~3 % status 500, a few hundred Zipf-skewed paths).
Every system's final counts must equal the counts known from generating the data; a mismatch is
printed loudly and the command exits 1 (as it does when a system fails or times out).

Systems (``--only`` takes these names, or ``rainstorm`` for all four RainStorm ones):
  plain              a Python loop over the file with a dict (the floor)
  bytewax            Bytewax 0.21, 1 worker, FileSource -> filter_map -> stateful_map -> FileSink
  bytewax-recovery   the same with SQLite recovery, a snapshot every 10 s
  spark              PySpark Structured Streaming (pip-installed on first use; skipped with a note if
                     the install or Java fails), trigger(availableNow) over the file, checkpointed
  rainstorm-NxT      RainStorm on a local cluster of N nodes (3, 5) with --tasks T (1, 2); the time
                     is from starting `rainstorm submit` to `rainstorm wait` returning
  memory             the memory check: a 400 MB source (8,000,000 lines) through a filter-only job on
                     5 nodes with --tasks 2; each node's peak RSS against the 300 MB goal
                     (`--only memory --memory-size 2GiB`: a 2 GiB source, generated in 100,000-line
                     chunks, figures to bench/out/streaming/memory-<bytes>/)

Times are wall clock of the whole run (interpreter / JVM start included). Peak RSS is per process,
sampled with psutil every 50 ms from a thread of this process (Spark: the JVM included; RainStorm:
every node process and its redis-server). After each RainStorm run the nodes' gossip counters
(`node.info` -> gossip) are read: a node suspected while nothing crashed is a false failure detection.
Results go to docs/bench/streaming/results.{json,md} (bench/out/streaming/quick with --quick).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from rainstorm.locate import run_rpc  # noqa: E402

console = Console(width=None if sys.stdout.isatty() else 200)
JOBS = ROOT / "bench" / "streaming_jobs"
DATA = ROOT / ".bench-data"
MB = 2**20
SEED = 10
FULL_LINES = 2_000_000
QUICK_LINES = 200_000
MEMORY_LINES = 8_000_000
MEMORY_GOAL_MB = 300
STALL_S = 90         # a RainStorm job whose tasks processed nothing new for this long is stuck: stopped
STATUS_EVERY_S = 5   # how often its progress is read (`rainstorm status`) while `rainstorm wait` runs
RAINSTORM_CONFIGS = [(3, 1), (3, 2), (5, 1), (5, 2)]
ALL_SYSTEMS = ["plain", "bytewax", "bytewax-recovery", "spark",
               *(f"rainstorm-{n}x{t}" for n, t in RAINSTORM_CONFIGS), "memory"]
QUICK_SYSTEMS = ["plain", "bytewax", "bytewax-recovery", "spark", "rainstorm-3x1", "rainstorm-3x2"]
# the env of every child: these would point the CLI at another cluster than the one in --dir
CLUSTER_ENV = ("RAINSTORM_AT", "RAINSTORM_SECRET", "RAINSTORM_CONFIG", "RAINSTORM_DIR")


class BenchError(Exception):
    """One system's run failed or timed out; the message is the one line the table shows."""

    def __init__(self, msg: str, run: Run | None = None) -> None:
        super().__init__(msg)
        self.run = run  # what was measured before the failure (peak RSS, gossip counters)


def say(msg: str) -> None:
    console.print(f"[dim]{datetime.now():%H:%M:%S}[/dim] {msg}", highlight=False)


# -- the data set ---------------------------------------------------------------------------------
SECTIONS = ["api/v1/users", "api/v1/orders", "api/v2/search", "shop/item", "shop/cart", "blog/post",
            "static/js", "static/css", "img", "docs"]
N_PATHS = 300
STATUSES = [("200", 0.85), ("304", 0.05), ("404", 0.045), ("302", 0.025), ("500", 0.03)]
METHODS = [("GET", 0.8), ("POST", 0.15), ("PUT", 0.03), ("DELETE", 0.02)]


@dataclass
class DataSet:
    path: Path
    lines: int
    size: int
    counts: dict[str, int]      # the right final count per path (status-500 lines only)

    @property
    def n500(self) -> int:
        return sum(self.counts.values())


def _cum(pairs: list[tuple[str, float]]) -> tuple[list[str], list[float]]:
    values, weights = zip(*pairs, strict=True)
    acc, out = 0.0, []
    for w in weights:
        acc += w
        out.append(acc)
    return list(values), out


def _chunk(rng: random.Random, start: int, n: int, paths: tuple[list[str], list[float]],
           ips: list[str]) -> tuple[str, list[str]]:
    """``n`` lines from line number ``start``; returns the text and the paths of its 500 lines."""
    ps = rng.choices(paths[0], cum_weights=paths[1], k=n)
    statuses, methods = _cum(STATUSES), _cum(METHODS)
    sts = rng.choices(statuses[0], cum_weights=statuses[1], k=n)
    ms = rng.choices(methods[0], cum_weights=methods[1], k=n)
    who = rng.choices(ips, k=n)
    out = [f"{who[i]},{1_700_000_000 + (start + i) // 25},{ms[i]},{ps[i]},{sts[i]},{rng.randrange(200, 60_000)}\n"
           for i in range(n)]
    return "".join(out), [ps[i] for i in range(n) if sts[i] == "500"]


def generate(lines: int, seed: int = SEED) -> DataSet:
    """Write (or reuse from .bench-data/) the seeded access log; its right answer is kept beside it."""
    csv = DATA / f"access-{lines}-s{seed}.csv"
    meta = csv.with_suffix(".json")
    if csv.exists() and meta.exists():
        m = json.loads(meta.read_text())
        if m.get("size") == csv.stat().st_size and m.get("lines") == lines:
            return DataSet(csv, lines, m["size"], m["counts"])
    DATA.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rng = random.Random(seed)
    paths = _cum([(f"/{SECTIONS[r % len(SECTIONS)]}/{r}", 1 / (r + 1) ** 1.1) for r in range(N_PATHS)])
    ips = [f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}" for _ in range(5000)]
    counts: dict[str, int] = {}
    tmp = csv.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for start in range(0, lines, 100_000):
            text, bad = _chunk(rng, start, min(100_000, lines - start), paths, ips)
            f.write(text)
            for p in bad:
                counts[p] = counts.get(p, 0) + 1
    tmp.replace(csv)
    size = csv.stat().st_size
    meta.write_text(json.dumps({"lines": lines, "seed": seed, "size": size, "counts": counts}))
    say(f"generated {csv.relative_to(ROOT)}: {lines:,} lines, {size / MB:.1f} MB in {time.perf_counter() - t0:.1f} s")
    return DataSet(csv, lines, size, counts)


# -- measuring ------------------------------------------------------------------------------------
class RssSampler:
    """Peak RSS of process trees, sampled from a thread: the systems under test need not cooperate."""

    def __init__(self, roots: dict[int, str], period: float = 0.05, rescan: float = 0.5) -> None:
        self.roots = roots
        self.period, self.rescan = period, rescan
        self.procs: dict[int, psutil.Process] = {}
        self.names: dict[int, str] = {}  # label: the root's, or "<root label>/<last name seen>" (bash execs java)
        # a child counts from its second scan on: a fork about to exec (a JVM's chmod) shows the parent's
        # RSS, copy-on-write shared, for a few milliseconds
        self.scans: dict[int, int] = {}
        self.peak: dict[int, int] = {}
        self.cpu: dict[int, float] = {}  # last user + system seconds seen per process
        self._cpu0: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _scan(self) -> None:
        for pid, label in self.roots.items():
            try:
                root = self.procs.get(pid) or self.procs.setdefault(pid, psutil.Process(pid))
                self.names[pid] = label
                for child in root.children(recursive=True):
                    if child.pid not in self.roots:
                        proc = self.procs.setdefault(child.pid, child)
                        self.scans[child.pid] = self.scans.get(child.pid, 0) + 1
                        with contextlib.suppress(psutil.Error):
                            self.names[child.pid] = f"{label}/{proc.name()}"
            except psutil.Error:
                continue

    def _sample(self) -> None:
        for pid, proc in list(self.procs.items()):
            try:
                with proc.oneshot():
                    rss = proc.memory_info().rss
                    t = proc.cpu_times()
            except psutil.Error:
                continue
            self.cpu[pid] = t.user + t.system
            if (pid in self.roots or self.scans.get(pid, 0) >= 2) and rss > self.peak.get(pid, 0):
                self.peak[pid] = rss

    def _loop(self) -> None:
        next_scan = 0.0
        while True:
            now = time.monotonic()
            if now >= next_scan:
                self._scan()
                next_scan = now + self.rescan
            self._sample()
            if self._stop.wait(self.period):
                return

    def start(self) -> RssSampler:
        self._scan()
        self._sample()
        self._cpu0 = dict(self.cpu)  # a cluster's nodes ran before: count from here
        self._thread.start()
        return self

    def cpu_s(self) -> float:
        """CPU seconds (user + system) of every process seen, since start, as last sampled (a process
        that ended loses at most its last sampling period; a child no one reaped is still counted)."""
        self._sample()
        return round(sum(c - self._cpu0.get(pid, 0.0) for pid, c in self.cpu.items()), 2)

    def stop(self) -> dict[str, float]:
        """Stop sampling; peak RSS in MB per process label (``#pid`` added where two share a name)."""
        self._stop.set()
        self._thread.join()
        out: dict[str, float] = {}
        for pid, rss in sorted(self.peak.items()):
            label = self.names.get(pid, str(pid))
            out[label if label not in out else f"{label}#{pid}"] = round(rss / MB, 1)
        return out


@dataclass
class Run:
    seconds: float
    rss_mb: dict[str, float]
    gossip: dict[str, int] | None = None     # RainStorm: suspected / declared_failed / refuted in the run
    gossip_nodes: dict[str, dict[str, int]] | None = None  # the same per node, where not all zero
    note: str | None = None
    load_before: float = 0.0  # the machine's 1-minute load average as the run started (others share the cores)
    cpu_s: float | None = None  # CPU seconds (user + system) of the system's processes: less noisy than wall time


@dataclass
class Result:
    key: str
    label: str
    runs: list[Run] = field(default_factory=list)
    error: str | None = None                 # failed or timed out: the one line why
    note: str | None = None                  # skipped, or something to know about the figures
    upload_s: float | None = None
    mismatch: str | None = None
    failed_run: Run | None = None            # what the failed run measured before it failed

    @property
    def times(self) -> list[float]:
        return [r.seconds for r in self.runs]

    @property
    def best(self) -> float | None:
        return min(self.times) if self.runs else None

    @property
    def best_run(self) -> Run | None:
        return min(self.runs, key=lambda r: r.seconds) if self.runs else None

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.runs else None

    @property
    def measured(self) -> list[Run]:
        """Every run that measured something, the failed one included."""
        return self.runs + ([self.failed_run] if self.failed_run else [])

    def rss(self) -> dict[str, float]:
        """Per process, the peak over all runs."""
        out: dict[str, float] = {}
        for r in self.measured:
            for k, v in r.rss_mb.items():
                out[k] = max(v, out.get(k, 0.0))
        return out

    def gossip(self) -> dict[str, int] | None:
        if not any(r.gossip is not None for r in self.measured):
            return None
        total: dict[str, int] = {}
        for r in self.measured:
            for k, v in (r.gossip or {}).items():
                total[k] = total.get(k, 0) + v
        return total


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLUSTER_ENV}
    return {**env, **extra}


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(t.strip() for t in text[-lines:])[-400:]


def run_timed(cmd: list[str], log: Path, timeout: float, label: str, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> Run:
    """Run one system as a child process (its own session, so a timeout can end its whole tree)."""
    load = load1()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the child and what it waited for, once we reap it
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env or child_env(), cwd=cwd, start_new_session=True)
        sampler = RssSampler({proc.pid: label}).start()
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"timed out after {timeout:g} s (log {log})") from None
        finally:
            seconds = time.perf_counter() - t0
            sampled_cpu = sampler.cpu_s()
            rss = sampler.stop()
            if proc.poll() is None:  # only the tree we started: its session is ours
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if rc != 0:
        raise BenchError(f"exit {rc}: {_tail(log)} (log {log})")
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = max(ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime, sampled_cpu)  # the JVM is not reaped
    return Run(seconds, rss, load_before=load, cpu_s=round(cpu, 2))


def read_counts(path: Path) -> dict[str, int]:
    """JSON lines ``[path, count]``, one per update: the final count of a path is its largest."""
    counts: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                key, n = json.loads(line)
                if n > counts.get(key, 0):
                    counts[key] = n
    return counts


def compare(got: dict[str, int], want: dict[str, int]) -> str | None:
    """None when equal, else a short description of the difference."""
    if got == want:
        return None
    wrong = sorted(k for k in want.keys() | got.keys() if got.get(k) != want.get(k))
    ex = ", ".join(f"{k}: {got.get(k)} (want {want.get(k)})" for k in wrong[:3])
    return (f"{len(wrong)} of {len(want)} paths differ ({ex}); total {sum(got.values())} "
            f"(want {sum(want.values())})")


# -- the single-process systems -------------------------------------------------------------------
RunOnce = Callable[[int], tuple[Run, dict[str, int]]]


def plain_once(data: DataSet, work: Path, timeout: float) -> RunOnce:
    def once(i: int) -> tuple[Run, dict[str, int]]:
        dest = work / f"plain-{i}.jsonl"
        run = run_timed([sys.executable, str(JOBS / "plain.py"), str(data.path), str(dest)],
                        work / f"plain-{i}.log", timeout, "python")
        return run, read_counts(dest)
    return once


def bytewax_once(data: DataSet, work: Path, timeout: float, recovery: bool) -> RunOnce:
    def once(i: int) -> tuple[Run, dict[str, int]]:
        tag = f"bytewax{'-recovery' if recovery else ''}-{i}"
        dest = work / f"{tag}.jsonl"
        dest.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "bytewax.run", "bytewax_flow:flow"]
        if recovery:
            db = work / f"{tag}-db"
            db.mkdir()
            subprocess.run([sys.executable, "-m", "bytewax.recovery", str(db), "1"], check=True,
                           capture_output=True, timeout=60)
            cmd += ["-r", str(db), "-s", "10", "-b", "0"]  # -b: keep no older snapshots (nothing backs them up)
        env = child_env(BENCH_SRC=str(data.path), BENCH_DEST=str(dest), PYTHONPATH=str(JOBS))
        run = run_timed(cmd, work / f"{tag}.log", timeout, "python", env=env)
        return run, read_counts(dest)
    return once


def spark_ready(allow_install: bool) -> str | None:
    """None when PySpark and Java work; else the one-line reason to skip Spark."""
    if shutil.which("java") is None:
        return "skipped: no java on PATH"
    probe = [sys.executable, "-c", "import pyspark; print(pyspark.__version__)"]
    if subprocess.run(probe, capture_output=True).returncode != 0:
        if not allow_install:
            return "skipped: pyspark is not installed"
        say(f"installing pyspark into {sys.prefix} (first use; a few minutes)...")
        try:
            res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "pyspark"], capture_output=True,
                                 text=True, timeout=1800)
        except subprocess.TimeoutExpired:
            return "skipped: pip install pyspark took over 30 minutes"
        if res.returncode != 0:
            return "skipped: pip install pyspark failed: " + (res.stderr.strip().splitlines() or ["?"])[-1][:200]
    res = subprocess.run(probe, capture_output=True, text=True)
    if res.returncode != 0:
        return "skipped: pyspark does not import: " + (res.stderr.strip().splitlines() or ["?"])[-1][:200]
    return None


def _query_note(log: Path) -> str | None:
    """The job prints how long the streaming query itself took: the rest is JVM and session start."""
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("BENCH query_seconds="):
            return f"query alone {float(line.split('=', 1)[1]):.1f} s"
    return None


def spark_once(data: DataSet, work: Path, timeout: float) -> RunOnce:
    src = work / "spark-src"  # the file source watches a directory: a hard link of the data file in one
    if not src.exists():
        src.mkdir()
        try:
            os.link(data.path, src / data.path.name)
        except OSError:
            (src / data.path.name).symlink_to(data.path)

    def once(i: int) -> tuple[Run, dict[str, int]]:
        dest, ckpt = work / f"spark-{i}.jsonl", work / f"spark-{i}-checkpoint"
        env = child_env(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
        log = work / f"spark-{i}.log"
        run = run_timed([sys.executable, str(JOBS / "spark_job.py"), str(src), str(dest), str(ckpt)], log, timeout,
                        "spark", env=env)
        run.note = _query_note(log)
        return run, read_counts(dest)
    return once


# -- RainStorm through its CLI --------------------------------------------------------------------
def rainstorm_bin() -> list[str]:
    exe = Path(sys.executable).parent / "rainstorm"
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "import cli; cli.main()"]


class Cluster:
    """A local cluster in a temporary directory, driven only through the `rainstorm` command."""

    def __init__(self, nodes: int, offset: int) -> None:
        self.nodes = nodes
        self._progress, self._moved = -1, 0.0  # the waited job's tuples processed, and since when
        self._waited_from = 0.0
        self.dir = Path(tempfile.mkdtemp(prefix=f"bench-streaming-{nodes}n-"))
        # like tests/conftest.py: a base port from our pid, below the ephemeral range; `up` still probes
        base = 10000 + (os.getpid() * 37 + offset * 400) % 21000
        (self.dir / "rainstorm.toml").write_text(
            f"[cluster]\nbase_port = {base}\nredis_base_port = {base + 200}\n")

    def cli(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [*rainstorm_bin(), *args, "--dir", str(self.dir)]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env(),
                                 cwd=self.dir, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise BenchError(f"`rainstorm {' '.join(args[:2])}` did not return in {timeout:.0f} s") from None
        if check and res.returncode != 0:
            raise BenchError(f"`rainstorm {' '.join(args[:2])}` failed: {_last_line(res)}")
        return res

    def up(self) -> None:
        self.cli("cluster", "up", "--nodes", str(self.nodes), "--config", str(self.dir / "rainstorm.toml"),
                 timeout=90)

    def down(self) -> None:
        try:
            self.cli("cluster", "down", timeout=60)
        except BenchError as exc:
            say(f"[red]cluster down in {self.dir}: {exc}[/red]")

    def pids(self) -> dict[int, str]:
        """Every node process and redis-server, labelled node-N / redis-N."""
        rows = json.loads(self.cli("cluster", "status", "--json", timeout=30).stdout)["nodes"]
        out: dict[int, str] = {}
        for r in rows:
            n = r["id"].rsplit("-", 1)[-1]
            if r.get("pid"):
                out[r["pid"]] = f"node-{n}"
            if r.get("redis_pid"):
                out[r["redis_pid"]] = f"redis-{n}"
        return out

    def gossip(self) -> dict[str, dict[str, int] | None]:
        """Each node's SWIM counters from `node.info` (None: the node did not answer)."""
        cluster = json.loads((self.dir / "cluster.json").read_text())

        async def body(client: Any) -> dict[str, dict[str, int] | None]:
            async def one(addr: str) -> dict[str, int] | None:
                try:
                    info = await client.call(addr, "node.info", timeout=5.0)
                except Exception:
                    return None
                return dict(info.get("gossip") or {"missing": 1})

            res = await asyncio.gather(*(one(n["address"]) for n in cluster["nodes"]))
            return {n["id"]: r for n, r in zip(cluster["nodes"], res, strict=True)}

        return run_rpc(cluster["secret"], body)

    def upload(self, data: DataSet, name: str) -> float:
        t0 = time.perf_counter()
        self.cli("dfs", "create", str(data.path), name, timeout=max(300, data.size / MB * 3))
        return time.perf_counter() - t0

    def job_state(self, name: str) -> tuple[str | None, int, str]:
        """The job's state, tuples processed over all its tasks (progress), and a line saying how far it got."""
        res = self.cli("status", name, "--json", timeout=30, check=False)
        try:
            j = json.loads(res.stdout)
        except ValueError:
            return None, -1, "status unknown: " + _last_line(res)
        tasks = j.get("tasks", [])
        done = sum(t.get("processed", 0) for t in tasks if t.get("stage") == 0)
        error = f", error {j['error']}" if j.get("error") else ""
        return (j.get("state"), sum(t.get("processed", 0) for t in tasks),
                f"state {j.get('state')}, stage 0 processed {done:,}{error}")

    def _give_up(self, name: str, why: str, how: str) -> BenchError:
        self.cli("stop", name, timeout=60, check=False)
        return BenchError(f"{why} ({how}; the job was stopped)")

    def wait(self, name: str, deadline: float) -> list[str]:
        """`rainstorm wait` until the job ends, while watching its progress beside it: no progress for
        STALL_S seconds or the deadline stops the job. A `wait` that fails while the job still runs
        (e.g. "the leader is not alive" after a false failure detection) is retried and reported."""
        failures: list[str] = []
        cmd = [*rainstorm_bin(), "wait", name, "--dir", str(self.dir)]
        self._progress, self._moved = -1, time.perf_counter()
        self._waited_from = self._moved
        while True:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
                                    cwd=self.dir, stdin=subprocess.DEVNULL)
            try:
                out, err = self._watch(proc, name, deadline)
            finally:
                if proc.poll() is None:  # our own `rainstorm wait`
                    proc.kill()
                    proc.communicate()
            if proc.returncode == 0:
                return failures
            res = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
            state, _, how = self.job_state(name)
            if state != "running":
                raise BenchError(f"{_last_line(res)} ({how})")
            failures.append(_last_line(res))
            time.sleep(0.5)

    def _watch(self, proc: subprocess.Popen[str], name: str, deadline: float) -> tuple[str, str]:
        """Our `rainstorm wait`'s output once it exits; meanwhile the job's progress every few seconds."""
        while True:
            with contextlib.suppress(subprocess.TimeoutExpired):
                return proc.communicate(timeout=STATUS_EVERY_S)
            _, done, how = self.job_state(name)
            now = time.perf_counter()
            if done != self._progress:
                self._progress, self._moved = done, now
            if now > deadline:
                raise self._give_up(name, f"timed out ({now - self._waited_from:.0f} s into `rainstorm wait`)", how)
            if now - self._moved > STALL_S:
                raise self._give_up(name, f"stuck: no progress for {STALL_S} s", how)

    def run_job(self, job: Path, src: str, dest: str, tasks: int, name: str, timeout: float) -> Run:
        """Submit and wait, timed, with every node and redis sampled; the gossip counters of the run."""
        before, load = self.gossip(), load1()
        sampler = RssSampler(self.pids())
        t0 = time.perf_counter()
        sampler.start()
        failure: BenchError | None = None
        failures: list[str] = []
        try:
            self.cli("submit", str(job), "--src", src, "--dest", dest, "--tasks", str(tasks), "--name", name,
                     timeout=120)
            failures = self.wait(name, t0 + timeout)
        except BenchError as exc:
            failure = exc
        seconds = time.perf_counter() - t0
        cpu = sampler.cpu_s()
        rss = sampler.stop()
        total, nodes = gossip_delta(before, self.gossip())
        note = f"`rainstorm wait` failed {len(failures)}x while the job ran ({failures[0]})" if failures else None
        run = Run(seconds, rss, total, nodes, note, load, cpu)
        if failure:
            raise BenchError(str(failure), run)
        return run

    def keep_logs(self, dest: Path) -> None:
        """The node logs outlive the cluster's temporary directory (for a suspicion or a failure)."""
        dest.mkdir(parents=True, exist_ok=True)
        for log in self.dir.glob("*.log"):
            shutil.copy2(log, dest / log.name)

    def get(self, name: str, local: Path) -> Path:
        self.cli("dfs", "get", name, str(local), timeout=300)
        return local


GOSSIP_KEYS = ("suspected", "declared_failed", "refuted")


def _last_line(res: subprocess.CompletedProcess[str]) -> str:
    lines = (res.stderr.strip() or res.stdout.strip()).splitlines()
    return (lines or [f"exit {res.returncode}"])[-1][:200]


Counters = dict[str, dict[str, int] | None]


def gossip_delta(before: Counters, after: Counters) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """The run's counters summed over the nodes, and per node where not zero; ``unanswered`` counts
    nodes that did not answer `node.info` after the run, ``no_counters`` those without the field."""
    total = {**dict.fromkeys(GOSSIP_KEYS, 0), "unanswered": 0}
    nodes: dict[str, dict[str, int]] = {}
    for node, now in after.items():
        if now is None:
            total["unanswered"] += 1
            continue
        if "missing" in now:
            total["no_counters"] = total.get("no_counters", 0) + 1
        old = before.get(node) or {}
        delta = {k: now.get(k, 0) - old.get(k, 0) for k in GOSSIP_KEYS}
        for k, v in delta.items():
            total[k] += v
        if any(delta.values()):
            nodes[node] = delta
    return total, nodes


def rainstorm_once(cluster: Cluster, src: str, tasks: int, work: Path, timeout: float) -> RunOnce:
    def once(i: int) -> tuple[Run, dict[str, int]]:
        name = f"count-{cluster.nodes}n{tasks}t-{i}"
        run = cluster.run_job(JOBS / "rainstorm_count.py", src, name, tasks, name, timeout)
        return run, read_counts(cluster.get(name, work / f"rainstorm-{name}.jsonl"))
    return once


# -- running the plan -----------------------------------------------------------------------------
def repeat(result: Result, once: RunOnce, runs: int, want: dict[str, int]) -> Result:
    """Run ``once`` ``runs`` times; a failure ends this system (not the benchmark) with one line."""
    for i in range(runs):
        try:
            run, counts = once(i)
        except (BenchError, OSError, subprocess.SubprocessError, ValueError) as exc:
            result.error = str(exc)
            failed = exc.run if isinstance(exc, BenchError) else None
            if failed:
                result.failed_run = failed
            say(f"[red]{result.label} run {i + 1}: {exc}[/red]" + (f"; measured until then: {describe(failed)}"
                                                                   if failed else ""))
            return result
        result.runs.append(run)
        bad = compare(counts, want)
        if bad:
            result.mismatch = f"run {i + 1}: {bad}"
            say(f"[bold red]MISMATCH {result.label} run {i + 1}: {bad}[/bold red]")
        say(f"{result.label} run {i + 1}/{runs}: {describe(run)}")
    return result


def describe(run: Run) -> str:
    """One line for the progress log: time, peak RSS, and for RainStorm the gossip counters per node."""
    g = f", gossip {fmt_gossip(run.gossip)}" if run.gossip is not None else ""
    g += "".join(f"; {n}: {fmt_gossip(d)}" for n, d in (run.gossip_nodes or {}).items())
    g += f" ({run.note})" if run.note else ""
    cpu = f", CPU {run.cpu_s:.1f} s" if run.cpu_s is not None else ""
    return f"{run.seconds:.2f} s{cpu}, peak RSS {fmt_rss(run.rss_mb)} MB{g}; load average before: {run.load_before:g}"


def rainstorm_results(data: DataSet, work: Path, systems: list[str], runs: int, timeout: float) -> list[Result]:
    """One cluster per node count (data uploaded once), every --tasks value of that count on it."""
    results = []
    for offset, nodes in enumerate(sorted({n for n, t in RAINSTORM_CONFIGS if f"rainstorm-{n}x{t}" in systems})):
        wanted = [(n, t) for n, t in RAINSTORM_CONFIGS if n == nodes and f"rainstorm-{n}x{t}" in systems]
        mine = [Result(f"rainstorm-{n}x{t}", f"RainStorm {n} nodes, --tasks {t}") for n, t in wanted]
        results += mine
        cluster = Cluster(nodes, offset)
        try:
            say(f"RainStorm: starting {nodes} nodes in {cluster.dir}")
            cluster.up()
            upload = cluster.upload(data, "access")
            say(f"RainStorm: `rainstorm dfs create` of {data.size / MB:.0f} MB took {upload:.1f} s "
                f"({data.size / MB / upload:.1f} MB/s; not timed)")
            for res, (_n, tasks) in zip(mine, wanted, strict=True):
                res.upload_s = round(upload, 2)
                repeat(res, rainstorm_once(cluster, "access", tasks, work, timeout), runs, data.counts)
        except BenchError as exc:
            say(f"[red]RainStorm {nodes} nodes: {exc}[/red]")
            for res in mine:
                if not res.runs and not res.error:
                    res.error = str(exc)
        finally:
            cluster.down()
            cluster.keep_logs(work / f"rainstorm-{nodes}-nodes-logs")
            shutil.rmtree(cluster.dir, ignore_errors=True)
    return results


def memory_check(lines: int, work: Path, timeout: float) -> dict[str, Any]:
    """A filter-only job over a big source on 5 nodes, --tasks 2: each node's peak RSS vs the goal."""
    data = generate(lines)
    out: dict[str, Any] = {"lines": lines, "mb": round(data.size / MB, 1), "nodes": 5, "tasks": 2,
                           "goal_mb": MEMORY_GOAL_MB}
    cluster = Cluster(5, 7)
    try:
        say(f"memory check: {data.size / MB:.0f} MB, 5 nodes, --tasks 2 (cluster in {cluster.dir})")
        cluster.up()
        out["upload_s"] = round(cluster.upload(data, "big"), 2)
        say(f"memory check: `rainstorm dfs create` took {out['upload_s']:.1f} s (not timed)")
        run = cluster.run_job(JOBS / "rainstorm_filter.py", "big", "big500", 2, "filter500", timeout)
        out.update(seconds=round(run.seconds, 2), cpu_s=run.cpu_s, rss_mb=run.rss_mb, gossip=run.gossip,
                   gossip_nodes=run.gossip_nodes, note=run.note, load_before=run.load_before)
        kept = cluster.get("big500", work / "big500.jsonl")
        keys, n = set(), 0
        with open(kept, encoding="utf-8") as f:
            for line in f:
                key, value = json.loads(line)
                keys.add(key)
                n += 1
                if value.split(",")[4] != "500":
                    out["mismatch"] = f"kept a line that is not status 500: {value!r}"
        if n != data.n500 or len(keys) != n:  # each kept line exactly once
            out["mismatch"] = f"{n:,} lines kept ({len(keys):,} distinct), want {data.n500:,}"
        kept.unlink()
    except BenchError as exc:
        out["error"] = str(exc)
        if exc.run:  # the memory the nodes took before the failure is still worth seeing
            out.update(seconds=round(exc.run.seconds, 2), rss_mb=exc.run.rss_mb, gossip=exc.run.gossip,
                       gossip_nodes=exc.run.gossip_nodes)
        say(f"[red]memory check: {exc}[/red]")
    finally:
        cluster.down()
        cluster.keep_logs(work / "memory-check-logs")
        shutil.rmtree(cluster.dir, ignore_errors=True)
    return out


# -- reporting ------------------------------------------------------------------------------------
def fmt_rss(rss: dict[str, float]) -> str:
    """One process: its MB; groups of node-N / redis-N: the largest of each; others by name."""
    if len(rss) == 1:
        return f"{next(iter(rss.values())):.0f}"
    rss = {k: v for k, v in rss.items() if v >= 5 or "/" not in k}  # short-lived helpers (readlink, chmod)
    groups: dict[str, list[float]] = {}
    for label, mb in rss.items():
        base = label.split("/")[0].split("#")[0]
        group = base.rsplit("-", 1)[0] if base.rsplit("-", 1)[-1].isdigit() and "/" not in label else label
        groups.setdefault(group, []).append(mb)
    return ", ".join(f"{g} {max(v):.0f}" if len(v) == 1 else f"{g} ≤{max(v):.0f}"
                     for g, v in sorted(groups.items(), key=lambda kv: -max(kv[1])))


def fmt_gossip(g: dict[str, int] | None) -> str:
    if g is None:
        return ""
    parts = [f"{k.replace('_', ' ')} {v}" for k, v in g.items() if v or k in GOSSIP_KEYS]
    return ", ".join(parts)


def suspicion(res: Result) -> str:
    g = res.gossip()
    text = []
    if g is not None:
        bad = any(g.get(k, 0) for k in (*GOSSIP_KEYS, "unanswered", "no_counters"))
        text.append(("SUSPECTED: " if g.get("suspected") else "") + fmt_gossip(g) if bad else "none")
        refuted = sorted({n for r in res.measured for n, d in (r.gossip_nodes or {}).items() if d.get("refuted")})
        if refuted:
            text.append(f"refuted by {', '.join(refuted)} (the suspected)")
    best = res.best_run
    notes = sorted({r.note for r in res.measured if r.note and (r is best or "failed" in r.note)})
    text += notes
    if res.mismatch:
        text.append(f"MISMATCH {res.mismatch}")
    if res.error:
        text.append(f"ERROR {res.error}")
    if res.note:
        text.append(res.note)
    return "; ".join(text)


def ratio(t: float | None, base: float | None) -> float | None:
    return round(t / base, 2) if t and base else None


def rows(results: list[Result], lines: int) -> list[dict[str, Any]]:
    base = {r.key: r.best for r in results}
    out = []
    for r in results:
        best, med = r.best, r.median
        out.append({
            "system": r.label, "key": r.key,
            "time_s": None if best is None else round(best, 2),
            "median_s": None if med is None else round(med, 2),
            "lines_per_s": None if not best else round(lines / best),
            "cpu_s": r.best_run.cpu_s if r.best_run else None,
            "rss": fmt_rss(r.rss()) + ("" if r.runs else " (failed run)") if r.measured else "",
            "x_plain": ratio(best, base.get("plain")),
            "x_bytewax": ratio(best, base.get("bytewax")),
            "suspicions": suspicion(r),
            "flag": bool(r.error or r.mismatch or (r.gossip() or {}).get("suspected")),
        })
    return out


def show(table_rows: list[dict[str, Any]], runs: int, title: str) -> None:
    t = Table(title=title)
    for col, just in [("system", "left"), ("job time (s)", "right"), ("lines/s", "right"), ("CPU (s)", "right"),
                      ("peak RSS (MB)", "left"), ("x plain", "right"), ("x bytewax", "right"),
                      ("suspicions / notes", "left")]:
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in table_rows:
        t.add_row(r["system"], fmt_time(r, runs), "" if r["lines_per_s"] is None else f"{r['lines_per_s']:,}",
                  fmt_cpu(r["cpu_s"]),
                  r["rss"], fmt_x(r["x_plain"]), fmt_x(r["x_bytewax"]), r["suspicions"],
                  style="bold red" if r["flag"] else None)
    console.print(t)


def fmt_time(r: dict[str, Any], runs: int) -> str:
    if r["time_s"] is None:
        return "-"
    return f"{r['time_s']:.2f}" + (f" (med {r['median_s']:.2f})" if runs > 1 else "")


def fmt_cpu(cpu: float | None) -> str:
    return "" if cpu is None else f"{cpu:.1f}"


def fmt_x(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}x"


def show_memory(mem: dict[str, Any]) -> None:
    console.print(f"[bold]memory check[/bold]: {mem['lines']:,} lines ({mem['mb']:.0f} MB), filter-only, 5 nodes, "
                  f"--tasks 2; goal: every node process < {mem['goal_mb']} MB")
    t = Table()
    for col in ("process", "peak RSS (MB)", "goal"):
        t.add_column(col)
    for label, mb in sorted(mem.get("rss_mb", {}).items()):
        node = label.startswith("node-") and "/" not in label
        t.add_row(label, f"{mb:.0f}", ("ok" if mb < mem["goal_mb"] else "OVER") if node else "(redis: not in goal)",
                  style="bold red" if node and mb >= mem["goal_mb"] else None)
    console.print(t)
    extra = [f"job {mem['seconds']:.1f} s, CPU {mem.get('cpu_s')} s" if "seconds" in mem else "",
             f"gossip {fmt_gossip(mem.get('gossip'))} {mem.get('gossip_nodes') or ''}" if mem.get("gossip") else "",
             mem.get("note") or "",
             f"[bold red]ERROR {mem['error']}[/bold red]" if mem.get("error") else "",
             f"[bold red]MISMATCH {mem['mismatch']}[/bold red]" if mem.get("mismatch") else ""]
    console.print("  ".join(e for e in extra if e))


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for pkg in ("bytewax", "pyspark", "psutil"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[pkg] = importlib.metadata.version(pkg)
    java = subprocess.run(["java", "-version"], capture_output=True, text=True) if shutil.which("java") else None
    return {"summary": machine(), "cpu_count": os.cpu_count(), "cpu_model": model,
            "ram_gib": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version(),
            "os": f"{platform.system()} {platform.release()}", "packages": versions,
            "java": java.stderr.strip().splitlines()[0] if java and java.stderr else None}


def code_state() -> dict[str, Any]:
    """The commit, and the files of the measured packages that differ from it: the nodes run the work tree."""
    def git(*args: str) -> str:
        res = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return res.stdout.strip() if res.returncode == 0 else ""
    dirty = git("status", "--porcelain", "--", "rainstorm", "hydfs", "gossip", "cli.py").splitlines()
    return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted": [line[3:] for line in dirty]}


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    packages = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    out = ["# Streaming throughput (issue 10)", "",
           f"`{report['command']}`, {report['started']}. Machine: {m['cpu_count']} x {m['cpu_model']}, "
           f"{m['ram_gib']} GiB, Python {m['python']}, {m['os']}; {packages}"
           + (f"; {m['java']}" if m.get("java") else "") + ".", ""]
    code = report.get("code") or {}
    if code:
        changed = code["uncommitted"]
        out += [f"Code: commit {code['commit']}" + (f", with uncommitted changes in {len(changed)} file(s) of "
                f"rainstorm/ hydfs/ gossip/ cli.py ({', '.join(changed[:8])}{', ...' if len(changed) > 8 else ''})"
                if changed else ", clean") + ".", ""]
    if report["data"]:
        out += _markdown_systems(report)
    if report.get("memory"):
        out += _markdown_memory(report["memory"])
    out += ["", "Notes: times include interpreter / JVM start. The sampler (a thread of the benchmark, every 50 ms) "
            "shares the machine's cores with the systems. RainStorm runs reuse one cluster per node count "
            "(the data is uploaded once). Spark runs with local[2], 2 shuffle partitions and 16 MB splits. "
            "`suspected` / `declared_failed` / `refuted` are the nodes' SWIM counters (`node.info` -> gossip) "
            "over the run, summed; nothing crashes here, so any suspicion is a false one. The machine may be shared: "
            "the 1-minute load average before each run is given above (2 cores; anything over ~1 is someone "
            "else's work competing with the run).", ""]
    return "\n".join(out)


def _markdown_systems(report: dict[str, Any]) -> list[str]:
    d = report["data"]
    out = [f"Data: {d['lines']:,} lines, {d['mb']} MB (`{d['file']}`, seed {SEED}); {d['n500']:,} with status 500 "
           f"over {d['paths']} paths. The job: keep status 500, take the path, running count per path. "
           f"Job time is wall clock, best of {report['runs']} (median beside it when more than one); "
           "x plain / x bytewax are job time over theirs (higher is slower). CPU is the user + system seconds of "
           "the system's processes in that run (RainStorm: its nodes and redis-servers, not the CLI), less "
           "sensitive than wall time to other work on the machine.", "",
           "| system | job time (s) | lines/s | CPU (s) | peak RSS (MB) | x plain | x bytewax | suspicions / notes |",
           "|---|---:|---:|---:|---|---:|---:|---|"]
    for r in report["table"]:
        cells = [r["system"], fmt_time(r, report["runs"]), "" if r["lines_per_s"] is None else f"{r['lines_per_s']:,}",
                 fmt_cpu(r["cpu_s"]), r["rss"], fmt_x(r["x_plain"]), fmt_x(r["x_bytewax"]),
                 r["suspicions"].replace("|", "/")]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "Peak RSS per process (MB, the largest over the runs):", ""]
    for s in report["systems"]:
        if s["rss_mb"]:
            upload = f" (upload by `rainstorm dfs create`: {s['upload_s']} s, not timed)" if s.get("upload_s") else ""
            loads = ", ".join(f"{r['load_before']:g}" for r in s["runs"])
            out.append(f"- {s['label']}: " + ", ".join(f"{k} {v:.0f}" for k, v in s["rss_mb"].items()) + upload
                       + (f"; load average before the run(s): {loads}" if loads else ""))
    return out


def _markdown_memory(mem: dict[str, Any]) -> list[str]:
    facts = [f"Job {mem['seconds']} s, CPU {mem.get('cpu_s')} s, load average before {mem.get('load_before')}"
             if "seconds" in mem else "", f"upload {mem['upload_s']} s (not timed)"
             if "upload_s" in mem else "", f"gossip over the run: {fmt_gossip(mem['gossip'])}" if mem.get("gossip")
             else "", mem.get("note") or "", f"**ERROR** {mem['error']}" if mem.get("error") else "",
             f"**MISMATCH** {mem['mismatch']}" if mem.get("mismatch") else ""]
    title = f"## Memory check: {mem['lines']:,} lines ({mem['mb']} MB) through a filter-only job, 5 nodes, --tasks 2"
    goal = f"Goal: every node process under {mem['goal_mb']} MB. " + "; ".join(f for f in facts if f) + "."
    out = ["", title, "", goal, "",
           "| process | peak RSS (MB) | goal |", "|---|---:|---|"]
    for label, mb in sorted(mem.get("rss_mb", {}).items()):
        node = label.startswith("node-") and "/" not in label
        out.append(f"| {label} | {mb:.0f} | {('ok' if mb < mem['goal_mb'] else '**over**') if node else '-'} |")
    return out


# -- main -----------------------------------------------------------------------------------------
def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"{QUICK_LINES:,} lines, no 5-node runs, no memory check")
    p.add_argument("--only", help="comma list of: " + ", ".join([*ALL_SYSTEMS, "rainstorm"]))
    p.add_argument("--lines", type=int, help=f"lines of the data set (default {FULL_LINES:,})")
    p.add_argument("--runs", type=int, default=1, help="runs of each system: best and median are reported")
    p.add_argument("--no-spark", action="store_true", help="leave Spark out (and do not install it)")
    p.add_argument("--memory", action="store_true", help="run the memory check (part of the default full run)")
    p.add_argument("--memory-lines", type=int, help=f"lines of the memory check's source (default {MEMORY_LINES:,})")
    p.add_argument("--memory-size", type=size_arg, help="the memory check's source by size instead (e.g. 2GiB, "
                   f"500MB): lines of about {LINE_BYTES} bytes; implies --memory")
    p.add_argument("--timeout", type=float, help="seconds one run may take (default from the line count; RainStorm "
                   f"checks it every {STATUS_EVERY_S} s and also stops a job with no progress for {STALL_S} s)")
    p.add_argument("--out", type=Path, help="where results.json / results.md go")
    a = p.parse_args()
    if a.only:
        names = [s.strip() for s in a.only.split(",") if s.strip()]
        unknown = [s for s in names if s not in [*ALL_SYSTEMS, "rainstorm"]]
        if unknown:
            p.error(f"unknown system(s) {', '.join(unknown)}; known: {', '.join([*ALL_SYSTEMS, 'rainstorm'])}")
        a.systems = [s for s in ALL_SYSTEMS if s in names or (s.startswith("rainstorm-") and "rainstorm" in names)]
    else:
        a.systems = list(QUICK_SYSTEMS if a.quick else ALL_SYSTEMS)
    if a.memory_size:
        a.memory, a.memory_lines = True, a.memory_lines or math.ceil(a.memory_size / LINE_BYTES)
        # a one-off size: its figures go beside the records, not over docs/bench/streaming's
        a.out = a.out or ROOT / f"bench/out/streaming/memory-{a.memory_size}"
    if a.memory and "memory" not in a.systems:
        a.systems.append("memory")
    if a.no_spark and "spark" in a.systems:
        a.systems.remove("spark")
    a.lines = a.lines or (QUICK_LINES if a.quick else FULL_LINES)
    a.memory_lines = a.memory_lines or (QUICK_LINES * 2 if a.quick else MEMORY_LINES)
    a.out = a.out or (ROOT / "bench/out/streaming/quick" if a.quick else ROOT / "docs/bench/streaming")
    if a.runs < 1:
        p.error("--runs must be at least 1")
    return a


LINE_BYTES = 53.55   # the data set's mean line length (measured on the 2,000,000-line file)


def size_arg(text: str) -> int:
    """``2GiB``, ``1.5GB``, ``500MB``, ``300MiB`` or plain bytes."""
    units = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "kb": 10**3, "mb": 10**6, "gb": 10**9, "b": 1, "": 1}
    t = text.strip().lower()
    num = t.rstrip("kmgib")
    try:
        return int(float(num) * units[t[len(num):]])
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 2GiB, 500MB)") from None


def job_timeout(a: argparse.Namespace, lines: int) -> float:
    """Generous (a floor of 5,000 lines/s, at least 5 minutes) unless --timeout says otherwise; a RainStorm
    job that makes no progress for STALL_S seconds is stopped before that."""
    return a.timeout or max(300.0, lines / 5000)


def run_all(a: argparse.Namespace, data: DataSet, work: Path) -> list[Result]:
    results: list[Result] = []
    timeout = job_timeout(a, data.lines)
    simple: list[tuple[str, str, Callable[[], RunOnce]]] = [
        ("plain", "plain Python", lambda: plain_once(data, work, timeout)),
        ("bytewax", "Bytewax, 1 worker", lambda: bytewax_once(data, work, timeout, recovery=False)),
        ("bytewax-recovery", "Bytewax, recovery (snapshot 10 s)", lambda: bytewax_once(data, work, timeout, True)),
        ("spark", "Spark Structured Streaming", lambda: spark_once(data, work, timeout)),
    ]
    for key, label, make in simple:
        if key not in a.systems:
            continue
        res = Result(key, label)
        results.append(res)
        if key == "spark":
            res.note = spark_ready(allow_install=True)
            if res.note:
                say(res.note)
                continue
            res.note = "JVM start included"  # the query's own time is in each run's note
        say(f"{label}: {a.runs} run(s) over {data.lines:,} lines")
        repeat(res, make(), a.runs, data.counts)
        if key == "spark" and res.error:  # Spark is a reference, not the subject: its failure is a skip
            res.note, res.error = f"skipped: spark failed: {res.error}", None
    rs = [s for s in a.systems if s.startswith("rainstorm-")]
    if rs:
        results += rainstorm_results(data, work, rs, a.runs, timeout)
    return results


def main() -> int:
    a = parse()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    info, code = machine_info(), code_state()
    say(f"{info['summary']}; systems: {', '.join(a.systems)}")
    DATA.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=DATA))
    data = generate(a.lines) if any(s != "memory" for s in a.systems) else None
    results: list[Result] = []
    if data:
        say(f"data: {data.path.relative_to(ROOT)}, {data.lines:,} lines, {data.size / MB:.1f} MB, "
            f"{data.n500:,} status-500 lines over {len(data.counts)} paths")
        results = run_all(a, data, work)
    mem = memory_check(a.memory_lines, work, job_timeout(a, a.memory_lines)) if "memory" in a.systems else None
    table_rows = rows(results, data.lines) if data else []
    console.print()
    if data:
        show(table_rows, a.runs, f"streaming: {data.lines:,} lines ({data.size / MB:.0f} MB), keep status 500, "
                                 "running count per path")
    if mem:
        show_memory(mem)
    report = {
        "command": "python bench/streaming.py " + " ".join(sys.argv[1:]), "started": started, "machine": info,
        "runs": a.runs, "systems_run": a.systems, "code": code,
        "data": data and {"file": str(data.path.relative_to(ROOT)), "lines": data.lines, "mb": round(data.size / MB, 1),
                          "n500": data.n500, "paths": len(data.counts), "seed": SEED},
        "table": table_rows,
        "systems": [{**asdict(r), "rss_mb": r.rss(), "gossip": r.gossip(), "best_s": r.best, "median_s": r.median}
                    for r in results],
        "memory": mem,
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (a.out / "results.md").write_text(markdown(report))
    say(f"wrote {a.out / 'results.json'} and {a.out / 'results.md'}")
    return verdict(results, mem, work)


def verdict(results: list[Result], mem: dict[str, Any] | None, work: Path) -> int:
    """Exit status: 1 on any mismatch or failure (said loudly); the work dir is kept then, for the logs."""
    mismatches = [f"{r.label}: {r.mismatch}" for r in results if r.mismatch]
    if mem and mem.get("mismatch"):
        mismatches.append(f"memory check: {mem['mismatch']}")
    errors = [f"{r.label}: {r.error}" for r in results if r.error] + (
        [f"memory check: {mem['error']}"] if mem and mem.get("error") else [])
    for m in mismatches:
        console.print(f"[bold red on white] COUNTS DIFFER [/] {m}")
    for e in errors:
        console.print(f"[bold red]FAILED[/] {e}")
    suspected = [r.label for r in results if (r.gossip() or {}).get("suspected")] + (
        ["memory check"] if mem and (mem.get("gossip") or {}).get("suspected") else [])
    if suspected:
        console.print(f"[bold red]FALSE SUSPICIONS[/] (nothing crashed) in: {', '.join(suspected)}")
    if mismatches or errors or suspected:
        console.print(f"logs and outputs kept in {work}")
        return 1 if mismatches or errors else 0
    shutil.rmtree(work, ignore_errors=True)
    console.print("[green]all systems agree on every count[/green]")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""HyDFS small-append latency on a real 5-node local cluster, idle and while a RainStorm job runs.

    python bench/hydfs_small.py [--count 3000] [--seconds 20] [--sizes 1KB,4KB,16KB,64KB]
                                [--csv-mb 50] [--no-job] [--wait-quiet S] [--repeat-if-busy K] [--profile DIR]
                                [--out docs/bench/hydfs] [--base-port 24000]

One client appends sequentially to one file per size (``--count`` appends, at most ``--seconds``
per size, after 50 unmeasured ones) and the wall time of each append is recorded: p50 / p99 / max.
Twice: (a) idle; (b) while a job (``FilteredTransform(lambda k, v: ",500," in v)``, 2 tasks per
stage) reads a ``--csv-mb`` CSV from HyDFS on the same cluster; such a job takes about as long as
its submission, so the next is submitted as soon as the last submission returned.

Baseline, in the same run and the same phase: sequential RPCs through ``net.rpc`` with the same
payload to a handler in another process on 127.0.0.1 that answers at once (``rpc``: a small answer,
the shape of an append; ``echo``: the payload back). Each append p99 is shown as a ratio to the
``rpc`` p99 of its phase. Goal checked: 4 KB append p99 at most 5 ms idle.

The machine may be shared: every series records the cores the cluster used and the cores every
other process used meanwhile; ``--wait-quiet S`` waits for the others before each series and
``--repeat-if-busy K`` runs a disturbed series again (all attempts are kept).

Results go to ``--out``/small.json and small.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, median, pct
from bench.hydfs import NODES, cpu_seconds, say
from bench.hydfs_report import KB, human
from hydfs.api import Client
from hydfs.context import CoreConfig
from hydfs.ring import Ring
from net.rpc import RpcClient, RpcServer
from net.wire import derive_key
from rainstorm import cluster as local
from rainstorm.config import Config

GOAL_SIZE, GOAL_P99 = 4 * KB, 0.005
QUIET = 0.2  # --wait-quiet: before each series, wait for other processes to use fewer cores than this
BUSY = 0.3   # --repeat-if-busy: a series during which they used more is run again
WARMUP = 50
ECHO_KEY = derive_key("hydfs-small-bench")
JOB = 'from rainstorm import FilteredTransform\nstages = [FilteredTransform(lambda k, v: ",500," in v)]\n'


def binary_size(text: str) -> int:
    """``4KB`` -> 4096 (sizes are binary here, as in bench/hydfs.py)."""
    t = text.strip().upper().removesuffix("B")
    unit = {"K": KB, "M": 1 << 20}.get(t[-1:], 1)
    return int(float(t.rstrip("KM")) * unit)


def summary(lat: list[float]) -> dict[str, Any]:
    return {"n": len(lat), "p50": median(lat), "p90": pct(lat, 90), "p99": pct(lat, 99), "p999": pct(lat, 99.9),
            "max": max(lat) if lat else float("nan"), "mean": sum(lat) / len(lat) if lat else float("nan"),
            "slowest": sorted(lat)[-10:]}


class CpuMeter:
    """Cores busy during a series: ours (the cluster's processes and this one) and everybody else's
    (this machine is shared: another benchmark on it shows up as ``foreign``)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.t, self.busy, self.mine = self._now()

    def _now(self) -> tuple[float, float, float]:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")   # all but idle and iowait
        t = os.times()  # this process, and the children it waited for (the CLI calls that submit jobs)
        mine = sum(cpu_seconds(p) for p in self.pids) + t.user + t.system + t.children_user + t.children_system
        return time.perf_counter(), busy, mine

    def take(self) -> dict[str, float]:
        t, busy, mine = self._now()
        wall = t - self.t
        return {"mine": (mine - self.mine) / wall, "foreign": max(0.0, (busy - self.busy) - (mine - self.mine)) / wall}


async def wait_quiet(pids: list[int], limit: float, timeout: float) -> float:
    """Wait (up to ``timeout``) until other processes on this shared machine use less than ``limit``
    cores over a second; returns the seconds waited (the series still records what others used)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        cpu = CpuMeter(pids)
        await asyncio.sleep(1.0)
        if cpu.take()["foreign"] < limit:
            break
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- the raw RPC baseline


def echo_server(port: int) -> None:
    """``--echo PORT``: an RPC server with a handler that answers at once (run in its own process)."""

    async def main() -> None:
        rpc = RpcServer(ECHO_KEY)

        async def ack(a: dict[str, Any]) -> int:
            return len(a["d"])

        async def echo(a: dict[str, Any]) -> bytes:
            return bytes(a["d"])

        rpc.register("ack", ack)
        rpc.register("echo", echo)
        await rpc.start("127.0.0.1", port)
        await asyncio.Event().wait()

    asyncio.run(main())


class Echo:
    def __init__(self, port: int) -> None:
        self.addr = f"127.0.0.1:{port}"
        self.proc = subprocess.Popen([sys.executable, __file__, "--echo", str(port)])

    async def measure(self, sizes: list[int], count: int, seconds: float, pids: list[int],
                      quiet_wait: float) -> dict[str, Any]:
        rpc = RpcClient(ECHO_KEY)
        try:
            for _ in range(200):
                try:
                    await rpc.call(self.addr, "ack", {"d": b""}, timeout=1.0)
                    break
                except Exception:
                    await asyncio.sleep(0.05)
            out: dict[str, Any] = {}
            for method, label in (("ack", "rpc"), ("echo", "echo")):
                for size in sizes:
                    payload = random.Random(size).randbytes(size)
                    for _ in range(WARMUP):
                        await rpc.call(self.addr, method, {"d": payload})
                    if quiet_wait:
                        await wait_quiet([*pids, self.proc.pid], QUIET, quiet_wait)
                    lat: list[float] = []
                    cpu = CpuMeter([*pids, self.proc.pid])
                    end = time.perf_counter() + seconds
                    while len(lat) < count and time.perf_counter() < end:
                        t = time.perf_counter()
                        await rpc.call(self.addr, method, {"d": payload})
                        lat.append(time.perf_counter() - t)
                    out.setdefault(label, {})[size] = {**summary(lat), "cpu": cpu.take()}
            return out
        finally:
            await rpc.close()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


# ----------------------------------------------------------------------------- appends


def name_led_by(ids: list[str], primary: str, prefix: str) -> str:
    """A file name whose primary is ``primary`` (so every size is measured against the same node)."""
    ring = Ring(ids)
    return next(n for n in (f"{prefix}-{k}" for k in range(100_000)) if ring.primary(n) == primary)


async def appends(cl: Client, name: str, size: int, count: int, seconds: float, pids: list[int],
                  quiet_wait: float, profile: Any = None) -> dict[str, Any]:
    payload = random.Random(size).randbytes(size)
    await cl.create(name, b"")
    for _ in range(WARMUP):
        await cl.append(name, payload)
    waited = await wait_quiet(pids, QUIET, quiet_wait) if quiet_wait else 0.0
    retries = cl.core.stats["retries"]
    lat: list[float] = []
    at: list[float] = []
    spy = profile(seconds) if profile else None
    cpu = CpuMeter(pids)
    start = time.perf_counter()
    while len(lat) < count and time.perf_counter() - start < seconds:
        t = time.perf_counter()
        await cl.append(name, payload)
        lat.append(time.perf_counter() - t)
        at.append(t - start)
    res = summary(lat)
    res["slowest_at"] = [round(at[k], 3) for k in sorted(range(len(lat)), key=lat.__getitem__)[-10:]]
    res["cpu"] = cpu.take()
    if spy is not None:
        spy.send_signal(signal.SIGINT)  # py-spy writes what it sampled on Ctrl-C (not on SIGTERM)
        await asyncio.to_thread(spy.wait)
    res["retries"] = cl.core.stats["retries"] - retries
    res["waited_for_quiet"] = waited
    res["primary"] = (await cl.ls(name))["replicas"][0]
    await cl.rm(name)
    return res


# ----------------------------------------------------------------------------- the job as load


def cli(env: dict[str, str], *args: str, timeout: float = 600) -> str:
    res = subprocess.run([sys.executable, "-m", "rainstorm", *args], env=env, capture_output=True, text=True,
                         timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"rainstorm {' '.join(args)}: {res.stderr.strip() or res.stdout.strip()}")
    return res.stdout


def make_csv(path: Path, mb: int) -> int:
    """A seeded access-log CSV of about ``mb`` MiB; about 1 line in 20 has status 500."""
    rng = random.Random(7)
    paths = [f"/api/v1/item/{k}" for k in range(200)]
    lines = 0
    with open(path, "w") as f:
        while f.tell() < mb << 20:
            rows = []
            for _ in range(1000):
                status = 500 if rng.random() < 0.05 else rng.choice((200, 200, 200, 304, 404))
                rows.append(f"{lines},10.0.{rng.randrange(256)}.{rng.randrange(256)},{status},"
                            f"{rng.randrange(100, 50000)},{rng.choice(paths)},{rng.random():.6f}\n")
                lines += 1
            f.write("".join(rows))
    return lines


class Load:
    """Keeps a job running on the cluster: jobs are submitted with the CLI and watched through the
    leader's RPC (a CLI call per poll would be load of its own). A 50 MiB job reads its file in about
    as long as a submission takes, so the next one is submitted as soon as the last submission
    returned: one or two jobs are running nearly all the time."""

    def __init__(self, env: dict[str, str], job_file: Path, src: str, rpc: RpcClient, leader: str) -> None:
        self.env, self.job_file, self.src = env, job_file, src
        self.rpc, self.leader = rpc, leader
        self.jobs: list[dict[str, Any]] = []
        self.polls = self.running = 0   # how often the watcher looked, and saw a job running
        self.task: asyncio.Task[None] | None = None
        self._submitting: asyncio.Task[None] | None = None

    def _submit(self) -> None:
        name = f"load{len(self.jobs) + 1}"
        self.jobs.append({"name": name, "submitted": time.time(), "state": "submitting"})
        cli(self.env, "submit", str(self.job_file), "--src", self.src, "--dest", f"out/{name}", "--tasks", "2",
            "--name", name)
        self.jobs[-1].update(state="running", started=time.time())

    async def _rows(self) -> dict[str, dict[str, Any]]:
        rows = [j for j in await self.rpc.call(self.leader, "control.jobs", timeout=10) if j.get("latest")]
        return {r["name"]: r for r in rows}

    async def start(self) -> list[str]:
        """Submit the first job; return the nodes its source tasks were placed on."""
        await asyncio.to_thread(self._submit)
        for _ in range(600):
            st = (await self._rows()).get(self.jobs[-1]["name"], {})
            src = [t for t in st.get("tasks", []) if t.get("stage") == 0]
            if src and all(t.get("node") for t in src):
                self.jobs[-1]["source_nodes"] = sorted({t["node"] for t in src})
                break
            await asyncio.sleep(0.2)
        self.task = asyncio.create_task(self._keep())
        return list(self.jobs[-1].get("source_nodes", []))

    def mark(self) -> tuple[int, int]:
        return self.polls, self.running

    def share(self, since: tuple[int, int]) -> float:
        """The share of polls since ``mark()`` that saw a job running."""
        polls = self.polls - since[0]
        return (self.running - since[1]) / polls if polls else float("nan")

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            try:
                rows = await self._rows()
            except Exception as exc:  # a slow leader answer: look again
                self.jobs[-1]["last_error"] = str(exc)
                continue
            self.polls += 1
            now, running = time.time(), False
            for job in self.jobs:
                st = rows.get(job["name"])
                if st is None or job["state"] == "submitting":
                    continue
                job["state"] = st["state"]
                running = running or st["state"] == "running"
                if st["state"] != "running" and "ended" not in job:
                    job["ended"] = now
                    job["processed"] = sum(t.get("processed", 0) for t in st.get("tasks", []) if t.get("stage") == 0)
            self.running += running
            if self._submitting is None or self._submitting.done():
                self._submitting = asyncio.create_task(asyncio.to_thread(self._submit))

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self._submitting is not None:
            await self._submitting
        for job in self.jobs:
            if job.get("state") == "running":
                await asyncio.to_thread(cli, self.env, "stop", job["name"])
                job["state"] = "stopped by the bench"


# ----------------------------------------------------------------------------- main


def cluster_pids(cluster: dict[str, Any]) -> list[int]:
    """The nodes' and their Redis servers' pids (whose CPU counts as ours)."""
    pids = []
    for n in cluster["nodes"]:
        pids += [p for p in (n.get("pid"), n.get("redis_pid")) if p]
    return pids


def spy(pid: int, out: Path) -> Any:
    """``profile(seconds)`` for :func:`appends`: py-spy on ``pid`` for that long, without pausing it."""
    def start(seconds: float) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--rate", "500", "--nonblocking",
                                 "--format", "raw", "--duration", str(int(seconds) + 1), "--output", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return start


async def phase(label: str, cluster: dict[str, Any], echo: Echo, sizes: list[int], primary: str,
                a: argparse.Namespace, load: Load | None = None) -> dict[str, Any]:
    rpc = RpcClient(derive_key(cluster["secret"]))
    cl = Client(rpc, [n["address"] for n in cluster["nodes"]])
    ids = [n["id"] for n in cluster["nodes"]]
    pids = cluster_pids(cluster)
    out: dict[str, Any] = {"primary": primary, "appends": {}}
    try:
        for size in sizes:
            profile = None
            if a.profile and size == GOAL_SIZE:
                profile = spy(local.node_of(cluster, primary)["pid"], a.profile / f"primary-{label}-4KB.txt")
            attempts: list[dict[str, Any]] = []
            while True:  # a series other processes disturbed is run again (each attempt is kept)
                mark = load.mark() if load else None
                res = await appends(cl, name_led_by(ids, primary, f"small/{label}-{size}-{len(attempts)}"), size,
                                    a.count, a.seconds, pids, a.wait_quiet, profile)
                profile = None
                if load and mark:
                    res["job_running"] = load.share(mark)
                attempts.append(res)
                if res["cpu"]["foreign"] <= BUSY or len(attempts) > a.repeat_if_busy:
                    break
                say(f"  {label}: {human(size):>6}: other processes used {res['cpu']['foreign']:.2f} cores "
                    f"(p99 {res['p99'] * 1e3:.2f} ms): again")
            res = min(attempts, key=lambda x: x["cpu"]["foreign"])
            res["attempts"] = [{k: x[k] for k in ("n", "p50", "p99", "max", "cpu")} for x in attempts]
            out["appends"][size] = res
            say(f"  {label}: {human(size):>6} appends: n={res['n']} p50 {res['p50'] * 1e3:.2f} ms  "
                f"p99 {res['p99'] * 1e3:.2f} ms  max {res['max'] * 1e3:.1f} ms  (primary {res['primary']}, "
                f"retries {res['retries']}; cores busy: ours {res['cpu']['mine']:.2f}, "
                f"others {res['cpu']['foreign']:.2f})")
        out["base"] = await echo.measure(sizes, a.count, min(a.seconds, 5.0), pids, a.wait_quiet)
        for size in sizes:
            r = out["base"]["rpc"][size]
            say(f"  {label}: {human(size):>6} raw rpc: p50 {r['p50'] * 1e3:.3f} ms  p99 {r['p99'] * 1e3:.3f} ms  "
                f"(cores busy: others {r['cpu']['foreign']:.2f})")
    finally:
        await cl.close()
        await rpc.close()
    return out


def report(res: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "small.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    lines = ["# HyDFS small-append latency", "",
             f"`{res['command']}` on {res['machine']}.", "",
             "Sequential appends from one client to one file per size on a 5-node local cluster (each node its own "
             "process with its Redis, 3 replicas, `fsync = \"interval\"`): the wall time of each `Client.append`, "
             f"after {WARMUP} unmeasured ones, all files led by one primary per phase. Raw RPC: the same payload "
             "through `net.rpc` to a handler in another process that answers at once (`rpc`: a small answer, "
             "the shape of an append; `echo`: the payload back), measured in the same phase. Ratio = append p99 / "
             "raw rpc p99. Cores busy: the CPU the cluster and the bench used during the series (ours) and what "
             "other processes on this shared machine used (others), in cores of the machine's 2. A series "
             f"during which others used more than {BUSY} cores was run again (`--repeat-if-busy`) and the least "
             "disturbed attempt is shown (\"best of N\"); every attempt is in small.json.", ""]
    for label, title in (("idle", "(a) idle"), ("loaded", "(b) while a RainStorm job runs")):
        ph = res.get(label)
        if not ph:
            continue
        lines += [f"## {title}", ""]
        if label == "loaded":
            jobs = res.get("jobs", [])
            lines += [f"Load: `{JOB.splitlines()[1]}` over a {res['csv_mb']} MiB CSV ({res['csv_lines']} lines) "
                      "in HyDFS, `--tasks 2`, the next submitted as soon as the last submission returned "
                      f"({len(jobs)} jobs, {res.get('job_seconds', float('nan')):.1f} s each from submission to "
                      "finish, median); "
                      f"the appends' primary {ph['primary']} runs a source task of the first. `job` = share of "
                      "the series during which a job was running.", ""]
        job = label == "loaded"
        lines += ["| size | n | p50 ms | p99 ms | max ms | retries | raw rpc p50 ms | raw rpc p99 ms | echo p99 ms "
                  "| p99 / rpc p99 | cores busy: ours / others |" + (" job |" if job else ""),
                  "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if job else "")]
        for size, x in ph["appends"].items():
            b, e = ph["base"]["rpc"][size], ph["base"]["echo"][size]
            lines.append(f"| {human(int(size))} | {x['n']} | {x['p50'] * 1e3:.2f} | {x['p99'] * 1e3:.2f} | "
                         f"{x['max'] * 1e3:.1f} | {x['retries']} | {b['p50'] * 1e3:.3f} | {b['p99'] * 1e3:.3f} | "
                         f"{e['p99'] * 1e3:.3f} | {x['p99'] / b['p99']:.1f}x | "
                         f"{x['cpu']['mine']:.2f} / {x['cpu']['foreign']:.2f}"
                         + (f" (best of {len(x['attempts'])})" if len(x.get("attempts", [])) > 1 else "") + " |"
                         + (f" {x.get('job_running', float('nan')):.0%} |" if job else ""))
        lines.append("")
    goal = res.get("goal")
    if goal:
        lines += [f"Goal: 4 KB append p99 at most 5 ms idle: **{'met' if goal['met'] else 'missed'}** "
                  f"({goal['p99'] * 1e3:.2f} ms).", ""]
    if res.get("notes"):
        lines += ["## Notes", "", *res["notes"], ""]
    (out / "small.md").write_text("\n".join(lines))


async def run(a: argparse.Namespace, sizes: list[int], directory: Path, cluster: dict[str, Any],
              res: dict[str, Any]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAINSTORM_")}
    env["RAINSTORM_DIR"] = str(directory)
    echo = Echo(a.base_port + 900)
    try:
        settle = CoreConfig().settle + 0.5
        say(f"waiting {settle:.1f}s for the nodes to settle")
        await asyncio.sleep(settle)
        say("[bold](a) idle[/bold]")
        res["idle"] = await phase("idle", cluster, echo, sizes, a.primary, a)
        if a.no_job:
            return
        say(f"[bold](b) while a RainStorm job runs[/bold]: a {a.csv_mb} MiB CSV into HyDFS, then the job")
        csv = directory.parent / "load.csv"
        res["csv_lines"] = await asyncio.to_thread(make_csv, csv, a.csv_mb)
        res["csv_mb"] = a.csv_mb
        t = time.perf_counter()
        await asyncio.to_thread(cli, env, "dfs", "create", str(csv), "load.csv")
        say(f"  dfs create of {a.csv_mb} MiB: {time.perf_counter() - t:.1f}s")
        job_file = directory.parent / "filter500.py"
        job_file.write_text(JOB)
        rpc = RpcClient(derive_key(cluster["secret"]))
        load = Load(env, job_file, "load.csv", rpc, local.node_of(cluster, "node-1")["address"])
        try:
            nodes = await load.start()
            say(f"  job {load.jobs[0]['name']}: source tasks on {nodes}")
            primary = nodes[0] if nodes else a.primary
            res["loaded"] = await phase("loaded", cluster, echo, sizes, primary, a, load)
        finally:
            await load.stop()
            await rpc.close()
            res["jobs"] = load.jobs
            res["job_seconds"] = median([j["ended"] - j["submitted"] for j in load.jobs if "ended" in j])
    finally:
        echo.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=3000, help="measured appends per size")
    ap.add_argument("--seconds", type=float, default=20.0, help="at most this long per size")
    ap.add_argument("--sizes", default="1KB,4KB,16KB,64KB")
    ap.add_argument("--csv-mb", type=int, default=50)
    ap.add_argument("--primary", default="node-2", help="the node that leads the measured files when idle")
    ap.add_argument("--no-job", action="store_true", help="only the idle phase")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="on a shared machine: before each series wait up to S seconds for other processes to "
                         f"use less than {QUIET} cores")
    ap.add_argument("--repeat-if-busy", type=int, default=0, metavar="K",
                    help=f"run a series again (up to K times) if other processes used more than {BUSY} cores "
                         "during it; the least disturbed attempt is reported, every attempt is kept in the JSON")
    ap.add_argument("--profile", type=Path, default=None,
                    help="py-spy the primary during each 4 KB series into this directory (raw, collapsed stacks)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "bench" / "hydfs")
    ap.add_argument("--base-port", type=int, default=24000)
    ap.add_argument("--echo", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.echo is not None:
        echo_server(a.echo)
        return
    sizes = [binary_size(x) for x in a.sizes.split(",")]
    if a.profile:
        a.profile.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"machine": machine(), "sizes": sizes,
                           "command": " ".join(["python bench/hydfs_small.py", *sys.argv[1:]]).strip()}
    say(f"machine: {res['machine']}")
    with tempfile.TemporaryDirectory(prefix="hydfs-small-") as tmp:
        cfg = Config()
        cfg.cluster.base_port, cfg.cluster.redis_base_port = a.base_port, a.base_port + 500
        d = Path(tmp) / "cluster"
        c = local.up(d, NODES, cfg)
        say(f"cluster: {NODES} nodes up in {d}")
        try:
            asyncio.run(run(a, sizes, d, c, res))
        finally:
            local.down(d)
    idle = res.get("idle", {}).get("appends", {}).get(GOAL_SIZE)
    if idle:
        res["goal"] = {"size": GOAL_SIZE, "p99": idle["p99"], "limit": GOAL_P99, "met": idle["p99"] <= GOAL_P99}
        say(f"goal: 4 KB append p99 {idle['p99'] * 1e3:.2f} ms idle (limit 5 ms): "
            f"{'met' if res['goal']['met'] else 'MISSED'}")
    report(res, a.out)
    say(f"wrote {a.out / 'small.json'} and {a.out / 'small.md'}")


if __name__ == "__main__":
    main()

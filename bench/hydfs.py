"""HyDFS benchmark on a real 5-node local cluster (real processes, sockets, fsync and SIGKILL).

    python bench/hydfs.py [--quick] [--only 1,3,b] [--out DIR] [--base-port 23000]

Experiments (numbered as in the original HyDFS description):
  1. re-replication time after SIGKILL of a replica (and of the primary), per file size, with and
     without failure detection (detection ends at the first ``member fail`` log line of any node);
  2. the bandwidth of that re-replication: bytes the new replica stored / transfer time;
  3. / 4. merge time right after 1000 appends of 4 KB / 40 KB split over 1, 2, 5, 10 clients;
  5. / 6. time for 2000 sequential gets over 1000 files of 4 KB with a client cache of 0, 10, 50,
     100 % of the data, uniform / Zipf (s = 1) access;
  7. 1800 gets + 200 appends interleaved at random, uniform vs Zipf, cache 0 % and 50 %.
  b. the goals: 1 MB append throughput vs raw loopback, and merge of replicas that already agree.
Every figure is printed with its ratio to a baseline measured in the same run: a plain loopback TCP
copy (bench/hydfs_raw.py), the same copy into an fsync'd file, a plain disk write + fsync.

Sizes are binary: 1 KB = 1024 B, 1 MB = 2**20 B, and MB/s = 2**20 B/s. Files larger than 1 MB are
written as ``create`` of the first 1 MB and 1 MB appends (one log entry per MB; see
docs/hydfs-bench.md for why not one 100 MB entry). Plots, ``results.md`` and ``results.json`` go to
``--out`` (bench/out/hydfs, or bench/out/hydfs/quick with --quick).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import dataclasses
import hashlib
import itertools
import math
import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import hydfs_raw as raw
from bench.common import machine, median, pct
from bench.hydfs_report import KB, MB, human
from hydfs.api import Client, HydfsError
from hydfs.cache import parse_size
from hydfs.context import CoreConfig
from hydfs.ring import Ring
from net.rpc import RpcClient, RpcError, Unreachable
from net.wire import derive_key
from rainstorm import cluster as local
from rainstorm.config import Config

console = Console(width=None if sys.stdout.isatty() else 200)
CHUNK = MB  # entry size used to write files larger than this
NODES = 5
RECYCLED = " +recycled pages"  # the diagnostic kills of experiment 1 (see recycle_pages)


@dataclass
class Plan:
    sizes: list[int]                 # experiment 1 file sizes
    repeats: int                     # experiment 1 kills per size (replica kill)
    primary_sizes: list[int]         # experiment 1, primary kill
    appends: int                     # experiments 3/4: appends per run
    clients: list[int]
    append_repeats: dict[int, int]   # append size -> runs per client count
    files: int                       # experiments 5-7
    file_size: int
    gets: int
    get_repeats: int
    mixed_gets: int
    mixed_appends: int
    mixed_repeats: int
    mb_appends: int                  # goal: sequential 1 MB appends
    merges: int                      # goal: merges of agreeing replicas
    loaded_sizes: list[int]          # experiment 1 again with the files of experiments 5-7 present
    loaded_repeats: int
    loaded_quiet: float              # pause after each such kill: the restarted node takes its files back
    loaded_timeout: float
    raw_repeats: int = 5


FULL = Plan(sizes=[KB, 100 * KB, MB, 10 * MB, 20 * MB, 100 * MB], repeats=3,
            primary_sizes=[KB, 100 * KB, MB, 10 * MB, 20 * MB, 100 * MB],
            appends=1000, clients=[1, 2, 5, 10], append_repeats={4 * KB: 3, 40 * KB: 3}, files=1000,
            file_size=4 * KB, gets=2000, get_repeats=3, mixed_gets=1800, mixed_appends=200, mixed_repeats=3,
            mb_appends=30, merges=50, loaded_sizes=[KB],
            loaded_repeats=1, loaded_quiet=0.0, loaded_timeout=40.0)
QUICK = Plan(sizes=[KB, MB, 4 * MB], repeats=1, primary_sizes=[KB], appends=100, clients=[1, 2, 5, 10],
             append_repeats={4 * KB: 1, 40 * KB: 1}, files=100, file_size=4 * KB, gets=200, get_repeats=1,
             mixed_gets=180, mixed_appends=20, mixed_repeats=1, mb_appends=10, merges=20, loaded_sizes=[KB],
             loaded_repeats=1, loaded_quiet=0.0, loaded_timeout=20.0, raw_repeats=3)


def mean_sd(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def say(msg: str) -> None:
    console.print(msg, highlight=False)


class Zipf:
    """Seeded Zipf(s) over ``n`` items: rank k drawn with weight 1/k**s; ranks map to a shuffled order."""

    def __init__(self, n: int, s: float, rng: random.Random) -> None:
        self.rng = rng
        self.cum = list(itertools.accumulate(1.0 / k**s for k in range(1, n + 1)))
        self.order = list(range(n))
        rng.shuffle(self.order)

    def __call__(self) -> int:
        return self.order[min(bisect.bisect_left(self.cum, self.rng.random() * self.cum[-1]), len(self.cum) - 1)]


def sampler(dist: str, n: int, seed: int) -> Callable[[], int]:
    rng = random.Random(seed)
    if dist == "zipf":
        return Zipf(n, 1.0, rng)
    return lambda: rng.randrange(n)


# ----------------------------------------------------------------------------- the cluster


class Bench:
    def __init__(self, directory: Path, cluster: dict[str, Any], rpc: RpcClient) -> None:
        self.dir = directory
        self.c = cluster
        self.rpc = rpc
        self.made: list[Client] = []

    @property
    def seeds(self) -> list[str]:
        return [n["address"] for n in self.c["nodes"]]

    def client(self, **kw: Any) -> Client:
        cl = Client(self.rpc, self.seeds, **kw)
        self.made.append(cl)
        return cl

    async def drop(self, cl: Client) -> None:
        await cl.close()
        with contextlib.suppress(ValueError):
            self.made.remove(cl)

    def node(self, node_id: str) -> dict[str, Any]:
        return local.node_of(self.c, node_id)


async def put_file(cl: Client, name: str, data: bytes) -> None:
    """``create`` with the first MB, then 1 MB appends (see the module docstring)."""
    await cl.create(name, data[:CHUNK])
    for off in range(CHUNK, len(data), CHUNK):
        await cl.append(name, data[off:off + CHUNK])


# ----------------------------------------------------------------------------- experiments 1 and 2


def pick_name(prefix: str, ids: list[str], victim: str, kind: str, avoid: str | None) -> tuple[str, list[str]]:
    """A file name whose replicas (on the full ring) have ``victim`` as primary (``kind`` primary) or as a
    non-primary replica, and neither before nor after the kill involve ``avoid`` (a node restarted just
    now, still in its ``settle`` window)."""
    full = Ring(ids)
    after = Ring([i for i in ids if i != victim])
    for k in range(5000):
        name = f"{prefix}-{k}"
        reps = full.replicas(name)
        ok = reps[0] == victim if kind == "primary" else victim in reps[1:]
        if ok and (avoid is None or avoid not in set(reps) | set(after.replicas(name))):
            return name, reps
    raise LookupError(f"no name places {victim} as {kind} without {avoid}")


def _placeable(ids: list[str], victim: str, kind: str, avoid: str | None) -> bool:
    try:
        pick_name("probe", ids, victim, kind, avoid)
    except LookupError:
        return False
    return True


MEMBER_LINE = re.compile(r'^ts=(\S+)Z .*msg="member (\w+)" peer=(\S+)')
ISR_LINE = re.compile(r'^ts=(\S+)Z .*msg="hydfs isr" file=(\S+) .*isr=(\S+)')


def _log_time(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC).timestamp()


def isr_installed(c: dict[str, Any], node_id: str, name: str, isr: set[str], after: float) -> float:
    """When ``node_id`` (the primary) logged that ``name``'s in-sync set became ``isr``: the end of a
    re-replication to the millisecond, where polling ``ls`` would add up to a poll period."""
    node = next(n for n in c["nodes"] if n["id"] == node_id)
    try:
        text = Path(node["log"]).read_text(errors="replace")
    except OSError:
        return math.nan
    for line in text.splitlines():
        m = ISR_LINE.match(line)
        if m and m.group(2) == name and set(m.group(3).split(",")) == isr:
            t = _log_time(m.group(1))
            if t >= after - 0.01:
                return t
    return math.nan


def member_events(c: dict[str, Any], after: float, before: float = math.inf) -> list[tuple[float, str, str, str]]:
    """(time, logging node, event, peer) for every ``member`` log line in [after, before] (wall clock)."""
    out = []
    for n in c["nodes"]:
        try:
            text = Path(n["log"]).read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            m = MEMBER_LINE.match(line)
            if m:
                t = _log_time(m.group(1))
                if after - 0.01 <= t <= before:
                    out.append((t, n["id"], m.group(2), m.group(3)))
    return sorted(out)


def _log_path(node: dict[str, Any], name: str) -> Path:
    return Path(node["data"]) / "hydfs" / f"{hashlib.sha256(name.encode()).hexdigest()[:40]}.log"


class Probe:
    """Asks every live node for the file's ``ls`` over raw RPC: only the primary answers ok.

    Not ``Client.ls``: a client told NOT_PRIMARY by a node whose view still has the dead primary follows
    that hint and then waits a whole retry period (1 s), which would be measured as re-replication time."""

    def __init__(self, b: Bench) -> None:
        self.b = b
        self.cid = f"bench-probe-{os.getpid()}-{time.monotonic_ns()}"
        self.rid = 0

    async def ls(self, name: str, skip: str) -> dict[str, Any] | None:
        self.rid += 1
        msg = {"src": self.cid, "m": {"t": "c_ls", "f": name, "rid": self.rid}, "wait": 0.2}

        async def one(addr: str) -> list[Any]:
            try:
                return list(await self.b.rpc.call(addr, "hydfs.client", msg, timeout=1.0) or [])
            except (Unreachable, RpcError):
                return []

        answers = await asyncio.gather(*(one(n["address"]) for n in self.b.c["nodes"] if n["id"] != skip))
        for r in itertools.chain(*answers):
            if isinstance(r, dict) and r.get("ok") and "replicas" in r:
                return r
        return None


class StallMonitor:
    """Round-trip time of a trivial RPC (``node.info``) to each node every 50 ms: a node whose event loop
    is blocked (by disk I/O or CPU work on it) answers late; gossip on that loop is late by as much."""

    def __init__(self, b: Bench, skip: str) -> None:
        self.b = b
        self.addrs = {n["id"]: n["address"] for n in b.c["nodes"] if n["id"] != skip}
        self.worst: dict[str, float] = dict.fromkeys(self.addrs, 0.0)
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async def one(nid: str, addr: str) -> None:
            t = time.perf_counter()
            with contextlib.suppress(Unreachable, RpcError):
                await self.b.rpc.call(addr, "node.info", timeout=10.0)
            self.worst[nid] = max(self.worst[nid], time.perf_counter() - t)

        for _ in range(100_000):  # bounded; cancelled when the trial ends
            await asyncio.gather(*(one(i, a) for i, a in self.addrs.items()))
            await asyncio.sleep(0.05)

    async def stop(self) -> float:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        return max(self.worst.values(), default=float("nan"))


def recycle_pages(directory: Path, size: int) -> None:
    """Write ``size`` bytes into a file and delete it: the freed page cache goes back on the free lists,
    where the next new pages of any process come from, before the VM takes it back (~2 s later)."""
    path = directory / "recycle.bin"
    with open(path, "wb") as f:
        for _ in range(0, size, MB):
            f.write(b"\xa5" * MB)
    path.unlink()


async def rereplication_trial(b: Bench, size: int, kind: str, victim: str, avoid: str | None, rep: int,
                              payload: bytes, timeout: float, recycle: bool = False) -> dict[str, Any]:
    ids = [n["id"] for n in b.c["nodes"]]
    name, expect = pick_name(f"rr/{kind}-{size}-{rep}-{time.monotonic_ns() % 10**6}", ids, victim, kind, avoid)
    cl = b.client()
    data = payload[:size]
    t_put = time.monotonic()
    await put_file(cl, name, data)
    put_s = time.monotonic() - t_put
    ls = await cl.ls(name)
    if list(ls["replicas"]) != expect:
        say(f"    [yellow]note: replicas {ls['replicas']} differ from the computed {expect}[/yellow]")
    for r in ls["replicas"]:  # every replica vouches for its copy before anything is killed
        got = await cl.getfromreplica(r, name)
        if len(got) != size:
            raise RuntimeError(f"{r} returned {len(got)} bytes of {name}, expected {size}")
    before = set(ls["replicas"])
    probe = Probe(b)
    if recycle:
        recycle_pages(b.dir, 2 * size)
    t0 = time.time()
    local.kill(b.dir, victim)
    monitor = StallMonitor(b, victim)
    deadline = time.monotonic() + timeout
    done: dict[str, Any] | None = None
    t_done = math.nan
    while time.monotonic() < deadline:
        ls = await probe.ls(name, victim)
        reps = list(ls["replicas"]) if ls else []
        if ls and len(reps) == 3 and victim not in reps and set(ls["isr"]) == set(reps):
            t_done, done = time.time(), ls
            break
        await asyncio.sleep(0.025)
    stall = await monitor.stop()
    t_end = t_done if done else time.time()
    await asyncio.sleep(0.2)  # log lines of the window are flushed
    t_polled = t_done
    if done:
        t_log = isr_installed(b.c, done["replicas"][0], name, set(done["replicas"]), t0)
        if not math.isnan(t_log):
            t_done = t_log
    events = member_events(b.c, t0, t_end)
    fails = {}
    for t, node, ev, peer in events:
        if ev == "fail" and peer == victim:
            fails.setdefault(node, t)
    # false alarms: a live node declared failed (or told it was) while this re-replication ran
    flaps = sum(1 for _, _, ev, peer in events if (ev == "fail" and peer != victim) or ev == "self_failed")
    first = min(fails.values()) if fails else math.nan
    primary = done["replicas"][0] if done else ""
    by_primary = fails.get(primary, math.nan)
    new = sorted(set(done["replicas"]) - before) if done else []
    moved = sum(_log_path(b.node(x), name).stat().st_size for x in new if _log_path(b.node(x), name).exists())
    holders = [r for r in done["replicas"] if name in await cl.store(r)] if done else []
    rec = {"size": size, "kind": kind, "victim": victim, "new": new, "name": name, "put_s": put_s,
           "ok": done is not None, "total": t_done - t0, "detect": first - t0, "transfer": t_done - first,
           "bytes": moved, "detect_primary": by_primary - t0, "transfer_primary": t_done - by_primary,
           "holders": len(holders), "primary_after": primary, "flaps": flaps, "stall": stall,
           "polled": t_polled - t0}
    with contextlib.suppress(HydfsError, asyncio.TimeoutError):
        await asyncio.wait_for(cl.rm(name), 30)
    await b.drop(cl)
    return rec


async def restart(b: Bench, victim: str, timeout: float) -> dict[str, Any]:
    """Restart the killed node; how long until every node sees all alive, the worst node stall meanwhile
    and the false failure declarations (a live node declared failed) in the logs."""
    monitor = StallMonitor(b, victim)
    t0w, t0 = time.time(), time.monotonic()
    err = ""
    try:
        await asyncio.to_thread(local.restart, b.dir, victim, timeout)
    except Exception as exc:
        err = f"{type(exc).__name__}: {exc}"
    took = time.monotonic() - t0
    stall = await monitor.stop()
    b.c = local.read_cluster(b.dir) or b.c
    flaps = sum(1 for _, _, ev, peer in member_events(b.c, t0w) if (ev == "fail") or ev == "self_failed")
    return {"converged": not err, "seconds": took, "stall": stall, "flaps": flaps, "error": err}


async def exp_rereplication(b: Bench, plan: Plan, sizes: list[int], primary_sizes: list[int], repeats: int,
                            tag: str, out: list[dict[str, Any]], timeout: float = 60.0, quiet: float = 0.0,
                            recycle: bool = False, loaded: bool = False) -> None:
    """Appends one record per kill to ``out`` (kept if a later kill fails). ``loaded``: the runs with
    the files of experiments 5-7 present (slower restarts, and the last runs of the bench)."""
    payload = random.Random(1).randbytes(max(sizes + primary_sizes))
    ids = [n["id"] for n in b.c["nodes"]]
    trials = [(s, "replica", r) for r in range(repeats) for s in sizes]
    trials += [(s, "primary", r) for r in range(repeats) for s in primary_sizes]
    avoid: str | None = None
    for k, (size, kind, rep) in enumerate(trials):
        # the next victim in turn for which some file name keeps the last restarted node out of the way
        victim = next(v for j in range(len(ids)) if (v := ids[(k + j) % len(ids)]) != avoid
                      and _placeable(ids, v, kind, avoid))
        rec = await rereplication_trial(b, size, kind, victim, avoid, rep, payload, timeout, recycle)
        rec["kind"] += tag
        avoid = victim
        out.append(rec)
        rec["rejoin"] = await restart(b, victim, 60.0 if loaded else 20.0)
        if not rec["ok"]:
            say(f"  [1] {k + 1}/{len(trials)} {human(size):>7} kill {kind:7} {victim}: [red]no 3 live replicas "
                f"within {timeout:g}s[/red] ({rec['flaps']} false failure declarations, worst node stall "
                f"{rec['stall']:.2f}s)")
        else:
            say(f"  [1] {k + 1}/{len(trials)} {human(size):>7} kill {kind:7} {victim}: total {rec['total']:.3f}s "
                f"detect {rec['detect']:.3f}s transfer {rec['transfer']:.3f}s (primary {rec['primary_after']} "
                f"detected at {rec['detect_primary']:.3f}s) -> {','.join(rec['new'])} ({human(rec['bytes'])} "
                f"stored, 3 holders: {rec['holders'] == 3}; written in {rec['put_s']:.2f}s; worst node stall "
                f"{rec['stall'] * 1e3:.0f} ms; {rec['flaps']} false failure declarations)")
        rj = rec["rejoin"]
        if loaded or not rj["converged"]:
            say(f"      restart of {victim}: {'converged' if rj['converged'] else '[red]NOT converged[/red]'} after "
                f"{rj['seconds']:.1f}s, worst node stall {rj['stall']:.2f}s, {rj['flaps']} false failure "
                "declarations")
        if not rj["converged"]:
            if loaded:
                break  # the loaded runs come last: the finding is recorded, the cluster is not usable
            raise RuntimeError(f"{victim} restarted but the cluster did not converge: {rj['error']}")
        if quiet:
            await asyncio.sleep(quiet)


# ----------------------------------------------------------------------------- experiments 3 and 4


async def _writer(w: Client, name: str, payload: bytes, count: int, lat: list[float]) -> None:
    for _ in range(count):
        t = time.perf_counter()
        await w.append(name, payload)
        lat.append(time.perf_counter() - t)


async def exp_merge(b: Bench, plan: Plan, size: int, tag: int) -> list[dict[str, Any]]:
    payload = random.Random(size).randbytes(size)
    out = []
    for rep in range(plan.append_repeats[size]):
        for n in plan.clients:
            name = f"merge/{size}-{n}-{rep}"
            cl = b.client()
            await cl.create(name, b"")
            writers = [b.client() for _ in range(n)]
            per = [plan.appends // n + (1 if i < plan.appends % n else 0) for i in range(n)]
            lat: list[float] = []

            t0 = time.perf_counter()
            await asyncio.gather(*(_writer(w, name, payload, k, lat) for w, k in zip(writers, per, strict=True)))
            t1 = time.perf_counter()
            res = await cl.merge(name)
            t2 = time.perf_counter()
            rec = {"size": size, "clients": n, "rep": rep, "appends": plan.appends, "append_s": t1 - t0,
                   "merge": t2 - t1,
                   "checked": res.get("checked"), "commit": res.get("commit"), "lat_median": median(lat),
                   "lat_p99": pct(lat, 99), "mbps": size * plan.appends / (t1 - t0) / MB}
            out.append(rec)
            say(f"  [{tag}] {human(size)} x {plan.appends} over {n:2} clients (run {rep + 1}): appends "
                f"{rec['append_s']:.2f}s ({rec['mbps']:.1f} MB/s, median {rec['lat_median'] * 1e3:.1f} ms), "
                f"merge {rec['merge'] * 1e3:.1f} ms (checked {rec['checked']}, commit {rec['commit']})")
            await cl.rm(name)
            for x in [cl, *writers]:
                await b.drop(x)
    return out


# ----------------------------------------------------------------------------- experiments 5, 6, 7


def file_names(plan: Plan) -> list[str]:
    return [f"g/{i:05d}" for i in range(plan.files)]


async def make_files(b: Bench, plan: Plan) -> float:
    names = file_names(plan)
    rng = random.Random(5)
    datas = [rng.randbytes(plan.file_size) for _ in names]
    writers = [b.client() for _ in range(10)]
    t0 = time.perf_counter()

    async def write(k: int) -> None:
        for i in range(k, len(names), len(writers)):
            await writers[k].create(names[i], datas[i])

    await asyncio.gather(*(write(k) for k in range(len(writers))))
    took = time.perf_counter() - t0
    for w in writers:
        await b.drop(w)
    say(f"  created {len(names)} files of {human(plan.file_size)} in {took:.1f}s (10 concurrent writers)")
    return took


async def exp_gets(b: Bench, plan: Plan, dist: str, tag: int) -> list[dict[str, Any]]:
    names = file_names(plan)
    data_bytes = plan.files * plan.file_size
    out = []
    for rep in range(plan.get_repeats):
        for p in (0, 10, 50, 100):
            cl = b.client(cache_bytes=parse_size(f"{p}%", data_bytes))
            pick = sampler(dist, len(names), 1000 * tag + rep)
            await cl.refresh()
            t0 = time.perf_counter()
            for _ in range(plan.gets):
                await cl.get(names[pick()])
            took = time.perf_counter() - t0
            st = cl.cache.stats()
            rec = {"dist": dist, "cache": p, "rep": rep, "seconds": took, "hits": st["hits"],
                   "hit_rate": st["hits"] / plan.gets, "per_get_ms": took / plan.gets * 1e3}
            out.append(rec)
            say(f"  [{tag}] {dist} cache {p:3}% (run {rep + 1}): {plan.gets} gets {took:.2f}s "
                f"({rec['per_get_ms']:.2f} ms/get, hit rate {rec['hit_rate']:.0%})")
            await b.drop(cl)
    return out


async def exp_mixed(b: Bench, plan: Plan) -> list[dict[str, Any]]:
    names = file_names(plan)
    data_bytes = plan.files * plan.file_size
    blob = random.Random(7).randbytes(plan.file_size)
    out = []
    for rep in range(plan.mixed_repeats):
        for dist in ("uniform", "zipf"):
            for p in (0, 50):
                ops = ["a"] * plan.mixed_appends + ["g"] * plan.mixed_gets
                random.Random(70 + rep).shuffle(ops)
                pick = sampler(dist, len(names), 700 + rep)
                cl = b.client(cache_bytes=parse_size(f"{p}%", data_bytes))
                await cl.refresh()
                gl: list[float] = []
                al: list[float] = []
                t0 = time.perf_counter()
                for op in ops:
                    name = names[pick()]
                    t = time.perf_counter()
                    if op == "g":
                        await cl.get(name)
                        gl.append(time.perf_counter() - t)
                    else:
                        await cl.append(name, blob)
                        al.append(time.perf_counter() - t)
                took = time.perf_counter() - t0
                st = cl.cache.stats()
                rec = {"dist": dist, "cache": p, "rep": rep, "gets": len(gl), "appends": len(al), "seconds": took,
                       "hit_rate": st["hits"] / len(gl), "get_s": sum(gl), "append_s": sum(al),
                       "get_ms": statistics.fmean(gl) * 1e3, "append_ms": statistics.fmean(al) * 1e3}
                out.append(rec)
                say(f"  [7] {dist:7} cache {p:2}% (run {rep + 1}): {len(gl)} gets + {len(al)} appends {took:.2f}s "
                    f"(get {rec['get_ms']:.2f} ms, append {rec['append_ms']:.2f} ms, hit rate {rec['hit_rate']:.0%})")
                await b.drop(cl)
    return out


# ----------------------------------------------------------------------------- goals measured on HyDFS


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process so far (from /proc)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return math.nan


async def goal_runs(b: Bench, plan: Plan) -> dict[str, Any]:
    cl = b.client()
    block = random.Random(11).randbytes(MB)
    rates = []
    cpu: dict[str, list[float]] = {"client (bench process)": [], "primary": [], "replicas (each)": []}
    for rep in range(3):
        name = f"goal/mb-{rep}"
        await cl.create(name, b"")
        reps = list((await cl.ls(name))["replicas"])
        pids = {n["id"]: n["pid"] for n in b.c["nodes"]}
        before = {x: cpu_seconds(pids[x]) for x in reps}
        me = time.process_time()
        t0 = time.perf_counter()
        for _ in range(plan.mb_appends):
            await cl.append(name, block)
        took = time.perf_counter() - t0
        used = {x: cpu_seconds(pids[x]) - before[x] for x in reps}
        cpu["client (bench process)"].append((time.process_time() - me) / plan.mb_appends)
        cpu["primary"].append(used[reps[0]] / plan.mb_appends)
        cpu["replicas (each)"].append((used[reps[1]] + used[reps[2]]) / 2 / plan.mb_appends)
        rates.append(plan.mb_appends / took)
        say(f"  [b] {plan.mb_appends} sequential 1 MB appends (run {rep + 1}): {took:.2f}s = {rates[-1]:.1f} MB/s; "
            f"CPU per append: primary {used[reps[0]] / plan.mb_appends * 1e3:.1f} ms, replicas "
            f"{used[reps[1]] / plan.mb_appends * 1e3:.1f} / {used[reps[2]] / plan.mb_appends * 1e3:.1f} ms, "
            f"client {cpu['client (bench process)'][-1] * 1e3:.1f} ms; wall {took / plan.mb_appends * 1e3:.1f} ms")
        await cl.rm(name)
    concurrent = []
    writers = [b.client() for _ in range(4)]
    for rep in range(3):
        name = f"goal/mb-par-{rep}"
        await cl.create(name, b"")
        each = max(1, plan.mb_appends // 2)
        t0 = time.perf_counter()
        await asyncio.gather(*(_appends(w, name, block, each) for w in writers))
        concurrent.append(len(writers) * each / (time.perf_counter() - t0))
        say(f"  [b] {len(writers)} writers x {each} 1 MB appends at once (run {rep + 1}): {concurrent[-1]:.1f} MB/s")
        await cl.rm(name)
    for w in writers:
        await b.drop(w)
    name = "goal/agree"
    await cl.create(name, b"")
    small = random.Random(12).randbytes(4 * KB)
    for _ in range(100):
        await cl.append(name, small)
    await cl.merge(name)
    merges = []
    for _ in range(plan.merges):
        t0 = time.perf_counter()
        res = await cl.merge(name)
        merges.append(time.perf_counter() - t0)
        if res.get("checked") != 2:
            say(f"  [yellow]merge checked {res.get('checked')} replicas, expected 2[/yellow]")
    say(f"  [b] {plan.merges} merges of agreeing replicas: median {median(merges) * 1e3:.2f} ms, "
        f"p99 {pct(merges, 99) * 1e3:.2f} ms")
    await cl.rm(name)
    await b.drop(cl)
    return {"mb_append_rates": rates, "merges": merges, "mb_append_cpu": cpu, "mb_append_concurrent": concurrent}


async def _appends(cl: Client, name: str, block: bytes, count: int) -> None:
    for _ in range(count):
        await cl.append(name, block)


# ----------------------------------------------------------------------------- baselines


SETTLE_IDLE = 3.0  # s of idle memory before a "settled" write: the VM's free page reporting waits ~2 s


def baselines(plan: Plan, sizes: list[int], tmp: Path) -> dict[str, Any]:
    reps = plan.raw_repeats
    payload = random.Random(3).randbytes(max(sizes))
    out: dict[str, Any] = {"copy": {}, "copy_file": {}, "zero_copy": {}, "copy_fsync": {}, "disk": {}}
    for s in sizes:
        data = payload[:s]
        out["copy"][s] = median(raw.loopback_copy(data, reps))
        out["copy_file"][s] = median(raw.loopback_copy(data, reps, tmp / "rx.bin", fsync=False))
        out["zero_copy"][s] = median(raw.zero_copy_into_file(data, tmp, reps))
        out["copy_fsync"][s] = median(raw.loopback_copy(data, reps, tmp / "rx.bin"))
        out["disk"][s] = median(raw.disk_write(data, tmp / "w.bin", reps))
    (tmp / "rx.bin").unlink(missing_ok=True)
    out["rate"] = {m: median([raw.loopback_rate(payload[:m], 200 if m < MB else 30) for _ in range(3)])
                   for m in (4 * KB, 40 * KB, MB)}
    out["replicated"] = {mode: median([raw.replicated_rate(payload[:MB], 30, tmp, fsync=mode == "always")
                                       for _ in range(3)]) for mode in ("interval", "always")}
    out["replicated_zero_copy"] = median([raw.zero_copy_replicated_rate(payload[:MB], 30, tmp) for _ in range(3)])
    # what fresh page cache costs here: right after the same amount was freed, and once settled
    goal = payload[:min(20 * MB, len(payload))]
    out["new_file"] = {"size": len(goal),
                       "recycled": median(raw.new_file_write(goal, tmp / "nf.bin", 3, 0.0)),
                       "settled": median(raw.new_file_write(goal, tmp / "nf.bin", 3, SETTLE_IDLE))}
    out["growing"] = {"recycled": raw.growing_file_rate(payload[:MB], 30, tmp / "g.bin", 0.0),
                      "settled": raw.growing_file_rate(payload[:MB], 30, tmp / "g.bin", SETTLE_IDLE)}
    out["rate_stream"] = len(payload[:100 * MB]) / median(raw.loopback_copy(payload[:100 * MB], 3)) \
        if len(payload) >= 100 * MB else None
    # round trips of one file-sized message each: what 2000 sequential gets cost without HyDFS
    out["get_rt"] = 1 / out["rate"][4 * KB] * 4 * KB
    out["primitives"] = raw.primitives(MB, tmp / "p.bin")
    return out


# ----------------------------------------------------------------------------- main


async def run(directory: Path, cluster: dict[str, Any], plan: Plan, only: set[str]) -> dict[str, Any]:
    rpc = RpcClient(derive_key(cluster["secret"]))
    b = Bench(directory, cluster, rpc)
    res: dict[str, Any] = {}
    try:
        settle = CoreConfig().settle + 0.5
        say(f"waiting {settle:.1f}s for the nodes to settle (a node vouches for copies only {settle - 0.5:g}s "
            "after it joined)")
        await asyncio.sleep(settle)
        errors: list[str] = []

        async def step(label: str, coro: Any) -> Any:
            """Run one experiment; a failure is reported and recorded, and the others still run."""
            try:
                return await coro
            except Exception as exc:
                say(f"  [red]{label} failed: {type(exc).__name__}: {exc}[/red]")
                errors.append(f"{label}: {type(exc).__name__}: {exc}")
                return None

        if only & {"1", "2"}:
            say("[bold]experiments 1-2: re-replication after SIGKILL (only the measured file in HyDFS)[/bold]")
            res["1"] = []
            await step("experiment 1", exp_rereplication(b, plan, plan.sizes, plan.primary_sizes, plan.repeats, "",
                                                         res["1"]))
            if 20 * MB in plan.sizes:
                say("[bold]experiment 1, diagnostic: 20 MB kills with 40 MB of page cache freed just before "
                    "each (the new replica writes into recycled pages, not memory the VM must back again)[/bold]")
                await step("experiment 1 (recycled pages)", exp_rereplication(
                    b, plan, [20 * MB], [], plan.repeats, RECYCLED, res["1"], recycle=True))
            await asyncio.sleep(settle)  # the last restarted node settles before anything else runs
        if "3" in only:
            say("[bold]experiment 3: merge after 4 KB appends[/bold]")
            res["3"] = await step("experiment 3", exp_merge(b, plan, 4 * KB, 3))
        if "4" in only:
            say("[bold]experiment 4: merge after 40 KB appends[/bold]")
            res["4"] = await step("experiment 4", exp_merge(b, plan, 40 * KB, 4))
        if "b" in only:
            say("[bold]goals: 1 MB appends, merge of agreeing replicas[/bold]")
            res["b"] = await step("goals", goal_runs(b, plan))
        if only & {"5", "6", "7"}:
            say(f"[bold]experiments 5-7: {plan.files} files[/bold]")
            res["files_s"] = await step("creating the files", make_files(b, plan))
            if "5" in only:
                res["5"] = await step("experiment 5", exp_gets(b, plan, "uniform", 5))
            if "6" in only:
                res["6"] = await step("experiment 6", exp_gets(b, plan, "zipf", 6))
            if "7" in only:
                res["7"] = await step("experiment 7", exp_mixed(b, plan))
            if only & {"1", "2"}:
                say(f"[bold]experiment 1, loaded: the same kills with the {plan.files} files of experiments 5-7 "
                    "still in HyDFS[/bold]")
                await step("experiment 1 (loaded)", exp_rereplication(
                    b, plan, plan.loaded_sizes, [], plan.loaded_repeats, f" +{plan.files} files", res["1"],
                    timeout=plan.loaded_timeout, quiet=plan.loaded_quiet, loaded=True))
        for k in [k for k, v in res.items() if v is None or v == []]:
            del res[k]
        if errors:
            res["errors"] = errors
    finally:
        for cl in list(b.made):
            await cl.close()
        await rpc.close()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes and counts: a smoke run under 2 minutes")
    ap.add_argument("--only", default="1,2,3,4,5,6,7,b", help="experiments to run, e.g. 1,3 (b = the goals)")
    ap.add_argument("--out", type=Path, default=None, help="where plots and results.md go")
    ap.add_argument("--base-port", type=int, default=23000)
    ap.add_argument("--fsync", choices=["interval", "always"], default="interval",
                    help="the nodes' [hydfs] fsync mode (default: the default, interval)")
    ap.add_argument("--sizes", default=None, help="experiment 1 file sizes instead of the plan's, e.g. 20MB,100MB")
    a = ap.parse_args()
    plan = QUICK if a.quick else FULL
    if a.sizes:
        sizes = [parse_size(x) for x in a.sizes.split(",")]
        plan = dataclasses.replace(plan, sizes=sizes, primary_sizes=sizes)
    only = {x.strip() for x in a.only.split(",") if x.strip()}
    if not only <= {"1", "2", "3", "4", "5", "6", "7", "b"}:
        ap.error(f"--only: unknown experiments {sorted(only - set('1234567b'))}")
    out = a.out or Path(__file__).resolve().parent / "out" / "hydfs" / ("quick" if a.quick else "") / (
        "fsync-always" if a.fsync == "always" else "")
    started = time.monotonic()
    mline = machine()
    say(f"machine: {mline}")
    say(f"plan: {'quick' if a.quick else 'full'}; experiments {','.join(sorted(only))}; output {out}")
    with tempfile.TemporaryDirectory(prefix="hydfs-bench-") as tmp:
        t = Path(tmp)
        say("[bold]baselines: loopback TCP copy, copy into an fsync'd file, disk write + fsync[/bold]")
        base = baselines(plan, sorted(set(plan.sizes + plan.primary_sizes + [100 * MB])), t)
        say(f"  loopback copy of 100 MB {base['copy'][100 * MB] * 1e3:.1f} ms; "
            f"1 MB request/response {base['rate'][MB] / MB:.0f} MB/s; 4 KB round trip {base['get_rt'] * 1e6:.0f} µs")
        cfg = Config()
        cfg.cluster.base_port, cfg.cluster.redis_base_port = a.base_port, a.base_port + 500
        toml = t / "rainstorm.toml"   # read by the node processes
        toml.write_text(f'[hydfs]\nfsync = "{a.fsync}"\n')
        os.environ["RAINSTORM_CONFIG"] = str(toml)
        d = t / "cluster"
        c = local.up(d, NODES, cfg)
        say(f"cluster: {NODES} nodes up in {d}")
        try:
            res = asyncio.run(run(d, c, plan, only))
        finally:
            local.down(d)
    res["base"] = base
    res["machine"] = mline
    res["plan"] = "quick" if a.quick else "full"
    res["fsync"] = a.fsync
    res["command"] = "python bench/hydfs.py" + (" --quick" if a.quick else "") + \
        (f" --only {a.only}" if a.only != ap.get_default("only") else "") + \
        (f" --fsync {a.fsync}" if a.fsync != "interval" else "") + (f" --sizes {a.sizes}" if a.sizes else "")
    res["runtime_s"] = time.monotonic() - started
    from bench import hydfs_report
    hydfs_report.report(res, plan, out, console)
    say(f"total runtime {res['runtime_s']:.0f}s")


if __name__ == "__main__":
    main()

"""What a membership change costs HyDFS when it goes through the controller, against acting on gossip.

    python bench/hydfs_membership.py [--files 1000] [--repeat 3] [--quick] [--modes gossip,committed] [--out DIR]

HyDFS nodes act on the live set the Raft controller committed (``[control] hydfs_view =
"committed"``, rainstorm/committed_view.py) rather than on their own gossip view (``"gossip"``, the
old wiring, kept as this bench's baseline). That makes a failure one more hop long: gossip detects,
the controller's leader proposes one ``members`` entry, a quorum fsyncs it, every node's long poll
of the table brings it to HyDFS. This bench measures what that hop costs, and what it does not.

Each mode runs on ``--repeat`` fresh local clusters (modes alternating, so a busy spell of this
shared machine hits both) of 5 nodes, 5 of them Raft voters (``local_voters``: the first 1, 3 or 5
nodes), in a temporary directory, and the table shows the medians:

1. ``--files`` files of 64 bytes are created (32 in flight) and ``ls``-ed until each has 3 replicas
   in its in-sync set; then ``settle`` + 0.5 s (nodes vouch for a set only once settled).
2. Append latency (100 bytes to a random file): ``--seq`` appends one after another, then ``--conc``
   with ``--inflight`` (8) in flight; and one append to every file with ``--sweep`` in flight (the
   floor of step 3's sweep).
3. The node that leads the most files is SIGKILLed with its Redis (``rainstorm.cluster.kill``), the
   same node and files in both modes (placement depends only on node ids and file names); if it
   leads the controller, a fresh cluster is started instead (up to 3 times). From the kill, at once:
   every file gets one append (``--sweep`` in flight, retried until it succeeds or 180 s pass); the
   last success is when every file was appendable again. That client re-reads membership every
   50 ms and resends after 0.1 s (``--stock-client``: 1 s and 0.5 s as shipped, which quantise the
   figure). Meanwhile a poller (every 50 ms) asks the leader for its table and every survivor for
   ``node.info`` / ``node.members``. The moments reported come from the nodes' own log lines
   (``member fail``, ``membership committed``, ``committed view``, ``hydfs isr``), which do not
   depend on polling: gossip's detection on each survivor, the commit, each survivor's HyDFS
   learning the change, and the last in-sync set HyDFS installed for it (HyDFS done, server side).
   Raft entries: the leader's commit index just before the kill and after the sweep, and the
   entries in between read back from the leader's Raft log and decoded: ``members`` entries without
   the victim are the change; anything else (a ``hello``, a new leader's no-op) is listed apart.
   The controller commits that entry in both modes (it places tasks); only ``committed`` HyDFS waits
   for it. HyDFS counters (``hydfs.info``): takeovers started and step-downs (failed attempts).
4. Append latency again, as in 2.
5. Gossip counters of the survivors (``node.info`` ``gossip``): suspicions, failures declared and
   refutations, before the kill and from the kill to the end; a ``member fail`` line naming a live
   node, or any suspicion before the kill, is a false failure detection (a bug).

Results: docs/bench/hydfs_membership/results.{json,md} (bench/out/hydfs_membership with --quick). Every wait is
bounded; every cluster is brought down (``rainstorm.cluster.down``) whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine, median, pct  # noqa: E402
from bench.hydfs import cpu_seconds  # noqa: E402
from bench.hydfs_small import cluster_pids  # noqa: E402
from hydfs.api import Client, HydfsError  # noqa: E402
from hydfs.context import CoreConfig  # noqa: E402
from hydfs.ring import Ring  # noqa: E402
from net.rpc import RpcClient, RpcError, Unreachable  # noqa: E402
from net.wire import derive_key  # noqa: E402
from raft.storage import DiskStorage  # noqa: E402
from rainstorm import cluster as local  # noqa: E402
from rainstorm.config import Config  # noqa: E402

console = Console(width=None if sys.stdout.isatty() else 200, highlight=False)
NODES = 5
MODES = ("gossip", "committed")
CREATE_INFLIGHT = 32
POLL = 0.05                  # the poller's interval during the failure (s)
FAILURE_DEADLINE = 180.0     # every wait after the kill gives up after this (s)
PAYLOAD = b"m" * 100         # one small append
FAST_RETRY = 0.1             # the sweep's client resends an unanswered append after this (stock: 0.5 s)
FAST_REFRESH = 0.05          # and re-reads the live nodes this often (stock: about once a second)
LOG_LINE = re.compile(r"^ts=(\S+)Z ")
LOG_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def say(text: str) -> None:
    console.print(text)


class Cores:
    """Cores busy over a stretch of the run: ours (the cluster and this process) and everybody else's,
    on a machine shared with other work (bench/hydfs_small.py's CpuMeter, except that a process that
    died meanwhile, the victim, keeps the CPU time it was last seen with)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.seen: dict[int, float] = {}
        self.t, self.busy, self.mine = self._now()

    def _now(self) -> tuple[float, float, float]:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")   # all but idle and iowait
        for p in self.pids:
            v = cpu_seconds(p)
            if v == v:                                              # not NaN: still running
                self.seen[p] = v
        t = os.times()
        return time.perf_counter(), busy, sum(self.seen.values()) + t.user + t.system

    def take(self) -> dict[str, float]:
        t, busy, mine = self._now()
        wall = t - self.t
        return {"mine": (mine - self.mine) / wall, "foreign": max(0.0, (busy - self.busy) - (mine - self.mine)) / wall,
                "seconds": wall}


def summary(lat: list[float]) -> dict[str, float | int]:
    """p50 / p99 / max in milliseconds (nearest rank, bench.common.pct)."""
    return {"n": len(lat), "p50_ms": median(lat) * 1e3, "p99_ms": pct(lat, 99) * 1e3,
            "max_ms": (max(lat) if lat else float("nan")) * 1e3}


async def bounded(items: list[str], inflight: int, one: Callable[[str], Awaitable[None]]) -> None:
    """Run ``one`` over ``items`` with at most ``inflight`` at a time (a shared iterator, no queue)."""
    it = iter(items)

    async def worker() -> None:
        for item in it:
            await one(item)

    await asyncio.gather(*(worker() for _ in range(min(inflight, len(items)))))


# ----------------------------------------------------------------------------- node logs


def log_events(path: Path, since: float) -> list[tuple[float, dict[str, str]]]:
    """A node's log lines at or after wall time ``since`` as (time, fields): the nodes' own clocks
    (ms resolution), so timings do not depend on how often the bench polls."""
    out: list[tuple[float, dict[str, str]]] = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        m = LOG_LINE.match(line)
        if not m:
            continue
        try:
            t = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
        if t < since - 0.01:
            continue
        fields = {k: v[1:-1] if v.startswith('"') else v for k, v in LOG_FIELD.findall(line)}
        out.append((t, fields))
    return out


def from_logs(cluster: dict[str, Any], victim: str, leader: str, kill_wall: float, until: float) -> dict[str, Any]:
    """When, after the kill, each survivor's gossip declared the victim failed, the leader committed the
    change and each survivor's HyDFS learned the committed view without it; the in-sync sets HyDFS
    installed because of it up to wall time ``until`` (``hydfs isr`` lines: ``establish`` = a new
    primary took a file over, ``change`` = a primary dropped or added a member), whose last one is
    when HyDFS was done on the servers' side; and every ``member fail`` of a live node over the whole
    run (false failure detections)."""
    fail: dict[str, float] = {}
    view: dict[str, float] = {}
    committed = None
    false_fails: list[str] = []
    isr: dict[str, list[float]] = {}
    for n in cluster["nodes"]:
        for t, f in log_events(Path(n["log"]), 0.0):
            msg, peer = f.get("msg"), f.get("peer")
            if msg == "member fail" and peer != victim:
                false_fails.append(f"{n['id']} declared {peer} failed at {t:.3f}")
            if n["id"] == victim or t < kill_wall - 0.01:
                continue
            if msg == "member fail" and peer == victim:
                fail.setdefault(n["id"], t - kill_wall)
            alive = f.get("alive", "").split(",")
            if msg == "committed view" and victim not in alive:
                view.setdefault(n["id"], t - kill_wall)
            if msg == "membership committed" and n["id"] == leader and victim not in alive and committed is None:
                committed = t - kill_wall
            if msg == "hydfs isr" and t <= until:
                isr.setdefault(f.get("kind", "?"), []).append(t - kill_wall)
    installed = {k: {"n": len(v), "first_s": min(v), "last_s": max(v)} for k, v in isr.items()}
    done = max((x["last_s"] for x in installed.values()), default=None)
    return {"gossip_failed": fail, "committed": committed, "view": view, "false_fails": false_fails,
            "isr": installed, "isr_done_s": done}


def raft_entries(data_dir: Path, after: int, upto: int) -> list[dict[str, Any]]:
    """The entries (after, upto] of a voter's Raft log on disk, decoded: ``op`` of each controller
    command ("noop" for a new leader's empty entry). Read while the node runs: a torn last record is
    skipped, as the node itself would at start-up."""
    try:
        buf = memoryview((data_dir / "raft" / "log").read_bytes())
        entries, _, _ = DiskStorage._scan(buf)
    except Exception as exc:   # a log that does not scan: say so rather than guess
        return [{"error": f"{type(exc).__name__}: {exc}"}]
    out: list[dict[str, Any]] = []
    for e in entries:
        if after < e.index <= upto:
            if not e.data:
                out.append({"index": e.index, "term": e.term, "op": "noop"})
                continue
            try:
                cmd = msgpack.unpackb(e.data, raw=False)
            except Exception:
                cmd = {"op": "undecodable"}
            row = {"index": e.index, "term": e.term, "op": cmd.get("op")}
            if cmd.get("op") == "members":
                row["alive"] = cmd.get("alive")
            out.append(row)
    return out


# ----------------------------------------------------------------------------- one mode


class Run:
    """One mode on one fresh cluster: the cluster's RPC client, its HyDFS client and the phases."""

    def __init__(self, mode: str, cluster: dict[str, Any], a: argparse.Namespace) -> None:
        self.mode, self.cluster, self.a = mode, cluster, a
        self.addr = {n["id"]: n["address"] for n in cluster["nodes"]}
        self.ids = [n["id"] for n in cluster["nodes"]]
        self.names = [f"m/f{i:05d}" for i in range(a.files)]
        self.rng = random.Random(7)
        self.rpc = RpcClient(derive_key(cluster["secret"]), connect_timeout=0.5)
        self.dfs = Client(self.rpc, list(self.addr.values()), timeout=20.0)

    async def close(self) -> None:
        await self.dfs.close()
        await self.rpc.close()

    async def call(self, node: str, method: str, args: dict[str, Any] | None = None, timeout: float = 2.0) -> Any:
        return await self.rpc.call(self.addr[node], method, args or {}, timeout=timeout)

    async def info(self, node: str) -> dict[str, Any] | None:
        try:
            return await self.call(node, "node.info", timeout=1.0)
        except (Unreachable, RpcError, TimeoutError):
            return None

    async def leader(self) -> str:
        """The controller's leader, as the nodes report it (bounded: 20 s)."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for n in self.ids:
                i = await self.info(n)
                if i and i["controller"].get("leading"):
                    return n
            await asyncio.sleep(0.1)
        raise RuntimeError("no controller leader within 20 s")

    async def counters(self, nodes: list[str]) -> dict[str, dict[str, int]]:
        out = {}
        for n in nodes:
            i = await self.info(n)
            out[n] = dict(i["gossip"]) if i else {}
        return out

    # -- 1. files -----------------------------------------------------------------------------------
    async def create(self) -> dict[str, Any]:
        n = len(self.names)
        done = 0
        t0 = time.perf_counter()
        deadline = time.monotonic() + max(120.0, n * 0.5)

        async def one(name: str) -> None:
            nonlocal done
            while True:
                try:
                    await asyncio.wait_for(self.dfs.create(name, b"c" * 64), 30)
                    break
                except HydfsError as exc:
                    if exc.code == "exists":      # a retry of ours that landed the first time
                        break
                    if time.monotonic() > deadline:
                        raise
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise
                await asyncio.sleep(0.2)
            done += 1
            if done % 100 == 0 or done == n:
                say(f"  created {done}/{n} ({time.perf_counter() - t0:.1f} s)")

        await bounded(self.names, CREATE_INFLIGHT, one)
        created = time.perf_counter() - t0
        # every file exists, and its 3 replicas are in its in-sync set
        missing = list(self.names)
        rounds = 0
        while missing and time.monotonic() < deadline:
            rounds += 1
            still: list[str] = []

            async def check(name: str, still: list[str] = still) -> None:
                try:
                    r = await asyncio.wait_for(self.dfs.ls(name), 10)
                    if len(r.get("isr", [])) < 3:
                        still.append(name)
                except (HydfsError, TimeoutError):
                    still.append(name)

            await bounded(missing, CREATE_INFLIGHT, check)
            say(f"  ls round {rounds}: {n - len(still)}/{n} files with 3 in-sync replicas")
            missing = still
            if missing:
                await asyncio.sleep(0.5)
        if missing:
            raise RuntimeError(f"{len(missing)} files not fully replicated in time, e.g. {missing[:3]}")
        return {"files": n, "create_s": created, "all_in_sync_s": time.perf_counter() - t0}

    # -- 2. / 4. latency ----------------------------------------------------------------------------
    async def latency(self) -> dict[str, Any]:
        a = self.a
        seq: list[float] = []
        for _ in range(a.seq):
            name = self.rng.choice(self.names)
            t = time.perf_counter()
            await asyncio.wait_for(self.dfs.append(name, PAYLOAD), 30)
            seq.append(time.perf_counter() - t)
        conc: list[float] = []
        picks = [self.rng.choice(self.names) for _ in range(a.conc)]

        async def one(name: str) -> None:
            t = time.perf_counter()
            await asyncio.wait_for(self.dfs.append(name, PAYLOAD), 30)
            conc.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await bounded(picks, a.inflight, one)
        wall = time.perf_counter() - t0
        return {"sequential": summary(seq), "concurrent": {**summary(conc), "inflight": a.inflight,
                                                            "appends_per_s": len(conc) / wall}}

    async def sweep_floor(self) -> float:
        """One append to every file with ``--sweep`` in flight and nothing failed: the part of the
        after-the-kill sweep that is just pushing N appends through."""
        t0 = time.perf_counter()

        async def one(name: str) -> None:
            await asyncio.wait_for(self.dfs.append(name, PAYLOAD), 30)

        await bounded(self.names, self.a.sweep, one)
        return time.perf_counter() - t0

    # -- 3. the failure -----------------------------------------------------------------------------
    async def failure(self, victim: str, leader: str, directory: Path) -> dict[str, Any]:
        survivors = [n for n in self.ids if n != victim]
        ring = Ring(self.ids)
        role = {}
        for name in self.names:
            reps = ring.replicas(name)
            role[name] = "led" if reps[0] == victim else "replica" if victim in reps else "unaffected"
        # the controller's commit index over a quiet second: entries that are not this change
        before = await self.info(leader)
        await asyncio.sleep(1.0)
        c0_info = await self.info(leader)
        assert before and c0_info
        c_quiet = c0_info["controller"]["commit"] - before["controller"]["commit"]
        c0 = c0_info["controller"]["commit"]
        hydfs_before = await self.hydfs_stats(survivors)
        client_before = dict(self.dfs.core.stats)
        t0 = time.monotonic()
        kill_wall = time.time()
        local.kill(directory, victim)
        polled: dict[str, Any] = {}
        stop = asyncio.Event()

        async def watch() -> None:
            """First poll (s after the kill) that saw each step, and the leader's commit index then."""
            while not stop.is_set() and time.monotonic() - t0 < FAILURE_DEADLINE:
                now = time.monotonic() - t0
                infos = await asyncio.gather(*(self.info(n) for n in survivors))
                rows = await asyncio.gather(*(self._members(n) for n in survivors))
                table = None
                with contextlib.suppress(Unreachable, RpcError, TimeoutError):
                    table = await self.call(leader, "control.table", {}, timeout=1.0)
                if table is not None and victim not in table["alive"] and "committed" not in polled:
                    lead = next((i for i in infos if i and i["id"] == leader), None)
                    polled["committed"] = now
                    polled["commit_index_then"] = lead["controller"]["commit"] if lead else None
                    polled["table_version"] = table["version"]
                views = [i.get("hydfs_view") for i in infos if i]
                if self.mode == "committed" and len(views) == len(survivors):
                    out = [v is not None and victim not in v for v in views]
                    if any(out):
                        polled.setdefault("view_first", now)
                    if all(out):
                        polled.setdefault("view_all", now)
                gone = [r is not None and all(m["id"] != victim or m["state"] in ("failed", "left") for m in r)
                        for r in rows]
                if any(gone):
                    polled.setdefault("gossip_first", now)
                if all(gone):
                    polled.setdefault("gossip_all", now)
                await asyncio.sleep(POLL)

        ok_at: dict[str, float] = {}
        errors = 0
        deadline = t0 + FAILURE_DEADLINE

        async def one(name: str) -> None:
            nonlocal errors
            while time.monotonic() < deadline:
                try:
                    await asyncio.wait_for(self.dfs.append(name, PAYLOAD), max(1.0, deadline - time.monotonic()))
                    ok_at[name] = time.monotonic() - t0
                    if len(ok_at) % 100 == 0 or len(ok_at) == len(self.names):
                        say(f"  appendable again: {len(ok_at)}/{len(self.names)} files "
                            f"({ok_at[name]:.2f} s after the kill)")
                    return
                except (HydfsError, TimeoutError):
                    errors += 1
                    await asyncio.sleep(0.1)

        watcher = asyncio.create_task(watch())
        cpu = Cores(cluster_pids(self.cluster))
        swept = asyncio.Event()
        refresher = None
        stock_retry = self.dfs.core.retry
        if not self.a.stock_client:
            # The stock client re-reads membership once a second and resends every 0.5 s: a file led by
            # the victim would be measured in those steps, up to 1.5 s after its new primary took over,
            # whichever mode. Here: membership every 50 ms, resend after 0.1 s (--stock-client: as shipped).
            self.dfs.core.retry = FAST_RETRY
            refresher = asyncio.create_task(self._refresh(swept))
        await bounded(self.names, self.a.sweep, one)
        swept.set()
        sweep_end = time.time()
        self.dfs.core.retry = stock_retry
        if refresher is not None:
            await refresher
        sweep_cpu = cpu.take()
        hydfs_after = await self.hydfs_stats(survivors)
        hydfs_delta: dict[str, int] = {}
        for n in survivors:
            for k, v in hydfs_after[n].items():
                if k != "leading":
                    hydfs_delta[k] = hydfs_delta.get(k, 0) + v - hydfs_before[n].get(k, 0)
        client_delta = {k: v - client_before.get(k, 0) for k, v in self.dfs.core.stats.items()}
        # let the poller see the last steps it is waiting for (bounded)
        while (time.monotonic() - t0 < FAILURE_DEADLINE and not ("committed" in polled and "gossip_all" in polled
               and (self.mode != "committed" or "view_all" in polled))):
            await asyncio.sleep(POLL)
        stop.set()
        await watcher
        end_info = await self.info(leader)
        c_end = end_info["controller"]["commit"] if end_info else None
        entries = raft_entries(Path(local.node_of(self.cluster, leader)["data"]), c0,
                               c_end if c_end is not None else c0 + 1000)
        logs = from_logs(self.cluster, victim, leader, kill_wall, sweep_end)
        by_role: dict[str, dict[str, Any]] = {}
        for r in ("led", "replica", "unaffected"):
            ts = [ok_at[n] for n in self.names if role[n] == r and n in ok_at]
            by_role[r] = {"files": sum(1 for n in self.names if role[n] == r), "ok": len(ts),
                          "p50_s": median(ts), "max_s": max(ts) if ts else None}
        times = list(ok_at.values())
        return {
            "victim": victim, "leader": leader, "kill_wall": kill_wall,
            "polled": polled, "logs": logs,
            "commit_before": c0, "commit_at_change": polled.get("commit_index_then"), "commit_after": c_end,
            "commits_in_quiet_second": c_quiet, "entries": entries,
            "members_entries": sum(1 for e in entries if e.get("op") == "members"
                                   and victim not in (e.get("alive") or [])),
            "other_entries": [e for e in entries if not (e.get("op") == "members")],
            "appendable": {"files": len(self.names), "ok": len(times), "last_s": max(times) if times else None,
                           "p50_s": median(times), "failed_attempts": errors, "by_role": by_role,
                           "sweep_inflight": self.a.sweep, "stock_client": self.a.stock_client},
            "cpu_during_sweep": sweep_cpu,
            "hydfs_counters": hydfs_delta, "client_counters": client_delta,
            "leading_after": {n: hydfs_after[n].get("leading") for n in survivors},
        }

    async def hydfs_stats(self, nodes: list[str]) -> dict[str, dict[str, int]]:
        """Each node's HyDFS core counters (``hydfs.info``): takeovers started, step-downs, stalls,
        messages in by type. The difference across the failure says how many attempts it took."""
        out = {}
        for n in nodes:
            try:
                d = await self.call(n, "hydfs.info", timeout=5.0)
                out[n] = {**d.get("stats", {}), "leading": len(d.get("leading", {}))}
            except (Unreachable, RpcError, TimeoutError):
                out[n] = {}
        return out

    async def _refresh(self, done: asyncio.Event) -> None:
        """Keep the HyDFS client's view of the live nodes fresh until ``done``."""
        while not done.is_set():
            with contextlib.suppress(HydfsError):
                await self.dfs.refresh()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), FAST_REFRESH)

    async def _members(self, node: str) -> list[dict[str, Any]] | None:
        try:
            return await self.call(node, "node.members", timeout=1.0)
        except (Unreachable, RpcError, TimeoutError):
            return None


def preferred_victims(ids: list[str], names: list[str]) -> list[str]:
    """Nodes by how many of the files they lead, most first: the first that is not the controller's
    leader is killed, so both modes lose the same node and the same files (placement is the ring of
    ids and names only), and the one with the most takeovers to do."""
    ring = Ring(ids)
    led = {n: 0 for n in ids}
    for name in names:
        led[ring.replicas(name)[0]] += 1
    return sorted(ids, key=lambda n: (-led[n], n))


LEADER_TRIES = 3   # fresh clusters until the node to kill is not the controller's leader


def one_mode(mode: str, a: argparse.Namespace, work: Path) -> dict[str, Any]:
    """A fresh cluster in ``mode``, the five steps, and ``cluster down`` whatever happens."""
    work.mkdir(parents=True, exist_ok=True)
    toml = work / f"{mode}.toml"
    toml.write_text(f'[control]\nhydfs_view = "{mode}"\n')
    old_env = os.environ.get("RAINSTORM_CONFIG")
    os.environ["RAINSTORM_CONFIG"] = str(toml)          # the node processes inherit it
    cfg = Config()
    cfg.control.hydfs_view = mode
    res: dict[str, Any] = {"mode": mode, "fresh_clusters": 0}
    try:
        for attempt in range(LEADER_TRIES):
            cfg.cluster.base_port = a.base_port + (0 if mode == "gossip" else 100) + 20 * attempt
            cfg.cluster.redis_base_port = cfg.cluster.base_port + 10
            d = work / f"cluster-{mode}-{attempt}"
            say(f"[bold]{mode}[/bold]: hydfs_view = \"{mode}\", {NODES} nodes up in {d}")
            res["fresh_clusters"] += 1
            cluster = local.up(d, NODES, cfg)
            try:
                res["voters"] = cluster["voters"]
                cpu = Cores(cluster_pids(cluster))
                got = asyncio.run(steps(mode, cluster, a, d, last=attempt == LEADER_TRIES - 1))
                if got is not None:
                    res.update(got)
                    res["cpu_whole_run"] = cpu.take()
                    res["cluster_dir"] = str(d)
                    return res
            finally:
                local.down(d)
        raise RuntimeError("no run")   # unreachable: the last attempt always runs
    finally:
        if old_env is None:
            os.environ.pop("RAINSTORM_CONFIG", None)
        else:
            os.environ["RAINSTORM_CONFIG"] = old_env


async def steps(mode: str, cluster: dict[str, Any], a: argparse.Namespace, d: Path,
                last: bool) -> dict[str, Any] | None:
    """The five steps on one cluster; None (before anything was done) when the node to kill leads the
    controller and another fresh cluster may be tried."""
    r = Run(mode, cluster, a)
    out: dict[str, Any] = {}
    try:
        leader = await r.leader()
        order = preferred_victims(r.ids, r.names)
        say(f"  controller leader {leader}; voters {', '.join(cluster['voters'])}; node to kill {order[0]}")
        if leader == order[0] and not last:
            say(f"  {order[0]} leads the controller: another fresh cluster")
            return None
        out["gossip_start"] = await r.counters(r.ids)
        say(f"  1. creating {a.files} files")
        out["create"] = await r.create()
        await asyncio.sleep(CoreConfig().settle + 0.5)
        say(f"  2. append latency before the failure ({a.seq} sequential, {a.conc} with {a.inflight} in flight)")
        out["before"] = await r.latency()
        show_latency("before", out["before"])
        out["sweep_floor_s"] = await r.sweep_floor()
        say(f"     one append to each of the {a.files} files, {a.sweep} in flight, no failure: "
            f"{out['sweep_floor_s']:.2f} s")
        leader = await r.leader()
        victim = next(n for n in order if n != leader)
        survivors = [n for n in r.ids if n != victim]
        out["gossip_before_kill"] = await r.counters(r.ids)
        say(f"  3. SIGKILL {victim} (leader {leader}); appending to every file until each succeeds "
            f"({a.sweep} in flight)")
        out["failure"] = await r.failure(victim, leader, d)
        show_failure(out["failure"])
        say("  4. append latency after the change")
        out["after"] = await r.latency()
        show_latency("after", out["after"])
        out["gossip_end"] = await r.counters(survivors)
        out["survivors"] = survivors
    finally:
        await r.close()
    return out


def show_latency(label: str, x: dict[str, Any]) -> None:
    s, c = x["sequential"], x["concurrent"]
    say(f"     {label}: sequential p50 {s['p50_ms']:.2f} ms p99 {s['p99_ms']:.2f} ms; "
        f"{c['inflight']} in flight p50 {c['p50_ms']:.2f} ms p99 {c['p99_ms']:.2f} ms, {c['appends_per_s']:.0f}/s")


def show_failure(f: dict[str, Any]) -> None:
    lg, ap = f["logs"], f["appendable"]
    fails = sorted(lg["gossip_failed"].values())
    say(f"     gossip declared {f['victim']} failed: first {fails[0] if fails else float('nan'):.2f} s, "
        f"all survivors {fails[-1] if fails else float('nan'):.2f} s (logs)")
    say(f"     controller committed the change: {lg['committed']} s (leader's log), "
        f"{f['polled'].get('committed')} s (polled)")
    views = sorted(lg["view"].values())
    if views:
        say(f"     HyDFS committed view without it: first {views[0]:.2f} s, all {views[-1]:.2f} s (logs)")
    if lg["isr"]:
        kinds = ", ".join(f"{v['n']} {k}" for k, v in lg["isr"].items())
        say(f"     HyDFS in-sync sets installed: {kinds}; the last {lg['isr_done_s']:.3f} s after the kill (logs)")
    say(f"     Raft: commit {f['commit_before']} -> {f['commit_after']}; members entries for the change "
        f"{f['members_entries']}; other entries {[e.get('op') for e in f['other_entries']]}")
    hc = f["hydfs_counters"]
    say(f"     HyDFS on the survivors: {hc.get('takeovers', 0)} takeovers started, {hc.get('step_downs', 0)} "
        f"step-downs, {hc.get('stalls', 0)} stalls; client: {f['client_counters']}")
    say(f"     every file appendable again after {ap['last_s']} s ({ap['ok']}/{ap['files']}; "
        f"p50 {ap['p50_s']:.2f} s; failed attempts {ap['failed_attempts']})")
    for role, x in ap["by_role"].items():
        say(f"       {role}: {x['files']} files, last {x['max_s']} s, p50 {x['p50_s']:.2f} s")


# ----------------------------------------------------------------------------- report


def gossip_delta(res: dict[str, Any], start: str, end: str, nodes: list[str]) -> dict[str, int]:
    out = {"suspected": 0, "declared_failed": 0, "refuted": 0}
    for n in nodes:
        for k in out:
            out[k] += res[end].get(n, {}).get(k, 0) - res[start].get(n, {}).get(k, 0)
    return out


def figures(res: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of one mode, flat, for the table and the JSON."""
    f = res["failure"]
    lg = f["logs"]
    fails = sorted(lg["gossip_failed"].values())
    views = sorted(lg["view"].values())
    survivors = res["survivors"]
    pre = gossip_delta(res, "gossip_start", "gossip_before_kill", list(res["gossip_start"]))
    post = gossip_delta(res, "gossip_before_kill", "gossip_end", survivors)
    acted = views[-1] if res["mode"] == "committed" and views else (fails[-1] if fails else None)
    lead_fail = lg["gossip_failed"].get(f["leader"])

    def first_of(*xs: float | None) -> float | None:
        return min((x for x in xs if x is not None), default=None)

    last_ok = f["appendable"]["last_s"]

    def minus(x: float | None, y: float | None) -> float | None:
        return None if x is None or y is None else x - y
    b, a = res["before"], res["after"]
    return {
        "create_s": res["create"]["create_s"], "all_in_sync_s": res["create"]["all_in_sync_s"],
        "seq_p50_before_ms": b["sequential"]["p50_ms"], "seq_p99_before_ms": b["sequential"]["p99_ms"],
        "conc_p50_before_ms": b["concurrent"]["p50_ms"], "conc_p99_before_ms": b["concurrent"]["p99_ms"],
        "conc_rate_before": b["concurrent"]["appends_per_s"],
        "gossip_first_s": fails[0] if fails else None, "gossip_all_s": fails[-1] if fails else None,
        "committed_s": first_of(lg["committed"], f["polled"].get("committed"), views[0] if views else None),
        "committed_log_s": lg["committed"], "committed_polled_s": f["polled"].get("committed"),
        "view_all_s": views[-1] if views else None, "hydfs_acts_s": acted,
        "leader_detect_s": lead_fail,
        "commit_after_leader_detect_s": minus(first_of(lg["committed"], f["polled"].get("committed"),
                                                       views[0] if views else None), lead_fail),
        "detect_spread_s": minus(fails[-1] if fails else None, fails[0] if fails else None),
        "acts_after_first_detect_s": minus(acted, fails[0] if fails else None),
        "appendable_after_acts_s": minus(last_ok, acted),
        "isr_done_s": lg["isr_done_s"], "isr_done_after_acts_s": minus(lg["isr_done_s"], acted),
        "isr_done_after_first_detect_s": minus(lg["isr_done_s"], fails[0] if fails else None),
        "isr_lines": " + ".join(f"{v['n']} {k}" for k, v in sorted(lg["isr"].items())),
        "members_entries": f["members_entries"],
        "other_entries": len(f["other_entries"]), "commit_delta": (f["commit_after"] or 0) - f["commit_before"],
        "hydfs_waited_on_entries": f["members_entries"] if res["mode"] == "committed" else 0,
        "sweep_floor_s": res["sweep_floor_s"],
        "appendable_last_s": f["appendable"]["last_s"], "appendable_p50_s": f["appendable"]["p50_s"],
        "appendable_ok": f["appendable"]["ok"], "files": f["appendable"]["files"],
        "victim": f["victim"], "leader": f["leader"],
        "roles": "/".join(str(f["appendable"]["by_role"][r]["files"]) for r in ("led", "replica", "unaffected")),
        "led_last_s": f["appendable"]["by_role"]["led"]["max_s"],
        "replica_last_s": f["appendable"]["by_role"]["replica"]["max_s"],
        "unaffected_last_s": f["appendable"]["by_role"]["unaffected"]["max_s"],
        "failed_attempts": f["appendable"]["failed_attempts"],
        "takeovers": f["hydfs_counters"].get("takeovers", 0), "step_downs": f["hydfs_counters"].get("step_downs", 0),
        "seq_p50_after_ms": a["sequential"]["p50_ms"], "seq_p99_after_ms": a["sequential"]["p99_ms"],
        "conc_p50_after_ms": a["concurrent"]["p50_ms"], "conc_p99_after_ms": a["concurrent"]["p99_ms"],
        "conc_rate_after": a["concurrent"]["appends_per_s"],
        "suspected_before_kill": pre["suspected"], "declared_before_kill": pre["declared_failed"],
        "refuted_before_kill": pre["refuted"],
        "suspected_after_kill": post["suspected"], "declared_after_kill": post["declared_failed"],
        "refuted_after_kill": post["refuted"], "false_fails": len(lg["false_fails"]),
        "others_cores": res["cpu_whole_run"]["foreign"], "ours_cores": res["cpu_whole_run"]["mine"],
    }


ROWS: list[tuple[str, str, str]] = [
    # (label, key, format); format "s" seconds, "ms", "n" integer, "r" rate, "c" cores
    ("create N files (s)", "create_s", "s"),
    ("  ... and all in sync (s)", "all_in_sync_s", "s"),
    ("append p50 before, sequential (ms)", "seq_p50_before_ms", "ms"),
    ("append p99 before, sequential (ms)", "seq_p99_before_ms", "ms"),
    ("append p50 before, 8 in flight (ms)", "conc_p50_before_ms", "ms"),
    ("append p99 before, 8 in flight (ms)", "conc_p99_before_ms", "ms"),
    ("appends/s before, 8 in flight", "conc_rate_before", "r"),
    ("gossip: first survivor declares the victim failed (s)", "gossip_first_s", "s"),
    ("gossip: all survivors (s)", "gossip_all_s", "s"),
    ("gossip: the controller leader itself (s)", "leader_detect_s", "s"),
    ("  spread between the first and the last survivor (s)", "detect_spread_s", "s3"),
    ("controller committed the change (s)", "committed_s", "s"),
    ("  ... the leader's `membership committed` line (s)", "committed_log_s", "s"),
    ("  ... seen by polling the leader's table (s)", "committed_polled_s", "s"),
    ("  ... after the leader's own detection (s)", "commit_after_leader_detect_s", "s3"),
    ("every survivor's HyDFS has the committed view (s)", "view_all_s", "s"),
    ("HyDFS acts on the failure everywhere (s)", "hydfs_acts_s", "s"),
    ("  ... after the first survivor's detection (s)", "acts_after_first_detect_s", "s3"),
    ("Raft `members` entries for the change", "members_entries", "n"),
    ("  ... of which HyDFS waited for", "hydfs_waited_on_entries", "n"),
    ("other Raft entries kill -> end of sweep", "other_entries", "n"),
    ("node killed (controller leader)", "victim", "v"),
    ("files it led / replicated / neither", "roles", "t"),
    ("in-sync sets HyDFS installed for it (node logs)", "isr_lines", "t"),
    ("HyDFS done: the last of them (s)", "isr_done_s", "s"),
    ("  ... after HyDFS acted everywhere (s)", "isr_done_after_acts_s", "s3"),
    ("  ... after the first survivor's detection (s)", "isr_done_after_first_detect_s", "s3"),
    ("one append to every file, no failure (s)", "sweep_floor_s", "s"),
    ("every file appendable again (s)", "appendable_last_s", "s"),
    ("  ... after HyDFS acted everywhere (s)", "appendable_after_acts_s", "s"),
    ("  files the victim led: last (s)", "led_last_s", "s"),
    ("  files it replicated: last (s)", "replica_last_s", "s"),
    ("  files without it: last (s)", "unaffected_last_s", "s"),
    ("  p50 over all files (s)", "appendable_p50_s", "s"),
    ("  append attempts that failed and were retried (all runs)", "failed_attempts", "n"),
    ("HyDFS takeovers started on the survivors", "takeovers", "n"),
    ("  ... of which stepped down (a failed attempt)", "step_downs", "n"),
    ("append p50 after, sequential (ms)", "seq_p50_after_ms", "ms"),
    ("append p99 after, sequential (ms)", "seq_p99_after_ms", "ms"),
    ("append p50 after, 8 in flight (ms)", "conc_p50_after_ms", "ms"),
    ("append p99 after, 8 in flight (ms)", "conc_p99_after_ms", "ms"),
    ("appends/s after, 8 in flight", "conc_rate_after", "r"),
    ("suspicions / declared failed / refuted before the kill (all runs)", "suspected_before_kill", "g0"),
    ("suspicions / declared failed / refuted after the kill (all runs)", "suspected_after_kill", "g1"),
    ("`member fail` of a live node, false detection (all runs)", "false_fails", "n"),
    ("cores used by other processes (whole run)", "others_cores", "c"),
]


SUMMED = {"suspected_before_kill", "declared_before_kill", "refuted_before_kill", "suspected_after_kill",
          "declared_after_kill", "refuted_after_kill", "false_fails", "failed_attempts"}   # over runs: totals


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of several runs of one mode: the median of each number, strings as they came."""
    out: dict[str, Any] = {}
    for key in runs[0]:
        vals = [r[key] for r in runs if r.get(key) is not None]
        if key in SUMMED:
            out[key] = sum(vals)
        elif vals and all(isinstance(v, int | float) for v in vals):
            m = median(vals)
            out[key] = round(m) if all(isinstance(v, int) for v in vals) and m == int(m) else m
        else:
            out[key] = " / ".join(dict.fromkeys(str(v) for v in vals)) if vals else None
    out["runs"] = len(runs)
    return out


def cell(fig: dict[str, Any], key: str, kind: str) -> str:
    if kind in ("g0", "g1"):
        when = "before" if kind == "g0" else "after"
        keys = [f"suspected_{when}_kill", f"declared_{when}_kill", f"refuted_{when}_kill"]
        return " / ".join(str(sum(fig[k])) if isinstance(fig[k], list) else f"{fig[k]:g}" for k in keys)
    v = fig.get(key)
    if v is None:
        return "-"
    if kind == "v":
        return f"{v} ({fig['leader']})" if isinstance(v, str) and "/" not in v else f"{v} (leaders {fig['leader']})"
    if kind == "t":
        return str(v)
    if isinstance(v, str):
        return v
    return {"s": f"{v:.2f}", "s3": f"{v:.3f}", "ms": f"{v:.2f}", "n": f"{v:g}", "r": f"{v:.0f}", "c": f"{v:.2f}"}[kind]


def ratio(a: dict[str, Any], b: dict[str, Any], key: str, kind: str) -> str:
    x, y = a.get(key), b.get(key)
    if kind not in ("s", "ms", "r") or not isinstance(x, int | float) or not isinstance(y, int | float) or not x:
        return ""
    return f"{y / x:.2f}x"


def table(figs: dict[str, dict[str, Any]]) -> list[list[str]]:
    modes = [m for m in MODES if m in figs]
    rows = []
    for label, key, kind in ROWS:
        row = [label, *(cell(figs[m], key, kind) for m in modes)]
        if len(modes) == 2:
            row.append(ratio(figs[modes[0]], figs[modes[1]], key, kind))
        rows.append(row)
    return rows


RUN_COLUMNS: list[tuple[str, str, str]] = [
    ("victim (leader)", "victim", "v"), ("gossip first / all", "gossip_first_s", "fa"),
    ("committed", "committed_s", "s"), ("HyDFS acted", "hydfs_acts_s", "s"), ("HyDFS done", "isr_done_s", "s"),
    ("HyDFS done after first detection", "isr_done_after_first_detect_s", "s"),
    ("every file appendable", "appendable_last_s", "s"), ("no-failure sweep", "sweep_floor_s", "s"),
    ("`members` entries", "members_entries", "n"), ("false detections", "false_fails", "n"),
]


def run_cell(fig: dict[str, Any], key: str, kind: str) -> str:
    if kind == "fa":
        return f"{cell(fig, 'gossip_first_s', 's')} / {cell(fig, 'gossip_all_s', 's')}"
    return cell(fig, key, kind)


def write(report: dict[str, Any], out: Path) -> None:
    """results.json (every run, every figure) and results.md (the medians side by side, then each run)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    figs = report["figures"]
    modes = [m for m in MODES if m in figs]
    head = ["figure", *(f'`{m}`' + (" (before)" if m == "gossip" else " (after)") for m in modes)]
    if len(modes) == 2:
        head.append("after / before")
    reps = report["repeat"]
    md = ["# HyDFS membership changes through the controller", "",
          f"`{report['command']}` on {report['machine']}, {report['when']}.", "",
          f"{report['note']}", "",
          f"Each mode on {reps} fresh local cluster{'s' if reps > 1 else ''} of {NODES} nodes ({NODES} Raft voters), "
          "modes alternating; " + (f"the medians of the {reps} runs, each run below. " if reps > 1 else "")
          + f"{report['files']} files of 64 bytes; appends of {len(PAYLOAD)} bytes to random files: "
          f"{report['seq']} sequential, then {report['conc']} with {report['inflight']} in flight. The node killed "
          "(SIGKILL, with its Redis) leads the most files of any node that is not the controller's leader (the "
          "same node in every run); from the kill every file gets one append "
          f"({report['sweep']} in flight, retried until it succeeds). Times are seconds from the kill, taken "
          "from the nodes' own log lines (ms resolution) unless marked polled (every 50 ms). `HyDFS acted`: "
          "the last survivor's HyDFS dropped the victim (`gossip`: its `member fail`; `committed`: its "
          "`committed view`); `HyDFS done`: the last in-sync set HyDFS installed for the change (`hydfs isr` "
          "lines). Raft entries: the leader's log between its commit index just before the kill and after "
          "the sweep, decoded. See bench/membership.py for the method.", "",
          "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(r) + " |" for r in table(figs)]
    per_run = report.get("per_run", {})
    if reps > 1:
        md += ["", "## Each run", "", "| mode | run | " + " | ".join(c[0] for c in RUN_COLUMNS) + " |",
               "|---|---|" + "---|" * len(RUN_COLUMNS)]
        for rep in range(reps):
            for m in modes:
                if rep < len(per_run.get(m, [])):
                    f = per_run[m][rep]
                    md.append(f"| `{m}` | {rep + 1} | " + " | ".join(run_cell(f, k, kind) for _, k, kind in RUN_COLUMNS)
                              + " |")
    md.append("")
    for m in modes:
        for rep, res in enumerate(report["modes"][m]):
            f = res["failure"]
            md += [f"Raft entries after the kill, `{m}` run {rep + 1}: " + (", ".join(
                f"{e.get('index')} {e.get('op')}" + (f" (alive {','.join(e['alive'])})" if e.get("alive") else "")
                for e in f["entries"]) or "none") + "."]
    if report.get("notes"):
        md += ["", "## Notes", "", *report["notes"]]
    (out / "results.md").write_text("\n".join(md) + "\n")


def print_table(figs: dict[str, dict[str, Any]]) -> None:
    modes = [m for m in MODES if m in figs]
    t = Table(title="HyDFS membership change: gossip view (before) vs the controller's committed view (after)")
    t.add_column("figure")
    for m in modes:
        t.add_column(m, justify="right")
    if len(modes) == 2:
        t.add_column("after / before", justify="right")
    for r in table(figs):
        t.add_row(*r)
    console.print(t)


# ----------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=None, help="files created before the failure (default 1000; "
                                                              "100 with --quick)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 100 files, fewer appends")
    ap.add_argument("--modes", default=",".join(MODES), help="gossip,committed (the default) or one of them")
    ap.add_argument("--seq", type=int, default=None, help="sequential appends per latency series (500; 100)")
    ap.add_argument("--conc", type=int, default=None, help="appends with --inflight in flight (2000; 200)")
    ap.add_argument("--inflight", type=int, default=8)
    ap.add_argument("--sweep", type=int, default=64, help="appends in flight while every file is tried after "
                                                          "the kill")
    ap.add_argument("--repeat", type=int, default=None,
                    help="fresh clusters per mode, alternating (default 3; 1 with --quick): single failures vary "
                         "by a few hundred ms with the phase of gossip's probes; the table shows medians")
    ap.add_argument("--stock-client", action="store_true",
                    help="sweep with the client's own retry (0.5 s) and membership refresh (1 s) cadence")
    ap.add_argument("--base-port", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the clusters' directories (node logs) after the run")
    a = ap.parse_args()
    a.files = a.files or (100 if a.quick else 1000)
    a.seq = a.seq or (100 if a.quick else 500)
    a.conc = a.conc or (200 if a.quick else 2000)
    a.repeat = a.repeat or (1 if a.quick else 3)
    a.base_port = a.base_port or 10000 + (os.getpid() * 37) % 20000
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        ap.error(f"--modes: one or both of {', '.join(MODES)}")
    out = a.out or (ROOT / ("bench/out/hydfs_membership" if a.quick else "docs/bench/hydfs_membership"))
    say(f"machine: {machine()}")
    report: dict[str, Any] = {
        "command": " ".join(["python bench/hydfs_membership.py", *sys.argv[1:]]).strip(),
        "machine": machine(), "cores": os.cpu_count(), "loadavg_at_start": os.getloadavg(),
        "note": f"This machine has {os.cpu_count()} cores, shared with other processes (other engineers' "
                "builds and benchmarks); `cores used by other processes` says how much of it they took during "
                "each mode.",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"), "files": a.files, "seq": a.seq, "conc": a.conc,
        "inflight": a.inflight, "sweep": a.sweep, "repeat": a.repeat, "nodes": NODES, "modes": {}, "figures": {}}
    work = Path(tempfile.mkdtemp(prefix="bench-hydfs-membership-"))
    per_run: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    try:
        for rep in range(a.repeat):
            for m in modes:           # alternating, so a busy spell of the shared machine hits both modes
                if a.repeat > 1:
                    say(f"[bold]run {rep + 1}/{a.repeat}[/bold]")
                res = one_mode(m, a, work / f"run{rep + 1}")
                report["modes"].setdefault(m, []).append(res)
                per_run[m].append(figures(res))
                report["figures"][m] = combine(per_run[m])
                report["per_run"] = per_run
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            say(f"cluster directories kept in {work}")
    print_table(report["figures"])
    write(report, out)
    say(f"wrote {out}/results.json and results.md")
    bad = any(f["false_fails"] or f["appendable_ok"] < f["files"] for runs in per_run.values() for f in runs)
    return 1 if bad else 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise SystemExit(main())

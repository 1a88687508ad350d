"""One node = one OS process: gossip member, RPC server and its own supervised redis-server.

The gossip UDP endpoint and the TCP RPC server share the node's HOST:PORT, so one address names a
node everywhere. SIGTERM is a graceful leave (others see ``left``); SIGKILL is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import json
import logging
import os
import resource
import signal
import sys
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from gossip.transport import GossipNode, view_rows
from hydfs.api import Client
from hydfs.server import HydfsServer
from net.rpc import RpcClient, RpcServer, split_addr
from net.wire import derive_key
from rainstorm.committed_view import CommittedView
from rainstorm.config import Config
from rainstorm.control import ControlService
from rainstorm.redis_proc import RedisSupervisor, redis_password
from rainstorm.worker import Worker

log = logging.getLogger(__name__)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:   # not glibc
        return None


def _malloc_trim() -> bool:
    """glibc's malloc_trim(0): hands the free pages of every arena back to the OS."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None and hasattr(libc, "malloc_trim") else False


class Trimmer:
    """Calls malloc_trim every ``every`` seconds and keeps what it did: glibc keeps freed memory in
    its arenas, so a node's RSS rose with the churn of its caches (the HyDFS tail, a replaced task's
    state) though Python held no more; one call gave 10-17 MB back on nodes of the soak."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.stats: dict[str, float] = {"runs": 0, "freed_mb": 0.0, "max_ms": 0.0}

    def once(self) -> float:
        """One trim; the MB it gave back."""
        proc = psutil.Process()
        before = proc.memory_info().rss
        t = time.perf_counter()
        _malloc_trim()
        took = (time.perf_counter() - t) * 1000
        freed = max(0, before - proc.memory_info().rss) / 2**20
        self.stats["runs"] += 1
        self.stats["freed_mb"] = round(self.stats["freed_mb"] + freed, 2)
        self.stats["max_ms"] = round(max(self.stats["max_ms"], took), 2)
        return freed

    async def run(self) -> None:
        while self.every > 0:
            await asyncio.sleep(self.every)
            freed = self.once()
            if freed >= 1:
                log.info("malloc_trim", extra={"freed_mb": round(freed, 1)})


def raise_open_file_limit() -> int:
    """Lift the soft limit on open files to the hard one, as Redis and Kafka nodes do: HyDFS keeps one
    descriptor per stored file, so the common soft default of 1024 would cap a node near 1000 files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):
        return soft
    return want


@dataclass
class NodeSpec:
    node_id: str
    bind: str                      # HOST:PORT for gossip (UDP) and RPC (TCP)
    join: list[str]                # introducers; empty for the first node
    data_dir: Path
    redis_port: int
    secret: str
    config: Config = field(default_factory=Config)


class Node:
    def __init__(self, spec: NodeSpec) -> None:
        self.spec = spec
        self.fd_limit = raise_open_file_limit()  # before HyDFS opens a descriptor per stored file
        self.host, self.port = split_addr(spec.bind)
        key = derive_key(spec.secret)
        self.rpc = RpcServer(key)
        self.gossip = GossipNode(spec.node_id, spec.bind, key, spec.config.gossip)
        self.gossip.frame_stats = self.rpc.stats  # one set of dropped-frame counters per node
        self.redis = RedisSupervisor(self.host, spec.redis_port, redis_password(spec.secret, spec.node_id),
                                     spec.data_dir, spec.config.node)
        self.rpc_client = RpcClient(key)
        # HyDFS acts on what the controller committed, not on this node's gossip (rainstorm/committed_view.py)
        self.view = CommittedView(self.gossip) if spec.config.control.hydfs_view == "committed" else None
        self.hydfs = HydfsServer(spec.node_id, spec.data_dir, self.rpc, self.rpc_client, self.view or self.gossip,
                                 config=spec.config.hydfs)
        self.dfs = Client(self.rpc_client, [spec.bind])
        self.control = ControlService(spec.node_id, spec.config.control, self.rpc, self.rpc_client, self.gossip,
                                      spec.data_dir, hydfs=self.dfs)
        self.worker: Worker | None = None
        self._stop = asyncio.Event()
        self.rpc.register("node.info", self._info)
        self.rpc.register("node.members", self._members)
        self.rpc.register("node.probe_rtt", self._probe_rtt)
        self.rpc.register("node.heap", self._heap)
        self._heap_base: tracemalloc.Snapshot | None = None
        self.trimmer = Trimmer(spec.config.node.malloc_trim_every)
        self.gc_pauses: dict[int, float] = {}     # generation -> longest collection (s)
        self._gc_started = 0.0
        gc.callbacks.append(self._gc_timer)

    async def _info(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": self.spec.node_id, "address": self.spec.bind, "pid": os.getpid(),
            "redis_pid": self.redis.pid, "redis_port": self.spec.redis_port,
            "redis_restarts": self.redis.restarts, "roles": self.roles(),
            "controller": self.control.info(),
            # the live set HyDFS acts on: the controller's committed one (None: the node's gossip view)
            "hydfs_view": list(self.view.ids) if self.view is not None else None,
            "tasks": len(self.worker.instances) if self.worker is not None else 0,   # instances running here
            # bad MAC / version / size over UDP and TCP, plus well-signed gossip that fails its schema
            "dropped_frames": {**self.rpc.stats, "gossip_schema": self.gossip.swim.stats["schema"]},
            "hydfs": self.hydfs.health(),
            # a suspicion while nothing crashed is a false failure detection (a bug): benchmarks read these
            "gossip": {k: self.gossip.swim.stats[k] for k in ("suspected", "declared_failed", "refuted")},
            # round trips of this node's acked direct probes: how close a busy peer comes to suspicion
            "probe_rtt": self.gossip.probe_delays(),
            "gc_max_pause": {str(g): round(t, 4) for g, t in sorted(self.gc_pauses.items())},
            "malloc_trim": dict(self.trimmer.stats),
            "gossip_counters": {k: v for k, v in self.gossip.swim.stats.items()
                                if not k.startswith(("sent.", "recv."))},
        }

    def _gc_timer(self, phase: str, info: dict[str, Any]) -> None:
        """Times each garbage collection: a long one holds the GIL, and the gossip thread with it."""
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        took = time.perf_counter() - self._gc_started
        gen = int(info.get("generation", 0))
        self.gc_pauses[gen] = max(self.gc_pauses.get(gen, 0.0), took)

    async def _probe_rtt(self, args: dict[str, Any]) -> dict[str, float]:
        """Round trips of this node's acked direct probes since the last ``reset`` (bench/control.py)."""
        out = self.gossip.probe_delays()
        if isinstance(args, dict) and args.get("reset"):
            self.gossip.reset_probe_delays()
        return out

    async def _heap(self, args: dict[str, Any]) -> dict[str, Any]:
        """What the node's heap holds and what grew: the tool for "RSS grows with the job's age".

        Allocation sites come from ``tracemalloc``, off unless asked: ``start`` (frames per site)
        switches it on from then (it costs CPU; ``PYTHONTRACEMALLOC`` at start-up slows the imports
        tenfold), ``reset`` takes the baseline the next calls diff against, ``stop`` switches it off.
        Object counts by type (the collector's tracked objects made since ``gc.freeze``) come always.
        """
        args = args if isinstance(args, dict) else {}
        top = int(args.get("top", 15))
        if args.get("trim"):   # what of the RSS is free memory the C allocator keeps (not a leak)
            before = psutil.Process().memory_info().rss
            self.trimmer.once()
            return {"rss_before_mb": round(before / 2**20, 2),
                    "rss_after_mb": round(psutil.Process().memory_info().rss / 2**20, 2)}
        if args.get("start") and not tracemalloc.is_tracing():
            tracemalloc.start(int(args["start"]))
            self._heap_base = None
        if args.get("stop"):
            tracemalloc.stop()
            self._heap_base = None
        types = Counter(type(o).__qualname__ for o in gc.get_objects())
        out: dict[str, Any] = {"traced": tracemalloc.is_tracing(),
                               "types": types.most_common(top), "objects": sum(types.values())}
        if not tracemalloc.is_tracing():
            return out
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        if args.get("reset") or self._heap_base is None:
            self._heap_base = snap
        current, peak = tracemalloc.get_traced_memory()
        out.update(current_mb=round(current / 2**20, 2), peak_mb=round(peak / 2**20, 2), grew=[
            {"site": " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(d.traceback)),
             "kb": round(d.size_diff / 1024, 1), "count": d.count_diff, "total_kb": round(d.size / 1024, 1)}
            for d in snap.compare_to(self._heap_base, "traceback")[:top]])
        return out

    def roles(self) -> list[str]:
        c = self.control.info()
        return ["leader"] * c["leading"] + ["voter"] * c["voter"] + ["worker"]

    async def _members(self, _args: dict[str, Any]) -> list[dict[str, Any]]:
        return view_rows(self.gossip.members(), self.gossip.clock())

    async def _start_roles(self) -> None:
        await self.control.start()
        self.worker = Worker(self.spec.node_id, self.rpc, self.rpc_client, self.dfs, self.redis.client(),
                             self.gossip, self.control, self.spec.config.worker,
                             local_read=self.hydfs.local_range, view=self.view)
        await self.worker.start()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        # Everything built so far (modules, configs, the cores) lives as long as the node: park it
        # out of the collector's reach. A full collection otherwise scans it all with the GIL held:
        # 80-140 ms pauses measured during jobs, long enough for gossip probes of this node to time
        # out (false suspicions). Collections then scan only what the node made since.
        gc.collect()
        gc.freeze()
        # Gossip answers probes from its own thread, which needs the GIL for every datagram; a busy
        # main loop holds it up to the switch interval (5 ms by default) each time, several times per
        # probe round trip, and longer while the OS has the holder descheduled. 0.5 ms: in an A/B of
        # an 80-task job on 5 nodes (2 cores), 0 suspicions in 7 runs against 4 in 3 of 7 at 5 ms.
        sys.setswitchinterval(self.spec.config.node.gil_switch)
        log.info("open file limit", extra={"limit": self.fd_limit})
        self.spec.data_dir.mkdir(parents=True, exist_ok=True)
        (self.spec.data_dir / "node.json").write_text(json.dumps(
            {"id": self.spec.node_id, "address": self.spec.bind, "pid": os.getpid(),
             "redis_port": self.spec.redis_port}))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self.redis.start()
        try:
            await self.rpc.start(self.host, self.port)
            await self.gossip.start(self.spec.join)
            await self.hydfs.start()
            await self._start_roles()
            log.info("node up", extra={"address": self.spec.bind, "redis_pid": self.redis.pid})
            trims = asyncio.create_task(self.trimmer.run())
            await self._stop.wait()
            trims.cancel()
            log.info("leaving")
            await self.gossip.leave(self.spec.config.node.leave_linger)
        finally:
            if self.worker is not None:
                await self.worker.close()
            await self.control.close()
            await self.hydfs.close()
            await self.rpc_client.close()
            await self.gossip.close()
            await self.rpc.close()
            await self.redis.stop()
            with contextlib.suppress(OSError):
                (self.spec.data_dir / "node.json").unlink()
            log.info("node stopped")

"""What the long-run benchmarks share (bench/follow.py, bench/soak.py; issue 13: "runs for weeks").

- :class:`Feeder`: appends seeded access-log lines (bench/streaming.py's generator) to a HyDFS file at a
  steady rate, in chunks every ``period`` seconds, from its own thread and event loop through the HyDFS
  client (a `rainstorm dfs append` process per chunk would cost ~0.35 s of CPU each on 2 cores). Every
  append carries its own idempotency key and is retried with it, so what the file holds is exactly what
  the feeder counted: the reference the job's output is checked against.
- :class:`LiveProbe`: bench/recovery.py's in-process poller, asking any node that answers (a node may be
  down), with a HyDFS client on the same connection pool.
- :func:`trend`: the least-squares slope of a series per minute, and as % of its mean per minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import statistics
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.recovery import Probe
from bench.streaming import N_PATHS, SECTIONS, _chunk, _cum
from hydfs.api import Client, HydfsError
from net.rpc import RpcClient
from net.wire import derive_key


def loadavg() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


# -- the steady source ------------------------------------------------------------------------------
class Feeder(threading.Thread):
    """``rate`` lines/s appended to ``name`` every ``period`` s (a chunk of rate * period lines), on a
    fixed schedule: a late chunk does not shift the next ones, so the rate holds on average."""

    def __init__(self, cluster_dir: Path, name: str, rate: int, period: float = 0.5, seed: int = 13,
                 keep_offsets: bool = False, append_timeout: float = 60.0) -> None:
        super().__init__(name="feeder", daemon=True)
        data = json.loads((cluster_dir / "cluster.json").read_text())
        self.secret, self.addrs = data["secret"], [n["address"] for n in data["nodes"]]
        self.file, self.rate, self.period = name, rate, period
        self.per_chunk = max(1, round(rate * period))
        self.keep_offsets = keep_offsets
        self.append_timeout = append_timeout
        self.rng = random.Random(seed)
        self.paths = _cum([(f"/{SECTIONS[r % len(SECTIONS)]}/{r}", 1 / (r + 1) ** 1.1) for r in range(N_PATHS)])
        self.ips = [f"10.{self.rng.randrange(256)}.{self.rng.randrange(256)}.{self.rng.randrange(1, 255)}"
                    for _ in range(2000)]
        self.lock = threading.Lock()
        self.size = 0                      # bytes acknowledged (the file's size: the feeder is its only writer)
        self.lines = 0
        self.chunks = 0
        self.counts: dict[str, int] = defaultdict(int)   # status-500 lines per path (the count job's answer)
        self.kept: list[tuple[int, str]] = []            # (byte offset, line) of status-500 lines (the filter's)
        self.append_ms: list[float] = []
        self.retries = 0
        self.late_s = 0.0                  # the most a chunk went out after its due time
        self.error: str | None = None
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:   # reported by the benchmark, which then stops
            self.error = f"{type(exc).__name__}: {exc}"

    async def _main(self) -> None:
        rpc = RpcClient(derive_key(self.secret))
        client = Client(rpc, self.addrs)
        cid = f"bench-feeder-{uuid.uuid4().hex[:8]}"
        t0 = time.monotonic()
        try:
            while not self._halt.is_set() and self.error is None:
                due = t0 + self.chunks * self.period
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                    if self._halt.is_set():
                        return
                self.late_s = max(self.late_s, time.monotonic() - due)
                text, _bad = _chunk(self.rng, self.lines, self.per_chunk, self.paths, self.ips)
                data = text.encode()
                await self._append(client, data, (cid, self.chunks + 1))
                self._account(text)
                with self.lock:
                    self.size += len(data)
                    self.lines += self.per_chunk
                    self.chunks += 1
        finally:
            await client.close()
            await rpc.close()

    async def _append(self, client: Client, data: bytes, key: tuple[str, int]) -> None:
        """One chunk, retried with the same idempotency key until acknowledged (it lands once)."""
        deadline = time.monotonic() + self.append_timeout
        while True:
            t = time.perf_counter()
            try:
                await client.append(self.file, data, key=key)
                self.append_ms.append((time.perf_counter() - t) * 1000)
                return
            except HydfsError as exc:
                if time.monotonic() > deadline:
                    raise HydfsError(f"append {key[1]} not acknowledged in {self.append_timeout:g} s: {exc}") \
                        from None
                self.retries += 1
                await asyncio.sleep(0.2)

    def _account(self, text: str) -> None:
        off = self.size
        for line in text.splitlines(keepends=True):
            f = line.split(",", 5)
            if f[4] == "500":
                self.counts[f[3]] += 1
                if self.keep_offsets:
                    self.kept.append((off, line[:-1]))
            off += len(line)


# -- polling the cluster in-process -----------------------------------------------------------------
class LiveProbe(Probe):
    """bench/recovery.py's Probe, asking whichever node answers; with a HyDFS client."""

    def __init__(self, cluster_dir: Path) -> None:
        super().__init__(cluster_dir)
        data = json.loads((cluster_dir / "cluster.json").read_text())
        self.secret = data["secret"]
        self.nodes = data["nodes"]
        self.down: set[str] = set()      # nodes the bench killed and has not restarted
        self.hydfs = Client(self.client, list(self.addr.values()))

    def ask(self, method: str, args: dict[str, Any] | None = None, timeout: float = 3.0) -> Any:
        for node in self.addr:
            if node not in self.down:
                res = self.call(node, method, args, timeout=timeout)
                if res is not None:
                    return res
        return None

    def job(self, name: str) -> dict[str, Any] | None:
        for j in self.ask("control.jobs") or []:
            if j.get("latest") and j["name"] == name:
                return dict(j)
        return None

    def leader(self) -> str | None:
        return (self.ask("control.leader") or {}).get("leader")

    def dfs(self, coro: Any, timeout: float = 30.0) -> Any:
        return self.runner.run(asyncio.wait_for(coro, timeout))

    def size(self, name: str) -> int | None:
        """A HyDFS file's size (a zero-byte ranged read), None if it cannot be read now."""
        try:
            return int(self.dfs(self.hydfs.read_range(name, 0, 0), 10.0)[1])
        except (HydfsError, TimeoutError):
            return None

    def get(self, name: str) -> bytes | None:
        try:
            return bytes(self.dfs(self.hydfs.get(name), 60.0))
        except (HydfsError, TimeoutError):
            return None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.runner.run(self.hydfs.close())
        super().close()


def proc(pid: int | None) -> psutil.Process | None:
    try:
        return psutil.Process(pid) if pid else None
    except psutil.Error:
        return None


def cpu_s(p: psutil.Process | None) -> float | None:
    try:
        if p is None:
            return None
        t = p.cpu_times()
        return float(t.user + t.system)
    except psutil.Error:
        return None


# -- trends -----------------------------------------------------------------------------------------
@dataclass
class Trend:
    n: int
    mean: float
    slope_per_min: float          # units of the series per minute
    pct_per_min: float            # the slope as % of the series' mean, per minute
    first: float
    last: float
    notes: list[str] = field(default_factory=list)


def trend(ts: list[float], ys: list[float]) -> Trend | None:
    """Least squares of ``ys`` over ``ts`` (seconds): None with fewer than 3 points or one time."""
    pts = [(t, y) for t, y in zip(ts, ys, strict=True) if y is not None]
    if len(pts) < 3 or len({t for t, _ in pts}) < 2:
        return None
    xs, vs = [t / 60 for t, _ in pts], [y for _, y in pts]
    slope, _ = statistics.linear_regression(xs, vs)
    mean = statistics.fmean(vs)
    return Trend(len(vs), mean, slope, 100 * slope / mean if mean else float("nan"), vs[0], vs[-1])


def catch_up(check: Callable[[], str | None], limit: float, every: float) -> tuple[str | None, float | None]:
    """After the feeder stops: wait until ``check`` finds the output exact (None) or ``limit`` seconds
    pass; (the last mismatch or None, seconds it took)."""
    t0 = time.monotonic()
    mismatch: str | None = "output never read"
    while time.monotonic() - t0 < limit:
        mismatch = check()
        if mismatch is None:
            return None, time.monotonic() - t0
        time.sleep(every)
    return mismatch, None

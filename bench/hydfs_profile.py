"""Where HyDFS spends its time: HyDFS servers and a client in ONE process, under cProfile.

    python bench/hydfs_profile.py [--size 1MB] [--count 30] [--top 25] [--fsync always|interval]
    python bench/hydfs_profile.py --membership 1000 [--fsync always|interval]

The servers are the real :class:`hydfs.server.HydfsServer` (real RPC over 127.0.0.1, real disk and
fsync) with a membership view set by hand instead of gossip. One process runs everything on one
core, so the profile adds up the CPU that all of them spend.

* default: 3 servers, ``--count`` sequential appends of ``--size``: the breakdown behind the "1 MB
  append throughput" figure of bench/hydfs.py;
* ``--membership N``: 5 servers holding N files of 4 KB; one server stops (a crash as the others
  see it) and the other 4 are told, as gossip would; profiled until every file has 3 in-sync
  replicas again. Reports the longest time the event loop was blocked (what SWIM, on the same loop
  in a real node, would see) - the cause of the false failure declarations in docs/hydfs-bench.md.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gossip.types import MemberEvent, MemberInfo, State
from hydfs.api import Client
from hydfs.cache import parse_size
from hydfs.context import CoreConfig
from hydfs.server import HydfsServer, ServerConfig
from net.rpc import RpcClient, RpcServer
from net.wire import derive_key


class StaticView:
    def __init__(self, members: dict[str, str]) -> None:
        self.members = [MemberInfo(i, a, State.ALIVE, 0, 0.0) for i, a in members.items()]
        self.subs: list[Any] = []

    def alive(self) -> list[MemberInfo]:
        return list(self.members)

    def subscribe(self, callback: object) -> None:
        self.subs.append(callback)

    def fail(self, node_id: str) -> None:
        gone = next(m for m in self.members if m.node_id == node_id)
        self.members = [m for m in self.members if m.node_id != node_id]
        for cb in self.subs:
            cb(MemberEvent("fail", node_id, gone.addr, 0, time.monotonic()))


class LoopLag:
    """The longest time the event loop did not get to run a 10 ms timer on time."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        for _ in range(10**6):
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, time.perf_counter() - t - 0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start(n: int, fsync: str, root: Path) -> tuple[dict[str, str], list[Any], list[StaticView]]:
    key = derive_key("profile")
    addrs = {f"p{i}": f"127.0.0.1:{free_port()}" for i in range(1, n + 1)}
    rows = [{"id": i, "address": a, "state": "alive"} for i, a in addrs.items()]
    parts: list[Any] = []
    views = []
    for nid, addr in addrs.items():
        rpc = RpcServer(key)

        async def members(_a: dict[str, Any]) -> list[dict[str, Any]]:
            return rows

        rpc.register("node.members", members)
        cli = RpcClient(key)
        view = StaticView(addrs)
        srv = HydfsServer(nid, root / nid, rpc, cli, view, CoreConfig(settle=0.0), ServerConfig(fsync=fsync))
        host, port = addr.rsplit(":", 1)
        await rpc.start(host, int(port))
        await srv.start()
        parts.append((nid, srv, rpc, cli))
        views.append(view)
    return addrs, parts, views


async def stop(parts: list[Any]) -> None:
    for _nid, srv, rpc, cli in parts:
        await srv.close()
        await cli.close()
        await rpc.close()


def render(prof: cProfile.Profile, top: int) -> str:
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


async def membership_async(files: int, fsync: str, top: int, root: Path) -> str:
    addrs, parts, views = await start(5, fsync, root)
    crpc = RpcClient(derive_key("profile"))
    writers = [Client(crpc, list(addrs.values())) for _ in range(10)]

    async def write(k: int) -> None:
        for i in range(k, files, len(writers)):
            await writers[k].create(f"g/{i:05d}", b"\x01" * 4096)

    t = time.perf_counter()
    await asyncio.gather(*(write(k) for k in range(len(writers))))
    made = time.perf_counter() - t
    victim = "p1"
    ids = [nid for nid, *_ in parts if nid != victim]
    lost = [n for n in parts[0][1].storage.names()]  # the files the victim held
    await stop([parts[0]])
    live = parts[1:]
    lag = LoopLag()
    await asyncio.sleep(0.05)
    lag.worst = 0.0
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for v in views[1:]:
        v.fail(victim)
    done = False
    for _ in range(6000):  # at most ~60 s
        await asyncio.sleep(0.01)
        owners = {nid: srv.core for nid, srv, *_ in live}
        done = all(
            (ld := owners[owners[ids[0]].primary_of(n)].primaries.get(n)) is not None and ld.open
            and len(ld.isr) == 3 and victim not in ld.isr and ld.pending is None for n in lost)
        if done:
            break
    prof.disable()
    took = time.perf_counter() - t0
    worst = lag.worst
    lag.task.cancel()
    for w in writers:
        await w.close()
    await crpc.close()
    await stop(live)
    head = (f"{files} files of 4 KB on 5 servers in one process (fsync {fsync}), made in "
            f"{made:.1f}s; the {len(lost)} files of {victim} have 3 in-sync replicas again "
            f"{'after' if done else 'NOT within'} {took:.2f}s of telling 4 servers {victim} failed; "
            f"longest event-loop block {worst:.2f}s\n")
    return head + render(prof, top)


async def main_async(size: int, count: int, fsync: str, top: int, root: Path) -> str:
    addrs, parts, _views = await start(3, fsync, root)
    crpc = RpcClient(derive_key("profile"))
    cl = Client(crpc, list(addrs.values()))
    block = b"\x5a" * size
    await cl.create("prof.log", b"")
    for _ in range(3):  # warm up connections and the primary
        await cl.append("prof.log", block)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(count):
        await cl.append("prof.log", block)
    prof.disable()
    took = time.perf_counter() - t0
    await cl.close()
    await crpc.close()
    await stop(parts)
    head = (f"{count} appends of {size} B, client + 3 servers in one process (fsync {fsync}): "
            f"{took:.2f}s = {took / count * 1e3:.1f} ms per append = {size * count / took / 2**20:.1f} MB/s\n")
    return head + render(prof, top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1MiB")
    ap.add_argument("--count", type=int, default=30)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--fsync", choices=["always", "interval"], default="interval")
    ap.add_argument("--membership", type=int, default=0, metavar="FILES",
                    help="profile the reaction to one server's failure with this many files instead")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="hydfs-profile-") as tmp:
        if a.membership:
            print(asyncio.run(membership_async(a.membership, a.fsync, a.top, Path(tmp))))
        else:
            print(asyncio.run(main_async(parse_size(a.size), a.count, a.fsync, a.top, Path(tmp))))


if __name__ == "__main__":
    main()

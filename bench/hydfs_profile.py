"""Where the CPU of a HyDFS append goes: three HyDFS servers and a client in ONE process, under cProfile.

    python bench/hydfs_profile.py [--size 1MB] [--count 30] [--top 25] [--no-fsync]

The servers are the real :class:`hydfs.server.HydfsServer` (real RPC over 127.0.0.1, real disk and
fsync) with a fixed membership view instead of gossip. One process runs everything on one core, so
the profile adds up the CPU that the client, the primary and both replicas spend per append: the
breakdown behind the "1 MB append throughput" figure of bench/hydfs.py (see docs/hydfs-bench.md).
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

from gossip.rpc import RpcClient, RpcServer
from gossip.types import MemberInfo, State
from gossip.wire import derive_key
from hydfs.api import Client
from hydfs.cache import parse_size
from hydfs.context import CoreConfig
from hydfs.server import HydfsServer, ServerConfig


class StaticView:
    def __init__(self, members: dict[str, str]) -> None:
        self.members = [MemberInfo(i, a, State.ALIVE, 0, 0.0) for i, a in members.items()]

    def alive(self) -> list[MemberInfo]:
        return list(self.members)

    def subscribe(self, callback: object) -> None:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def main_async(size: int, count: int, fsync: bool, top: int, root: Path) -> str:
    key = derive_key("profile")
    addrs = {f"p{i}": f"127.0.0.1:{free_port()}" for i in range(1, 4)}
    rows = [{"id": i, "address": a, "state": "alive"} for i, a in addrs.items()]
    servers, rpcs, clients = [], [], []
    for nid, addr in addrs.items():
        rpc = RpcServer(key)

        async def members(_a: dict[str, Any]) -> list[dict[str, Any]]:
            return rows

        rpc.register("node.members", members)
        cli = RpcClient(key)
        srv = HydfsServer(nid, root / nid, rpc, cli, StaticView(addrs), CoreConfig(settle=0.0),
                          ServerConfig(fsync=fsync))
        host, port = addr.rsplit(":", 1)
        await rpc.start(host, int(port))
        await srv.start()
        servers.append(srv)
        rpcs.append(rpc)
        clients.append(cli)
    crpc = RpcClient(key)
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
    for srv, rpc, cli in zip(servers, rpcs, clients, strict=True):
        await srv.close()
        await cli.close()
        await rpc.close()
    out = io.StringIO()
    st = pstats.Stats(prof, stream=out)
    st.sort_stats("tottime").print_stats(top)
    head = (f"{count} appends of {size} B, client + 3 servers in one process (fsync {'on' if fsync else 'off'}): "
            f"{took:.2f}s = {took / count * 1e3:.1f} ms per append = {size * count / took / 2**20:.1f} MB/s\n")
    return head + out.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1MiB")
    ap.add_argument("--count", type=int, default=30)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--no-fsync", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="hydfs-profile-") as tmp:
        print(asyncio.run(main_async(parse_size(a.size), a.count, not a.no_fsync, a.top, Path(tmp))))


if __name__ == "__main__":
    main()

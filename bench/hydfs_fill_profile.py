"""Where a re-replication spends its time, on a real local cluster: py-spy on every survivor.

    pip install py-spy
    python bench/hydfs_fill_profile.py [--size 100MiB] [--base-port 24000] [--top 12]

Starts 5 real nodes, writes one file of ``--size`` (1 MB entries), SIGKILLs one of its replicas
that is not the primary, and samples the 4 surviving nodes with ``py-spy record`` (500 Hz, 4 s,
from just before the kill). Prints, per node, the functions with the most samples of their own
(idle thread-pool workers left out), so the new replica's write path and the primary's send path
can be told apart. The folded stacks stay in ``--out`` for flame graphs.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.hydfs import pick_name, put_file
from bench.hydfs_report import human
from hydfs.api import Client
from hydfs.cache import parse_size
from hydfs.context import CoreConfig
from net.rpc import RpcClient
from net.wire import derive_key
from rainstorm import cluster as local
from rainstorm.config import Config

RATE = 500  # samples per second
SECONDS = 4
IDLE = ("_worker (concurrent/futures/thread.py", "select (", "epoll", "poll (")


def top_self(folded: Path, top: int) -> tuple[float, list[tuple[str, float]]]:
    """(busy ms, [(function, ms of its own samples)]) from a py-spy ``raw`` file."""
    own: collections.Counter[str] = collections.Counter()
    busy = 0
    for line in folded.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        leaf = stack.split(";")[-1]
        if any(leaf.startswith(i) or i in leaf for i in IDLE):
            continue
        busy += int(n)
        own[leaf] += int(n)
    ms = 1000 / RATE
    return busy * ms, [(f, c * ms) for f, c in own.most_common(top)]


async def scenario(c: dict, d: Path, size: int, out: Path) -> tuple[str, str, list[str]]:
    rpc = RpcClient(derive_key(c["secret"]))
    cl = Client(rpc, [n["address"] for n in c["nodes"]])
    try:
        await asyncio.sleep(CoreConfig().settle + 0.5)  # nodes vouch for copies only after they settled
        ids = [n["id"] for n in c["nodes"]]
        victim = ids[-1]
        name, replicas = pick_name("profile/fill", ids, victim, "replica", None)
        await put_file(cl, name, random.Random(1).randbytes(size))
        pids = {n["id"]: n["pid"] for n in c["nodes"] if n["id"] != victim}
        spies = [subprocess.Popen(["py-spy", "record", "-r", str(RATE), "-d", str(SECONDS), "-f", "raw",
                                   "-o", str(out / f"{nid}.txt"), "-p", str(pid)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                  for nid, pid in pids.items()]
        await asyncio.sleep(0.5)  # py-spy attached
        local.kill(d, victim)
        for p in spies:
            await asyncio.to_thread(p.wait)
        after = list((await cl.ls(name))["replicas"])
        return replicas[0], next((x for x in after if x not in replicas), "?"), list(pids)
    finally:
        await cl.close()
        await rpc.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="100MiB", help="file size (default 100MiB)")
    ap.add_argument("--base-port", type=int, default=24000)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--out", type=Path, default=Path("bench/out/fill-profile"))
    a = ap.parse_args()
    if shutil.which("py-spy") is None:
        sys.exit("error: py-spy is not installed (pip install py-spy)")
    size = int(parse_size(a.size))
    a.out.mkdir(parents=True, exist_ok=True)
    cfg = Config()
    cfg.cluster.base_port, cfg.cluster.redis_base_port = a.base_port, a.base_port + 100
    d = Path(tempfile.mkdtemp(prefix="rs-fill-"))
    c = local.up(d, 5, cfg)
    try:
        primary, new, survivors = asyncio.run(scenario(c, d, size, a.out))
    finally:
        local.down(d)
        shutil.rmtree(d, ignore_errors=True)
    print(f"{human(size)} file; primary {primary}, new replica {new}; {SECONDS} s sampled from just before the kill")
    for nid in survivors:
        role = "primary" if nid == primary else "new replica" if nid == new else "other"
        busy, rows = top_self(a.out / f"{nid}.txt", a.top)
        print(f"== {nid} ({role}): {busy:.0f} ms busy")
        for fn, ms in rows:
            print(f"  {ms:6.0f} ms  {fn[:140]}")


if __name__ == "__main__":
    main()

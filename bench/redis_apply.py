"""What a commit costs the node's Redis: acknowledge-only (today) against the caches earlier versions wrote.

    python bench/redis_apply.py [--commits 3000] [--groups 1000,100000]

Until snapshots, every commit also wrote its state changes, its output batches and the applied index
into Redis (``rs:T:state``, ``rs:T:out:P``, ``rs:T:applied``), and nothing ever read them back (a
rebuild read the log). This bench runs both on one real redis-server in the same process: for each
commit one batch is accepted and read (as the task does), then applied either by today's script
(XACK + XDEL) or by the earlier one, kept here as the baseline, with what a count task's commit
carried: 100 group updates drawn from ``--groups`` groups, one 8 KB output batch, an outbox trim.
It prints Redis's own CPU time per commit (INFO cpu, so client and loop overhead do not count),
wall time per commit, and Redis memory after the run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import redis.asyncio as aredis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from rainstorm.redis_inbox import RedisInboxStore, keys  # noqa: E402
from rainstorm.redis_proc import find_binary  # noqa: E402
from rainstorm.stream.stores import Applied  # noqa: E402

# the apply script of earlier versions: ack, then the applied index, state and outbox caches
OLD_APPLY = """
local owner = redis.call('GET', KEYS[1])
if owner ~= ARGV[1] then return redis.error_reply('NOTOWNER ' .. tostring(owner)) end
local prefix, n, i = ARGV[2], 0, 4
local applied = tonumber(redis.call('GET', KEYS[3]) or '0')
if tonumber(ARGV[3]) > applied then redis.call('SET', KEYS[3], ARGV[3]) end
n = tonumber(ARGV[i]); i = i + 1
if n > 0 then
  local ids = {unpack(ARGV, i, i + n - 1)}
  redis.call('XACK', KEYS[2], 'g', unpack(ids))
  redis.call('XDEL', KEYS[2], unpack(ids))
end
i = i + n
n = tonumber(ARGV[i]); i = i + 1
for k = 1, n do redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1]); i = i + 2 end
n = tonumber(ARGV[i]); i = i + 1
for k = 1, n do redis.call('ZADD', prefix .. ARGV[i], ARGV[i + 1], ARGV[i + 2]); i = i + 3 end
n = tonumber(ARGV[i]); i = i + 1
for k = 1, n do redis.call('ZREMRANGEBYSCORE', prefix .. ARGV[i], '-inf', ARGV[i + 1]); i = i + 2 end
return 1
"""


async def redis_cpu(r: aredis.Redis) -> float:
    info = await r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def run(r: aredis.Redis, s: RedisInboxStore, task: str, commits: int, groups: int, old: bool) -> dict[str, float]:
    await r.delete(*keys(task).values())
    await s.open(task, 1, {})
    old_apply = r.register_script(OLD_APPLY)
    k = keys(task)
    rng = random.Random(1)
    mem0 = (await r.info("memory"))["used_memory"]
    cpu0, t0 = await redis_cpu(r), time.perf_counter()
    for i in range(1, commits + 1):
        await s.accept(task, 1, 0, i, b"x" * 2000, False, 0)
        ids = [e.id for e in await s.read(task, 1, 1)]
        if not old:
            await s.apply(task, 1, Applied(i, ids))
            continue
        argv: list[Any] = [1, k["out"], i, len(ids), *ids, 100]
        for _ in range(100):
            argv += [msgpack.packb([1, f"k{rng.randrange(groups)}"]), msgpack.packb(i)]
        argv += [1, 0, i, msgpack.packb([i, b"y" * 8000, False]), 1, 0, max(0, i - 4)]
        await old_apply(keys=[k["owner"], k["in"], k["applied"], k["state"]], args=argv)
    wall, cpu = time.perf_counter() - t0, await redis_cpu(r) - cpu0
    mem = (await r.info("memory"))["used_memory"] - mem0
    await r.delete(*keys(task).values(), f"{k['out']}0")
    return {"wall_us": wall * 1e6 / commits, "cpu_us": cpu * 1e6 / commits, "mem_mb": mem / 1e6}


async def main(a: argparse.Namespace) -> None:
    port = 10000 + (os.getpid() * 37) % 20000
    with tempfile.TemporaryDirectory() as d:
        proc = subprocess.Popen([find_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", d], stdout=subprocess.DEVNULL)
        r = aredis.Redis(port=port)
        try:
            for _ in range(50):
                try:
                    await r.ping()
                    break
                except aredis.ConnectionError:
                    await asyncio.sleep(0.1)
            s = RedisInboxStore(r)
            print(f"machine: {machine()}; {a.commits} commits per run, one redis-server")
            for groups in (int(g) for g in a.groups.split(",")):
                new = await run(r, s, "now:0:0", a.commits, groups, old=False)
                old = await run(r, s, "old:0:0", a.commits, groups, old=True)
                print(f"groups {groups:>7}: ack-only {new['cpu_us']:.0f} us Redis CPU/commit "
                      f"({new['wall_us']:.0f} us wall), +{new['mem_mb']:.2f} MB | with caches {old['cpu_us']:.0f} us "
                      f"({old['wall_us']:.0f} us wall), +{old['mem_mb']:.2f} MB | caches cost "
                      f"{old['cpu_us'] / new['cpu_us']:.2f}x Redis CPU")
        finally:
            await r.aclose()
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--commits", type=int, default=3000)
    ap.add_argument("--groups", default="1000,100000")
    asyncio.run(main(ap.parse_args()))

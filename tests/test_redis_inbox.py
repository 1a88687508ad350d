"""The Redis inbox on a real redis-server behaves exactly like the in-memory model the core is tested on."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rainstorm.redis_inbox import RedisInboxStore, keys
from rainstorm.redis_proc import find_binary
from rainstorm.stream.stores import Applied, MemoryInboxStore, NotOwner


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory) -> Iterator[int]:  # type: ignore[no-untyped-def]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d: Path = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([find_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--dir", str(d)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                redis.Redis(port=port).ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield port
    finally:
        proc.kill()
        proc.wait()


def run(port: int, coro_fn):  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        r = aredis.Redis(port=port)
        try:
            return await coro_fn(RedisInboxStore(r), r)
        finally:
            await r.aclose()

    return asyncio.run(main())


def test_accept_only_next_and_read_ack(redis_port: int) -> None:
    async def body(s: RedisInboxStore, r: aredis.Redis) -> None:
        t = "j1:s1:0"
        await r.delete(*keys(t).values())
        assert await s.open(t, 1, {}) == {}
        assert await s.accept(t, 1, 7, 1, b"a", False, 0) == 1
        assert await s.accept(t, 1, 7, 1, b"a", False, 0) == 1   # duplicate: not added again
        assert await s.accept(t, 1, 7, 3, b"c", False, 0) == 1   # gap: refused
        assert await s.accept(t, 1, 7, 2, b"b", True, 0) == 2
        got = await s.read(t, 1, 10)
        assert [(e.channel, e.seq, e.payload, e.end) for e in got] == [(7, 1, b"a", False), (7, 2, b"b", True)]
        assert await s.read(t, 1, 10) == []
        await s.apply(t, 1, Applied(index=5, acks=[got[0].id]))
        assert await r.xlen(keys(t)["in"]) == 1           # acked and deleted: only the second is left
        await s.apply(t, 1, Applied(index=6))              # nothing to ack: a no-op
        # Redis holds the dedup state and the inbox, and no copy of the task's state or outbox
        assert sorted(k.decode() for k in await r.keys(f"rs:{t}:*")) == sorted(
            [keys(t)["owner"], keys(t)["marks"], keys(t)["in"]])
        # redis-cli shows the dedup state and what is in flight
        assert await r.hget(keys(t)["marks"], "7") == b"2"
        groups = await r.xinfo_groups(keys(t)["in"])
        assert groups[0]["pending"] == 1

    run(redis_port, body)


def test_new_epoch_fences_old_and_rereads_pending(redis_port: int) -> None:
    async def body(s: RedisInboxStore, r: aredis.Redis) -> None:
        t = "j1:s2:0"
        await r.delete(*keys(t).values())
        await s.open(t, 1, {})
        for i in range(1, 5):
            await s.accept(t, 1, 0, i, f"p{i}".encode(), False, 0)
        assert len(await s.read(t, 1, 3)) == 3            # read, never acked: the instance dies
        # a new instance, whose log says seq 1 of channel 0 is committed
        assert await s.open(t, 2, {0: 1}) == {0: 4}
        with pytest.raises(NotOwner):
            await s.accept(t, 1, 0, 5, b"zombie", False, 0)
        with pytest.raises(NotOwner):
            await s.read(t, 1, 10)
        with pytest.raises(NotOwner):
            await s.open(t, 1, {})
        again = await s.read(t, 2, 10)                     # pending first, then the unread one
        assert [e.seq for e in again] == [2, 3, 4]

    run(redis_port, body)


def test_lost_redis_is_not_owner(redis_port: int) -> None:
    async def body(s: RedisInboxStore, r: aredis.Redis) -> None:
        t = "j1:s3:0"
        await s.open(t, 1, {})
        await r.delete(*keys(t).values())                  # Redis restarted without its data
        with pytest.raises(NotOwner):
            await s.accept(t, 1, 0, 1, b"x", False, 0)

    run(redis_port, body)


def test_full_inbox_accepts_nothing(redis_port: int) -> None:
    async def body(_s: RedisInboxStore, r: aredis.Redis) -> None:
        s = RedisInboxStore(r, max_len=2)
        t = "j1:s4:0"
        await r.delete(*keys(t).values())
        await s.open(t, 1, {})
        assert [await s.accept(t, 1, 0, i, b"x", False, 0) for i in (1, 2, 3)] == [1, 2, 2]
        got = await s.read(t, 1, 10)
        await s.apply(t, 1, Applied(index=1, acks=[got[0].id]))
        assert await s.accept(t, 1, 0, 3, b"x", False, 0) == 3   # room again after the ack

    run(redis_port, body)


ops = st.lists(st.one_of(
    st.tuples(st.just("accept"), st.integers(0, 2), st.integers(1, 6), st.integers(0, 3)),
    st.tuples(st.just("read"), st.integers(1, 4), st.just(0), st.just(0)),
    st.tuples(st.just("apply"), st.integers(0, 3), st.integers(0, 9), st.just(0)),
    st.tuples(st.just("reopen"), st.integers(0, 2), st.integers(0, 3), st.just(0)),
), max_size=30)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops)
def test_same_as_memory_model(redis_port: int, program) -> None:  # type: ignore[no-untyped-def]
    async def body(s: RedisInboxStore, r: aredis.Redis) -> None:
        t = "diff:s:0"
        await r.delete(*keys(t).values())
        mem = MemoryInboxStore()
        epoch = 1
        assert await s.open(t, epoch, {}) == mem.open(t, epoch, {})
        read_r: list = []
        read_m: list = []
        for op, a, b, c in program:
            if op == "accept":
                assert await s.accept(t, epoch, a, b, b"p", False, c) == mem.accept(t, epoch, a, b, b"p", False, c)
            elif op == "read":
                got_r, got_m = await s.read(t, epoch, a), mem.read(t, epoch, a)
                assert [(e.channel, e.seq) for e in got_r] == [(e.channel, e.seq) for e in got_m]
                read_r += got_r
                read_m += got_m
            elif op == "apply":
                k = min(a, len(read_r))
                await s.apply(t, epoch, Applied(index=b, acks=[e.id for e in read_r[:k]]))
                mem.apply(t, epoch, Applied(index=b, acks=[e.id for e in read_m[:k]]))
                read_r, read_m = read_r[k:], read_m[k:]
            else:
                epoch += 1
                marks = {a: b}
                assert await s.open(t, epoch, marks) == mem.open(t, epoch, marks)
                read_r, read_m = [], []

    run(redis_port, body)


def test_forget_deletes_a_tasks_keys_unless_a_newer_instance_owns_them(redis_port: int) -> None:
    async def body(s: RedisInboxStore, r: aredis.Redis) -> None:
        t, other = "we*rd@7:1:0", "weXrd@7:1:0"     # a job name is the user's: glob characters are literal
        for task in (t, other):     # what an instance of epoch 2 leaves: owner, marks, inbox, an outbox
            k = keys(task)
            await r.set(k["owner"], 2)
            await r.hset(k["marks"], "0", 1)
            await r.xadd(k["in"], {"c": 0, "s": 1, "p": b"a", "e": 0})
            await r.zadd(k["out"] + "4", {b"batch": 1})
        assert await s.tasks_with_keys("we*rd@7") == {t}
        assert await s.tasks_with_keys() >= {t, other}
        assert not await s.forget(t, keep_from=2)      # an instance of epoch 2 moved back here: kept
        assert await r.exists(keys(t)["owner"], keys(t)["in"], keys(t)["out"] + "4") == 3
        assert await s.forget(t, keep_from=3)          # the stopped instance was older: all go
        assert await s.tasks_with_keys("we*rd@7") == set()
        assert await r.exists(keys(other)["owner"], keys(other)["out"] + "4") == 2   # its neighbour's stay
        assert await s.forget(other)
        assert await s.tasks_with_keys("weXrd@7") == set()

    run(redis_port, body)

"""Ranged reads (``c_read``, ``Client.read_range``): committed bytes by offset, found by bisection over
per-file prefix sums of the entries' sizes that the storage keeps through appends and truncations."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from hydfs.client import Result
from hydfs.context import CoreConfig
from hydfs.disk import DiskStorage
from hydfs.entries import Entry
from hydfs.messages import parse
from hydfs.storage import MemoryStorage, Storage
from tests.test_hydfs_core import F, cluster, divergent_tail, get, held_tail, make, owners

sizes = st.lists(st.integers(0, 300), max_size=40)
spans = st.lists(st.tuples(st.integers(0, 13000), st.integers(0, 5000)), min_size=1, max_size=20)


def _entries(lens: list[int], first: int = 1, seed: int = 0) -> list[Entry]:
    rng = random.Random(seed)
    return [Entry(1, first + k, "c", first + k, rng.randbytes(n)) for k, n in enumerate(lens)]


def _check(s: Storage, name: str, whole: bytes, reads: list[tuple[int, int]]) -> None:
    last = s.last(name)[0]
    assert s.data_end(name, last) == len(whole) == s.data_end(name, last + 5)
    for off, n in reads:
        assert s.read_bytes(name, off, n) == whole[off:off + n], (off, n)


def _storage_roundtrip(s: Storage, lens: list[int], more: list[int], keep: int, reads: list[tuple[int, int]],
                       reopen: Any = None) -> None:
    first = _entries(lens)
    s.append(F, first)
    whole = b"".join(e.data for e in first)
    _check(s, F, whole, reads)
    for i in range(len(first) + 1):  # every entry boundary
        assert s.data_end(F, i) == sum(lens[:i])
    s.truncate(F, keep)   # cut, then grow again: the prefix sums follow
    kept = first[:keep]
    again = _entries(more, len(kept) + 1, seed=1)
    s.append(F, again)
    whole = b"".join(e.data for e in kept + again)
    _check(s, F, whole, reads)
    if reopen is not None:
        _check(reopen(), F, whole, reads)   # rebuilt from the blocks at start-up


@settings(max_examples=150, deadline=None, derandomize=True)
@given(lens=sizes, more=sizes, keep=st.integers(0, 40), reads=spans)
def test_memory_storage_reads_any_byte_range(lens: list[int], more: list[int], keep: int,
                                             reads: list[tuple[int, int]]) -> None:
    _storage_roundtrip(MemoryStorage(), lens, more, keep, reads)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(lens=sizes, more=sizes, keep=st.integers(0, 40), reads=spans, tail=st.sampled_from([0, 16 << 20]))
def test_disk_storage_reads_any_byte_range(lens: list[int], more: list[int], keep: int,
                                           reads: list[tuple[int, int]], tail: int) -> None:
    """With the tail cache (fresh entries from memory) and without (every byte from the file)."""
    with tempfile.TemporaryDirectory() as d:
        s = DiskStorage(Path(d), fsync_data=False, tail_bytes=tail)
        reopened: list[DiskStorage] = []

        def reopen() -> DiskStorage:
            s.close()
            reopened.append(DiskStorage(Path(d), fsync_data=False))
            return reopened[0]

        _storage_roundtrip(s, lens, more, keep, reads, reopen)
        for r in reopened:
            r.close()


# ----------------------------------------------------------------- on the simulated network


def read(sim: Any, off: int, n: int, cid: str = "reader", replica: str | None = None) -> tuple[bytes, int]:
    c = sim.client(cid)
    r: Result = sim.wait(cid, c.read(F, off, n, sim.now, replica))
    assert r.ok, r
    return r.reply["data"], r.reply["size"]


def test_the_wire_message() -> None:
    m = {"t": "c_read", "rid": 1, "f": F, "off": 5, "len": 10, "replica_ok": False}
    assert parse(m) == m
    assert parse({**m, "off": -1}) is None
    assert parse({"t": "reply", "rid": 1, "ok": True, "err": None, "data": b"x", "size": 9})["size"] == 9
    assert parse({"t": "reply", "rid": 1, "ok": True, "err": None, "data": "x"}) is None


@settings(max_examples=15, deadline=None, derandomize=True)
@given(lens=st.lists(st.integers(0, 3000), min_size=1, max_size=25), reads=spans, seed=st.integers(0, 1000))
def test_random_ranges_match_slices_of_the_whole_file(lens: list[int], reads: list[tuple[int, int]],
                                                      seed: int) -> None:
    sim = cluster(seed=seed, config=CoreConfig(range_bytes=4000))
    rng = random.Random(seed)
    blobs = [rng.randbytes(n) for n in lens]
    make(sim, blobs[0])
    c = sim.client("w")
    for b in blobs[1:]:
        assert sim.wait("w", c.append(F, b, sim.now)).ok
    whole = get(sim).data
    assert whole == b"".join(blobs)
    for off, n in reads:
        data, size = read(sim, off, n)
        assert size == len(whole)
        assert data == whole[off:off + min(n, 4000)], (off, n)   # at most a reply's cap


def test_ranges_across_entry_boundaries_past_the_end_and_the_size() -> None:
    sim = cluster()
    make(sim, b"aaa")
    c = sim.client("w")
    for b in (b"", b"bbbb", b"c"):
        assert sim.wait("w", c.append(F, b, sim.now)).ok
    assert read(sim, 0, 0) == (b"", 8)
    assert read(sim, 2, 3) == (b"abb", 8)     # across the empty entry too
    assert read(sim, 0, 100) == (b"aaabbbbc", 8)
    assert read(sim, 7, 5) == (b"c", 8)
    assert read(sim, 8, 5) == (b"", 8)
    assert read(sim, 1000, 5) == (b"", 8)


def test_a_reader_loops_over_a_file_larger_than_the_cap() -> None:
    sim = cluster(config=CoreConfig(range_bytes=1000))
    blob = random.Random(3).randbytes(5500)
    make(sim, blob[:2000])
    assert sim.wait("w", sim.client("w").append(F, blob[2000:], sim.now)).ok
    got, off = b"", 0
    while True:
        data, size = read(sim, off, 1 << 20)
        assert len(data) <= 1000
        if not data:
            break
        got, off = got + data, off + len(data)
    assert got == blob and size == len(blob)


def test_a_replica_serves_committed_bytes_and_never_older_than_our_own_appends() -> None:
    sim = cluster(3)
    make(sim, b"h;")
    _, r1, r2 = owners(sim)
    sim.run_for(1.0)  # the replicas hear of the create's commit with the next heartbeat
    assert read(sim, 0, 100, replica=r2) == (b"h;", 2)
    # r1 has every entry but hears about the commit late: its copy is stale for reads
    sim.hooks.append(lambda src, dest, msg: not (dest == r1 and msg.get("t") == "append" and not msg["entries"]))
    c = sim.client("me")
    assert sim.wait("me", c.append(F, b"mine;", sim.now)).index == 2
    assert read(sim, 0, 100, "me", replica=r1) == (b"h;mine;", 7)   # redone at the primary
    assert c.stats["stale_reads"] == 1
    # another reader has no appends of its own: r1's copy, up to what r1 knows is committed, is fine
    assert read(sim, 0, 100, "other", replica=r1) == (b"h;", 2)


def test_unacknowledged_bytes_are_never_read() -> None:
    sim = cluster(3)
    _, _, r2, _, op = held_tail(sim)
    assert read(sim, 0, 100) == (b"h;", 2)
    assert read(sim, 0, 100, replica=r2) == (b"h;", 2)
    sim.hooks.clear()
    assert sim.wait("w", op).index == 2
    assert read(sim, 0, 100) == (b"h;tail;", 7)


def test_ranges_after_a_takeover_that_cut_a_divergent_tail() -> None:
    """The old primary holds two entries nobody acknowledged; a new primary takes over, appends, and
    the old one, back, cuts its tail and catches up: its prefix sums follow the cut and the refill."""
    sim = cluster(3)
    p, c = divergent_tail(sim, (b"lost-one-long;", b"lost2;"))
    assert sim.nodes[p].storage.data_end(F, 10) == len(b"h;acked;lost-one-long;lost2;")
    sim.crash(p)
    sim.hooks[:] = [lambda src, dest, msg: src != "c2"]  # hold c2's retries back
    sim.run_for(1.0)
    assert sim.wait("w", sim.client("w").append(F, b"new;", sim.now)).index == 3
    sim.hooks.clear()
    sim.restart(p)
    sim.run_for(3.0)
    assert sim.run_until(lambda: c.pending() == 0, sim.now + 10)  # c2's retries land after `new`
    sim.run_for(1.0)
    whole = get(sim).data
    assert whole.startswith(b"h;acked;new;") and len(whole) == len(b"h;acked;new;lost-one-long;lost2;")
    for node in owners(sim):
        s = sim.nodes[node].storage
        assert s.read_bytes(F, 0, 1 << 20) == b"".join(e[4] for e in sim.log(node, F))
    assert read(sim, 0, 1 << 20) == (whole, len(whole))
    assert read(sim, 5, 7) == (whole[5:12], len(whole))


def test_local_range_serves_an_in_sync_copy_in_process_and_nothing_unacknowledged() -> None:
    """``NodeCore.local_range`` (a task reading a source file its node holds): the same rule as a
    replica read, no message at all; a node that holds no trusted in-sync copy says None."""
    sim = cluster(5)
    make(sim, b"h;")
    assert sim.wait("w", sim.client("w").append(F, b"body;", sim.now)).ok
    sim.run_for(1.0)   # replicas hear of the commit with the next heartbeat
    p, r1, r2 = owners(sim)
    for node in (p, r1, r2):
        core = sim.nodes[node].core
        assert core is not None
        assert core.local_range(F, 0, 100) == (b"h;body;", 7)
        assert core.local_range(F, 3, 2) == (b"od", 7)
    outsider = next(n for n in sim.nodes if n not in (p, r1, r2))
    core = sim.nodes[outsider].core
    assert core is not None and core.local_range(F, 0, 100) is None
    # an append r1 holds but has not heard committed is not served by r1
    sim.hooks.append(lambda src, dest, msg: not (dest == r1 and msg.get("t") == "append" and not msg["entries"]))
    assert sim.wait("w", sim.client("w").append(F, b"tail;", sim.now)).ok
    core = sim.nodes[r1].core
    assert core is not None and core.local_range(F, 0, 100) == (b"h;body;", 7)

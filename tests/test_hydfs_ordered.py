"""Ordered appends: the ``after`` precondition lets a writer pipeline appends to one file (seq k+1
sent before seq k is acknowledged) and still have them land in seq order."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hydfs.client import ClientCore, Result
from hydfs.conditions import Tables, check
from hydfs.entries import Entry
from hydfs.messages import FENCED, OUT_OF_ORDER, parse
from hydfs.sim import Sim
from tests.test_hydfs_core import F, cluster, do, get, make, owners

W = "w"  # the pipelining writer's client id


def send(c: ClientCore, now: float, k: int, cond: dict[str, Any] | None = None, data: bytes | None = None) -> int:
    """Append seq ``k`` of writer ``c`` under key (client id, k), to follow seq k - 1."""
    if cond is None:
        cond = {"after": k - 1} if k > 1 else {}
    return c.append(F, b"%d;" % k if data is None else data, now, cond or None, key=(c.client_id, k))


def seqs_in_log(sim: Sim, node: str, client: str = W) -> list[int]:
    return [e[3] for e in sim.log(node, F) if e[2] == client]


# ----------------------------------------------------------------- the check itself


def test_after_is_checked_against_the_writers_own_ordered_entries() -> None:
    t = Tables()
    t.add([Entry(1, 1, "w", 1, b""), Entry(1, 2, "other", 2, b"", "k", 3)])
    assert check({"after": 1}, t, 2, "w") is None
    assert check({"after": 2}, t, 2, "w") == OUT_OF_ORDER           # not ordered yet
    assert check({"after": 2}, t, 2, "other") is None
    assert check({"after": 1}, t, 2, "other") == OUT_OF_ORDER       # seq 1 of another writer
    assert check({"fence": "k", "epoch": 2, "after": 1}, t, 2, "w") == FENCED  # final before transient
    assert check({"fence": "k", "epoch": 3, "after": 2}, t, 2, "w") == OUT_OF_ORDER
    msg = {"t": "c_append", "rid": 1, "f": F, "client": "w", "seq": 2, "data": b""}
    assert parse({**msg, "cond": {"after": 1, "fence": "k", "epoch": 3}})["cond"] == {
        "after": 1, "fence": "k", "epoch": 3}
    assert parse({**msg, "cond": {"after": 0}}) is None     # n >= 1
    assert parse({**msg, "cond": {"after": "1"}}) is None


# ----------------------------------------------------------------- on the simulated network


def test_an_append_that_overtakes_its_predecessor_is_refused_then_lands_after_it() -> None:
    sim = cluster()
    make(sim)
    c = sim.client(W)
    held = []

    def hold_first_seq1(src: str, dest: str, msg: dict[str, Any]) -> bool:
        if src == W and msg.get("t") == "c_append" and msg.get("seq") == 1 and not held:
            held.append(msg)
            return False
        return True

    sim.hooks.append(hold_first_seq1)
    op1 = send(c, sim.now, 1)
    op2 = send(c, sim.now, 2)
    sim.run_for(0.5)
    assert held and c.stats["out_of_order"] >= 1 and op2 not in c.results  # refused, still asking
    assert seqs_in_log(sim, owners(sim)[0]) == []
    r1, r2 = sim.wait(W, op1), sim.wait(W, op2)  # seq 1's retry lands, then seq 2 behind it
    assert r1.ok and r2.ok and r1.index == 2 and r2.index == 3
    assert get(sim).data == b"1;2;"


def test_fence_still_refuses_a_lower_epoch_with_after() -> None:
    sim = cluster()
    make(sim)
    c = sim.client(W)
    assert sim.wait(W, send(c, sim.now, 1, {"fence": "t", "epoch": 2})).ok
    r = sim.wait(W, send(c, sim.now, 2, {"fence": "t", "epoch": 1, "after": 1}))
    assert not r.ok and r.err == FENCED
    # a writer of a stale epoch whose predecessor is missing is fenced at once, not left asking
    r = sim.wait(W, send(c, sim.now, 9, {"fence": "t", "epoch": 1, "after": 8}))
    assert not r.ok and r.err == FENCED
    assert sim.wait(W, send(c, sim.now, 2, {"fence": "t", "epoch": 2, "after": 1})).index == 3
    assert get(sim).data == b"1;2;"


def test_a_retry_of_an_append_that_landed_returns_its_original_index() -> None:
    """The idempotency check comes before ``after``: a retry answers with the original index."""
    sim = cluster()
    make(sim)
    c = sim.client(W)
    assert sim.wait(W, send(c, sim.now, 1)).index == 2
    op = send(c, sim.now, 2)
    sim.hooks.append(lambda src, dest, msg: not (dest == W and msg.get("t") == "reply"))
    sim.run_for(1.5)   # landed at index 3; every answer lost; the client retries meanwhile
    sim.hooks.clear()
    assert c.stats["retries"] >= 1
    assert sim.wait(W, op).index == 3
    # the same key again, from a writer that restarted (a fresh core) and lost track of it: index 3,
    # although its `after` names a seq this key's first attempt did not
    again = do(sim, "w-restarted", lambda c2, now: c2.append(F, b"2;", now, {"after": 7}, key=(W, 2)))
    assert again.ok and again.index == 3
    assert get(sim).data == b"1;2;"


PROPS = settings(max_examples=40, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@PROPS
@given(seed=st.integers(0, 2**16), writers=st.integers(1, 3), count=st.integers(2, 15),
       drop=st.sampled_from([0.0, 0.05, 0.2]), dup=st.sampled_from([0.0, 0.2, 0.5]),
       delay=st.sampled_from([0.01, 0.1, 0.4]), crash_at=st.one_of(st.none(), st.floats(0.0, 1.0)))
def test_pipelined_appends_land_in_seq_order(seed: int, writers: int, count: int, drop: float, dup: float,
                                             delay: float, crash_at: float | None) -> None:
    """Each writer sends all its appends at once, each after the one before; the network delays
    (reorders), duplicates and drops messages, and the primary may crash. Every append is
    acknowledged, once, at the index it holds in the log, and each writer's entries are in seq order."""
    sim = Sim([f"n{i}" for i in range(5)], seed=seed, drop=drop, dup=dup, delay=(0.001, delay))
    sim.run_for(sim.config.settle + 0.5)
    make(sim)
    ops: dict[tuple[str, int], int] = {}
    for w in range(writers):
        c = sim.client(f"w{w}")
        for k in range(1, count + 1):
            ops[(c.client_id, k)] = send(c, sim.now, k)
    if crash_at is not None:
        sim.run_for(crash_at)
        sim.crash(owners(sim)[0])
    results: dict[tuple[str, int], Result] = {}
    for (cid, k), op in ops.items():
        results[(cid, k)] = sim.wait(cid, op, timeout=120)
    assert all(r.ok for r in results.values()), [r for r in results.values() if not r.ok]
    sim.run_for(2.0)
    log = sim.log(owners(sim)[0], F)
    for w in range(writers):
        cid = f"w{w}"
        assert seqs_in_log(sim, owners(sim)[0], cid) == list(range(1, count + 1))
        for k in range(1, count + 1):
            idx = results[(cid, k)].index
            assert idx is not None and log[idx - 1][2:4] == [cid, k]

"""HyDFS protocol core, one behaviour at a time, on the deterministic simulated network."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hydfs.client import ClientCore, Result
from hydfs.conditions import Tables, check
from hydfs.entries import Entry, common_prefix, term_at
from hydfs.messages import EXISTS, FENCED, LEN_MISMATCH, NOT_FOUND, parse
from hydfs.node_core import NodeCore
from hydfs.ring import Ring
from hydfs.sim import Sim
from hydfs.storage import FileMeta, MemoryStorage

F = "data/f"


def ids(n: int) -> list[str]:
    return [f"n{i}" for i in range(n)]


def cluster(n: int = 5, seed: int = 1, **kw: Any) -> Sim:
    sim = Sim(ids(n), seed=seed, **kw)
    sim.run_for(sim.config.settle + 0.5)  # nodes vouch for nothing before they settle
    return sim


def do(sim: Sim, cid: str, start: Any, timeout: float = 30.0) -> Result:
    """Start an operation on client ``cid`` (``start(client, now) -> op id``) and wait for its result."""
    c = sim.client(cid)
    result: Result = sim.wait(cid, start(c, sim.now), timeout)
    return result


def make(sim: Sim, data: bytes = b"", name: str = F) -> Result:
    r = do(sim, "admin", lambda c, now: c.create(name, data, now))
    assert r.ok, r
    return r


def append(sim: Sim, data: bytes, cid: str = "c1", cond: dict[str, Any] | None = None, name: str = F) -> Result:
    return do(sim, cid, lambda c, now: c.append(name, data, now, cond))


def get(sim: Sim, cid: str = "reader", name: str = F, replica: str | None = None) -> Result:
    return do(sim, cid, lambda c, now: c.get(name, now, replica))


def owners(sim: Sim, name: str = F) -> list[str]:
    return Ring(sim.oracle()).replicas(name, 3)


def primary(sim: Sim, name: str = F) -> NodeCore:
    node = sim.nodes[owners(sim, name)[0]]
    assert node.core is not None
    return node.core


def logs_identical(sim: Sim, nodes: list[str], name: str = F) -> bool:
    first = sim.log(nodes[0], name)
    return all(sim.log(n, name) == first for n in nodes)


# ----------------------------------------------------------------- basics


def test_create_append_get() -> None:
    sim = cluster()
    assert make(sim, b"head;").index == 1
    assert [append(sim, b"a%d;" % i).index for i in range(3)] == [2, 3, 4]
    r = get(sim)
    assert r.ok and r.data == b"head;a0;a1;a2;"
    assert [i for i, _ in r.entries] == [1, 2, 3, 4]
    sim.run_for(1.0)
    assert sorted(sim.holders(F)) == sorted(owners(sim)) and logs_identical(sim, owners(sim))


def test_create_of_an_existing_name_fails_but_its_own_retry_succeeds() -> None:
    sim = cluster()
    c = sim.client("a")
    op = c.create(F, b"x", sim.now)
    sim.hooks.append(lambda src, dest, msg: not (dest == "a" and msg.get("t") == "reply"))
    sim.run_for(0.5)   # created, but the answer is lost
    sim.hooks.clear()
    r = sim.wait("a", op)  # the client retries with the same (client id, seq)
    assert r.ok and r.index == 1
    r2 = do(sim, "b", lambda c, now: c.create(F, b"y", now))
    assert not r2.ok and r2.err == EXISTS
    assert get(sim).data == b"x"


def test_a_create_whose_first_entry_died_with_the_primary_is_finished_by_its_retry() -> None:
    """hydfs-bench finding 4: the create's in-sync set reached the replicas, its entry did not, then
    the primary died. The new primary holds a created, empty file; the client's retry of its create
    must finish it, not be told the name exists (and leave an empty file behind)."""
    sim = cluster()
    p = owners(sim)[0]
    c = sim.client("a")
    sim.hooks.append(lambda src, dest, msg: not (msg.get("t") == "append" and msg.get("entries")))
    op = c.create(F, b"payload", sim.now)
    assert sim.run_until(lambda: (meta := sim.nodes[owners(sim)[1]].storage.meta(F)) is not None
                         and meta.created is not None, sim.now + 5)
    sim.run_for(0.05)
    sim.crash(p)
    sim.hooks.clear()
    r = sim.wait("a", op)  # the client retries with the same (client id, seq) at the new primary
    assert r.ok and r.index == 1, r
    assert get(sim).data == b"payload"
    r2 = do(sim, "b", lambda c, now: c.create(F, b"other", now))
    assert not r2.ok and r2.err == EXISTS


def test_get_and_append_of_a_missing_file() -> None:
    sim = cluster()
    assert get(sim).err == NOT_FOUND
    assert append(sim, b"x").err == NOT_FOUND


def test_rm_then_create_again_is_a_new_file() -> None:
    sim = cluster()
    make(sim, b"old;")
    append(sim, b"a;")
    r = do(sim, "admin", lambda c, now: c.rm(F, now))
    assert r.ok, r
    assert get(sim).err == NOT_FOUND
    sim.run_for(1.0)
    assert sim.holders(F) == []
    make(sim, b"new;")
    assert get(sim).data == b"new;"
    sim.run_for(1.0)
    assert logs_identical(sim, owners(sim))


# ----------------------------------------------------------------- idempotency and preconditions


def test_idempotent_retry_returns_the_original_index() -> None:
    sim = cluster()
    make(sim)
    append(sim, b"first;")
    c = sim.client("c1")
    op = c.append(F, b"mine;", sim.now)
    sim.hooks.append(lambda src, dest, msg: not (dest == "c1" and msg.get("t") == "reply"))
    sim.run_for(1.5)   # committed at index 3; every answer lost; the client retries meanwhile
    sim.hooks.clear()
    r = sim.wait("c1", op)
    assert r.ok and r.index == 3
    assert c.stats["retries"] >= 1
    assert get(sim).data == b"first;mine;"


def test_retry_after_failover_returns_the_original_index() -> None:
    """The idempotency table is rebuilt from the log by the new primary."""
    sim = cluster()
    make(sim)
    c = sim.client("c1")
    op = c.append(F, b"mine;", sim.now)
    old = owners(sim)[0]
    sim.hooks.append(lambda src, dest, msg: not (dest == "c1" and msg.get("t") == "reply"))
    sim.run_for(0.3)
    assert primary(sim).primaries[F].commit == 2
    sim.crash(old)
    sim.run_for(1.0)
    sim.hooks.clear()
    r = sim.wait("c1", op)
    assert r.ok and r.index == 2
    assert get(sim).data == b"mine;"


def test_fence_rejects_a_lower_epoch_even_after_failover() -> None:
    sim = cluster()
    make(sim)
    assert append(sim, b"e2;", cond={"fence": "task-1", "epoch": 2}).ok
    r = append(sim, b"zombie;", "z", cond={"fence": "task-1", "epoch": 1})
    assert not r.ok and r.err == FENCED
    assert append(sim, b"e2b;", cond={"fence": "task-1", "epoch": 2}).ok
    assert append(sim, b"other;", cond={"fence": "task-2", "epoch": 0}).ok  # keys are independent
    assert append(sim, b"e3;", cond={"fence": "task-1", "epoch": 3}).ok
    sim.crash(owners(sim)[0])
    sim.run_for(1.0)
    r = append(sim, b"late;", "z", cond={"fence": "task-1", "epoch": 2})
    assert r.err == FENCED  # the table came back from the entries themselves
    assert get(sim).data == b"e2;e2b;other;e3;"


def test_expect_len() -> None:
    sim = cluster()
    make(sim, b"h;")
    assert append(sim, b"a;", cond={"expect_len": 1}).index == 2
    r = append(sim, b"b;", cond={"expect_len": 1})
    assert r.err == LEN_MISMATCH and r.reply["last"] == 2
    assert append(sim, b"b;", cond={"expect_len": 2, "fence": "k", "epoch": 1}).index == 3


def test_preconditions_are_a_small_table() -> None:
    t = Tables()
    t.add([Entry(1, 1, "c", 1, b"", "k", 5)])
    assert check({"fence": "k", "epoch": 5}, t, 1) is None
    assert check({"fence": "k", "epoch": 4}, t, 1) == FENCED
    assert check({"expect_len": 0}, t, 1) == LEN_MISMATCH
    assert check(None, t, 1) is None
    assert parse({"t": "c_append", "rid": 1, "f": F, "client": "c", "seq": 1, "data": b"",
                  "cond": {"nope": 1}}) is None  # unknown preconditions are refused, not ignored


# ----------------------------------------------------------------- terms, truncation, visibility


def divergent_tail(sim: Sim, lost: tuple[bytes, bytes] = (b"lost1;", b"lost2;")) -> tuple[str, Any]:
    """Entries "h;" and "acked;" acknowledged, then two appends by client c2 that reach nobody but the
    primary: (primary, c2's client)."""
    make(sim, b"h;")
    append(sim, b"acked;")
    p = owners(sim)[0]
    sim.hooks.append(lambda src, dest, msg: not (src == p and msg.get("t") == "append"))
    c = sim.client("c2")
    for data in lost:
        c.append(F, data, sim.now)
    sim.run_for(0.2)
    return p, c


def test_term_raise_reconciles_and_truncates_a_divergent_suffix() -> None:
    sim = cluster(3)
    p, c = divergent_tail(sim)
    assert [e[4] for e in sim.log(p, F)][-2:] == [b"lost1;", b"lost2;"]
    sim.crash(p)
    sim.hooks[:] = [lambda src, dest, msg: src != "c2"]  # hold c2's retries back for now
    sim.run_for(1.0)
    assert append(sim, b"new;", "c3").index == 3
    new_primary = primary(sim)
    assert new_primary.primaries[F].term > 1
    sim.hooks.clear()
    sim.restart(p)
    sim.run_for(2.0)
    r = get(sim)
    assert r.data.startswith(b"h;acked;new;")
    assert logs_identical(sim, ids(3))
    # the lost appends were never acknowledged; the client's retries land them after `new`, once each
    sim.run_until(lambda: c.pending() == 0, sim.now + 10)
    data = [e[4] for e in sim.log(p, F)]
    assert data.count(b"lost1;") == 1 and data.count(b"lost2;") == 1
    assert data.index(b"new;") < data.index(b"lost1;")


def test_a_longer_divergent_tail_is_cut_even_without_new_appends() -> None:
    """R holds two entries the old primary sent to it alone. It is down while S takes over with the
    shorter log; when R returns, nothing new is appended, yet R still ends up identical."""
    sim = cluster(5)
    make(sim, b"h;")
    p, s, r = owners(sim)
    t0 = sim.now
    sim.hooks.append(lambda src, dest, msg: not (src == p and dest == s and msg.get("t") == "append"))
    sim.hooks.append(lambda src, dest, msg: src != "c2" or sim.now <= t0 + 0.1)  # no retries from c2
    c = sim.client("c2")
    c.append(F, b"lost1;", sim.now)
    c.append(F, b"lost2;", sim.now)
    sim.run_for(0.2)
    assert len(sim.log(r, F)) == 3 and len(sim.log(s, F)) == 1
    sim.crash(p)
    sim.crash(r)
    sim.run_for(2.0)
    sim.restart(r)
    sim.run_for(2.0)
    assert owners(sim) == [s, r, owners(sim)[2]]
    res = do(sim, "admin", lambda c, now: c.merge(F, now))
    assert res.ok and res.reply["last"] == 1
    assert logs_identical(sim, owners(sim)) and len(sim.log(r, F)) == 1


def test_a_restarted_replica_that_missed_appends_is_never_the_source() -> None:
    """F is dropped from the in-sync set while down; appends are acknowledged without it. F comes
    back and, before it is caught up, both other owners die. F must not serve (or extend) its stale
    log: the file waits until an owner with the acknowledged appends returns."""
    sim = cluster(3)
    make(sim, b"h;")
    a, b, f = owners(sim)
    sim.crash(f)
    sim.run_for(1.0)
    for i in range(3):
        assert append(sim, b"%d;" % i).ok
    sim.hooks.append(lambda src, dest, msg: dest != f)  # F hears nothing from the others
    sim.restart(f)
    sim.crash(a)
    sim.crash(b)
    sim.hooks.clear()
    c = sim.client("w")
    op = c.append(F, b"during;", sim.now)
    sim.run_for(5.0)
    assert op not in c.results           # unavailable, not wrong
    assert len(sim.log(f, F)) == 1       # and F did not adopt its own stale log as the truth
    sim.restart(b)
    sim.run_for(3.0)
    # b crashed too: for all it can tell, a went on alone after b died. Only a can settle it.
    assert op not in c.results
    sim.restart(a)
    r = sim.wait("w", op)
    assert r.ok and r.index == 5
    assert get(sim).data == b"h;0;1;2;during;"


def held_tail(sim: Sim) -> tuple[str, str, str, Any, int]:
    """A file whose second entry r1 never gets, so it cannot be acknowledged (r1 is in the in-sync
    set), while the primary holds it: (primary, r1, r2, the writer's client, its pending op)."""
    make(sim, b"h;")
    p, r1, r2 = owners(sim)
    sim.hooks.append(lambda src, dest, msg: not (dest == r1 and msg.get("t") == "append"))
    c = sim.client("w")
    op = c.append(F, b"tail;", sim.now)
    sim.run_for(0.3)
    assert [e[4] for e in sim.log(p, F)] == [b"h;", b"tail;"]
    return p, r1, r2, c, op


def test_unacknowledged_tail_is_never_read() -> None:
    sim = cluster(3)
    _, _, r2, c, op = held_tail(sim)
    assert [e[4] for e in sim.log(r2, F)] == [b"h;", b"tail;"]
    assert op not in c.results
    assert get(sim).data == b"h;"                    # at the primary
    assert get(sim, "r2", replica=r2).data == b"h;"  # at a replica that has the tail
    sim.hooks.clear()
    assert sim.wait("w", op).index == 2
    assert get(sim).data == b"h;tail;"


def test_a_get_can_hand_over_its_pages_as_they_come() -> None:
    sim = cluster(3)
    make(sim, b"h;")
    for i in range(6):
        append(sim, b"%d;" % i)
    c = sim.client("pager")
    c.page = 2
    pages: list[tuple[list[int], bool]] = []
    res = sim.wait("pager", c.get(F, sim.now, sink=lambda page, over: pages.append(([i for i, _ in page], over))))
    assert res.ok and res.entries == [] and res.index == 7
    assert pages == [([1, 2], False), ([3, 4], False), ([5, 6], False), ([7], False)]


def test_a_client_always_sees_its_own_appends() -> None:
    sim = cluster(3)
    make(sim, b"h;")
    _, r1, _ = owners(sim)
    # r1 has every entry but hears about the commit late: its copy is stale for reads
    sim.hooks.append(lambda src, dest, msg: not (dest == r1 and msg.get("t") == "append" and not msg["entries"]))
    c = sim.client("me")
    assert sim.wait("me", c.append(F, b"mine;", sim.now)).index == 2
    r = sim.wait("me", c.get(F, sim.now, replica=r1))
    assert r.data == b"h;mine;"
    assert c.stats["stale_reads"] == 1
    got: list[bytes] = []   # the same read, handed over page by page: told to start over, then right

    def sink(page: list[tuple[int, bytes]], over: bool) -> None:
        if over:
            got.clear()
        got.extend(d for _, d in page)

    assert sim.wait("me", c.get(F, sim.now, replica=r1, sink=sink)).ok
    assert b"".join(got) == b"h;mine;" and c.stats["stale_reads"] == 2


# ----------------------------------------------------------------- merge


def test_merge_of_agreeing_replicas_is_one_round() -> None:
    sim = cluster()
    make(sim, b"h;")
    for i in range(5):
        append(sim, b"%d;" % i)
    sim.run_for(1.0)
    sim.trace = []
    r = do(sim, "admin", lambda c, now: c.merge(F, now))
    assert r.ok and r.reply["checked"] == 2
    between = [(src, dest, m["t"]) for _, src, dest, m in sim.trace if src in sim.nodes and dest in sim.nodes]
    assert sorted(t for _, _, t in between) == ["append", "append", "append_ack", "append_ack"]
    assert all(not m["entries"] for _, src, dest, m in sim.trace if m["t"] == "append")


def test_merge_repairs_a_lagging_replica() -> None:
    sim = cluster(4)
    make(sim, b"h;")
    own = owners(sim)
    sim.crash(own[2])
    for i in range(3):
        append(sim, b"%d;" % i)
    sim.restart(own[2])
    sim.run_for(sim.detect + 0.01)  # the primary now counts it as an owner again, possibly still behind
    r = do(sim, "admin", lambda c, now: c.merge(F, now))
    assert r.ok and r.reply["checked"] == 2
    assert logs_identical(sim, own)


# ----------------------------------------------------------------- membership changes


def test_re_replication_after_a_failure_restores_three_replicas() -> None:
    sim = cluster(5)
    make(sim, b"h;")
    for i in range(20):
        append(sim, b"%d;" % i)
    before = owners(sim)
    sim.crash(before[1])
    sim.run_for(3.0)
    after = owners(sim)
    assert len(after) == 3 and before[1] not in after
    assert logs_identical(sim, after) and len(sim.log(after[2], F)) == 21
    lead = primary(sim).primaries[F]
    assert sorted(lead.isr) == sorted(after)
    assert append(sim, b"more;").index == 22


@pytest.mark.parametrize("k", [0, 2])  # the newcomer becomes the primary / the last owner
def test_join_copies_then_releases_old_owner_only_after_confirmation(k: int) -> None:
    everyone = ids(5)
    full = Ring(everyone).replicas(F, 3)
    newcomer = full[k]  # owns the file once it joins, so one current owner stops owning it
    sim = Sim(everyone, seed=3, down=[newcomer])
    sim.run_for(sim.config.settle + 0.5)
    make(sim, b"h;")
    for i in range(10):
        append(sim, b"%d;" % i)
    old = owners(sim)
    leaving = [n for n in old if n not in full]
    assert newcomer not in old and len(leaving) == 1
    released: list[tuple[float, bool, bool]] = []

    def watch(src: str, dest: str, msg: dict[str, Any]) -> bool:
        if msg.get("t") == "release" and dest == leaving[0]:
            lead = sim.nodes[src].core.primaries[F]  # type: ignore[union-attr]
            released.append((sim.now, newcomer in lead.isr,
                             sim.log(newcomer, F) == sim.log(src, F)))
        return True

    sim.hooks.append(watch)
    sim.slow[newcomer] = 0.3  # the new owner is slow to confirm
    sim.restart(newcomer)
    sim.run_for(sim.config.settle + 6.0)  # a (re)joined node leads nothing until it has settled
    assert released and all(in_isr and same for _, in_isr, same in released)
    assert sorted(sim.holders(F)) == sorted(full)
    assert logs_identical(sim, full)
    assert get(sim).data == b"h;" + b"".join(b"%d;" % i for i in range(10))


def test_partitioned_primary_cannot_acknowledge_and_its_tail_is_dropped() -> None:
    sim = cluster(5)
    make(sim, b"h;")
    p = owners(sim)[0]
    sim.partition({p})
    c = sim.client("c1")
    op = c.append(F, b"during;", sim.now)  # reaches the cut-off primary first, then retries elsewhere
    sim.run_for(3.0)
    assert p not in owners(sim)
    r = sim.wait("c1", op)
    assert r.ok
    sim.heal()
    sim.run_for(sim.config.settle + 3.0)  # returning nodes settle first
    assert logs_identical(sim, owners(sim))
    assert get(sim).data == b"h;during;"


def test_two_owners_down_file_stays_appendable_and_nothing_is_lost() -> None:
    sim = cluster(3)
    make(sim, b"h;")
    for i in range(5):
        append(sim, b"%d;" % i)
    own = owners(sim)
    sim.crash(own[0])
    sim.crash(own[1])
    assert append(sim, b"after;").index == 7
    assert get(sim).data == b"h;0;1;2;3;4;after;"
    sim.restart(own[0])
    sim.restart(own[1])
    sim.run_for(sim.config.settle + 3.0)  # returning nodes settle first
    assert logs_identical(sim, own)


def test_a_restarted_node_keeps_its_durable_log() -> None:
    sim = cluster(3)
    make(sim, b"h;")
    append(sim, b"x;")
    for n in ids(3):
        sim.crash(n)
    sim.run_for(1.0)
    for n in ids(3):
        sim.restart(n)
    assert get(sim).data == b"h;x;"
    assert append(sim, b"y;").index == 3


def test_a_replica_that_lost_its_unsynced_tail_never_vouches() -> None:
    """fsync = "interval": a machine crash can cut a replica's log below what it acknowledged. Until
    it is caught up it must not vouch, or it alone could later hand a new primary its short log."""
    sim = cluster(3)
    make(sim, b"h;")
    for i in range(8):
        append(sim, b"%d;" % i)
    p, b, c = owners(sim)
    sim.hooks.append(lambda src, dest, m: not (dest == b and m.get("t") == "append" and m.get("entries")))
    sim.crash(b)
    sim.nodes[b].storage.truncate(F, 3)   # the page cache died with the machine
    sim.restart(b)
    sim.run_for(sim.config.settle + 3.0)  # b hears the current in-sync set, but is never caught up
    core = sim.nodes[b].core
    meta = sim.nodes[b].storage.meta(F)
    assert core is not None and meta is not None and sim.nodes[b].storage.last(F)[0] == 3
    # it vouches for no set it is a member of (it left the set, persisting that, or it trusts nothing)
    assert b not in meta.isr or not core.vol(F).trusted
    sim.crash(p)
    sim.crash(c)
    sim.hooks.clear()
    reader = sim.client("reader")
    op = reader.get(F, sim.now)
    sim.run_for(10.0)
    res = reader.results.pop(op, None)
    assert res is None, f"served from a log that lost acknowledged appends: {res}"
    sim.restart(c)  # (with no member vouching, the takeover needs every member of the set back)
    sim.restart(p)
    assert sim.wait("reader", op, timeout=60).data == b"h;" + b"".join(b"%d;" % i for i in range(8))


def test_a_full_disk_on_the_primary_is_one_clear_error_on_a_replica_it_leaves_the_set() -> None:
    import errno

    sim = cluster(3)
    make(sim, b"h;")
    assert append(sim, b"a;").index == 2
    p = owners(sim)[0]
    storage = sim.nodes[p].storage

    def full(name: str, entries: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    storage.append = full  # type: ignore[method-assign]
    r = append(sim, b"lost;")
    assert not r.ok and r.err == "io_error" and r.reply.get("primary") == p
    core = sim.nodes[p].core
    assert core is not None and core.stats["io_error"] == 1
    del storage.append      # space again: the file goes on where it was
    assert append(sim, b"b;").index == 3
    r1 = owners(sim)[1]     # a replica's disk fills: it leaves the in-sync set, the file goes on
    sim.nodes[r1].storage.append = full  # type: ignore[method-assign]
    r = append(sim, b"c;", cid="c2")
    assert r.ok and r.index == 4
    lead = primary(sim).primaries[F]
    assert r1 not in lead.isr and len(lead.isr) == 2
    assert len(sim.log(r1, F)) == 3
    assert append(sim, b"d;", cid="c2").index == 5
    noted = sim.stats["note.io_error"]
    sim.run_for(12.0)  # tried again every retry period; logged at most once per IO_NOTE_EVERY
    core = sim.nodes[r1].core
    assert core is not None and core.stats["io_error"] >= 10
    assert sim.stats["note.io_error"] - noted <= 2
    del sim.nodes[r1].storage.append  # space again: it is filled and rejoins
    assert sim.run_until(lambda: r1 in primary(sim).primaries[F].isr, sim.now + 10)
    assert logs_identical(sim, owners(sim))
    assert get(sim).data == b"h;a;b;c;d;"


def test_a_mute_replica_holds_the_file_until_it_is_declared_failed() -> None:
    """A replica the membership layer sees alive but that never answers (cut off from its primary,
    or stuck) is not dropped by the primary on its own: it never persisted a set without itself and
    could vouch for the old one in a later takeover, so a primary cut off from its replicas would
    otherwise acknowledge appends alone that the majority's takeover then truncates
    (docs/partitions.md). The file waits until the membership layer (the controller's committed
    view, on real nodes) declares the replica failed; then it goes on without it."""
    sim = cluster(3)
    make(sim, b"h;")
    p, r1, _ = owners(sim)
    sim.hooks.append(lambda src, dest, m: not (src == r1 and dest == p))
    c = sim.client("c1")
    op = c.append(F, b"a;", sim.now)
    sim.run_for(2 * sim.config.lag_timeout)
    assert op not in c.results and r1 in primary(sim).primaries[F].isr
    sim.partition([r1])                       # declared failed: it may leave without persisting it
    r = sim.wait("c1", op, timeout=10)
    assert r.ok and r.index == 2 and r1 not in primary(sim).primaries[F].isr
    sim.heal()
    sim.hooks.clear()
    assert sim.run_until(lambda: r1 in primary(sim).primaries[F].isr, sim.now + 15)
    assert logs_identical(sim, owners(sim))


def test_a_replica_that_answers_but_does_not_keep_up_leaves_the_set_by_persisting_it() -> None:
    """A slow replica that still answers (its appends never land, its set changes do) leaves the set
    after ``lag_timeout`` the safe way: it persists the set without itself, so it vouches for nothing
    it is not a member of."""
    sim = cluster(3)
    make(sim, b"h;")
    _, r1, _ = owners(sim)
    sim.hooks.append(lambda src, dest, m: not (dest == r1 and m.get("t") == "append" and m.get("entries")))
    start = sim.now
    r = append(sim, b"a;")
    assert r.ok and r.index == 2 and sim.now - start >= sim.config.lag_timeout
    meta = sim.nodes[r1].storage.meta(F)
    assert meta is not None and r1 not in meta.isr and r1 not in primary(sim).primaries[F].isr
    sim.hooks.clear()
    assert sim.run_until(lambda: r1 in primary(sim).primaries[F].isr, sim.now + 15)
    assert logs_identical(sim, owners(sim))


# ----------------------------------------------------------------- messages from the network


def _core() -> NodeCore:
    core = NodeCore("n0", MemoryStorage())
    core.on_membership(["n0", "n1", "n2"], 0.0)
    return core


BAD: list[object] = [
    None, 3, b"x", [], {}, {"t": 1}, {"t": "nope"}, {"t": "prepare"}, {"t": "prepare", "f": F, "term": -1},
    {"t": "prepare", "f": F, "term": True}, {"t": "prepare", "f": "", "term": 1},
    {"t": "prepare", "f": F, "term": 2**70}, {"t": "append", "f": F, "term": 1, "created": 1, "prev": 0,
                                              "prev_term": 0, "entries": [[1, 1, "c"]], "commit": 0, "top": 1},
    {"t": "set_isr", "f": F, "term": 1, "ver": [1], "isr": ["a"], "created": 1, "commit": 0},
    {"t": "set_isr", "f": F, "term": 1, "ver": [1, 0], "isr": ["a", "a"], "created": 1, "commit": 0},
    {"t": "c_append", "rid": 1, "f": F, "client": "c", "seq": 1, "data": "str not bytes", "cond": None},
    {"t": "c_append", "rid": 1, "f": F, "client": "c", "seq": 1, "data": b"", "cond": {"fence": "k"}},
]


@pytest.mark.parametrize("msg", BAD)
def test_malformed_messages_are_counted_and_ignored(msg: object) -> None:
    core = _core()
    core.receive("n1", msg, 1.0)
    assert core.stats["malformed"] == 1
    assert core.take_outgoing() == []


def test_self_contradictory_append_is_counted() -> None:
    core = _core()
    gap = {"t": "append", "f": F, "term": 1, "created": 1, "prev": 0, "prev_term": 0,
           "entries": [Entry(1, 2, "c", 1, b"").to_wire()], "commit": 0, "top": 2}
    core.receive("n1", gap, 1.0)
    assert core.stats["invalid"] == 1
    assert core.storage.last(F) == (0, 0)


SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=8) | st.text(max_size=8)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.recursive(SCALARS,
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=6),
                    max_leaves=20),
       st.sampled_from(["prepare", "prepared", "fetch", "fetched", "append", "append_ack", "set_isr", "isr_ack",
                        "delete", "delete_ack", "offer", "release", "c_create", "c_append", "c_get", "c_rm"]))
def test_fuzzed_messages_never_raise(body: object, kind: str) -> None:
    core = _core()
    msg = dict(body) if isinstance(body, dict) else {"x": body}
    msg["t"] = kind
    msg = msgpack.unpackb(msgpack.packb(msg, use_bin_type=True), raw=False, strict_map_key=False)
    core.receive("n1", msg, 1.0)
    core.tick(2.0)
    for _, out in core.take_outgoing():  # whatever we send is plain msgpack
        msgpack.packb(out, use_bin_type=True)


def test_everything_sent_is_msgpack_and_passes_our_own_schema() -> None:
    sim = cluster(4, drop=0.1)
    sim.trace = []
    make(sim, b"h;")
    for i in range(3):
        append(sim, b"%d;" % i, cond={"fence": "k", "epoch": i})
    sim.crash(owners(sim)[0])
    append(sim, b"x;")
    do(sim, "admin", lambda c, now: c.merge(F, now))
    do(sim, "admin", lambda c, now: c.rm(F, now))
    kinds = set()
    for _, _, _, msg in sim.trace:
        wire = msgpack.unpackb(msgpack.packb(msg, use_bin_type=True), raw=False)
        assert parse(wire) is not None, msg
        kinds.add(msg["t"])
    assert {"prepare", "prepared", "append", "append_ack", "set_isr", "isr_ack", "delete", "reply"} <= kinds


# ----------------------------------------------------------------- small pieces


def test_term_runs_and_common_prefix() -> None:
    a = [(1, 1), (4, 2)]        # terms 1,1,1,2,2
    b = [(1, 1), (4, 3)]        # terms 1,1,1,3
    assert [term_at(a, 5, i) for i in range(7)] == [0, 1, 1, 1, 2, 2, -1]
    assert common_prefix(a, 5, b, 4) == 3
    assert common_prefix(a, 5, a, 3) == 3
    assert common_prefix([], 0, a, 5) == 0


def test_storage_meta_is_a_copy_and_survives_round_trip() -> None:
    s = MemoryStorage()
    m = FileMeta(term=3, leader="n1", created=2, ver=(3, 1), isr=("n1", "n2"))
    s.put_meta(F, m)
    got = s.meta(F)
    assert got == m and got is not m
    assert FileMeta.from_dict(msgpack.unpackb(msgpack.packb(m.to_dict()), raw=False)) == m
    s.append(F, [Entry(1, 1, "c", 1, b"a"), Entry(2, 2, "c", 2, b"b")])
    assert s.runs(F) == [(1, 1), (2, 2)] and s.last(F) == (2, 2)
    s.truncate(F, 1)
    assert s.runs(F) == [(1, 1)] and [e.data for e in s.read(F, 1, 5)] == [b"a"]
    with pytest.raises(ValueError):
        s.append(F, [Entry(1, 3, "c", 3, b"gap")])
    e = Entry(4, 7, "c", 9, b"d", "k", 2)
    assert Entry.from_meta(e.meta(), e.data) == e


def test_client_core_redirects_to_the_hinted_primary() -> None:
    c = ClientCore("c")
    c.on_membership(["n0", "n1", "n2"], 0.0)
    c.append(F, b"x", 0.0)
    (dest, msg), = c.take_outgoing()
    other = next(n for n in ["n0", "n1", "n2"] if n != dest)
    c.receive(dest, {"t": "reply", "rid": msg["rid"], "ok": False, "err": "not_primary", "primary": other}, 0.1)
    (dest2, msg2), = c.take_outgoing()
    assert dest2 == other and (msg2["client"], msg2["seq"]) == (msg["client"], msg["seq"])


VALID: list[dict[str, Any]] = [
    {"t": "prepare", "f": F, "term": 3},
    {"t": "append", "f": F, "term": 2, "created": 1, "prev": 0, "prev_term": 0,
     "entries": [Entry(2, 1, "c", 1, b"x").to_wire()], "commit": 0, "top": 1},
    {"t": "set_isr", "f": F, "term": 2, "ver": [2, 0], "isr": ["n0", "n1"], "created": 1, "commit": 0},
    {"t": "delete", "f": F, "term": 2, "at": [2, 0]},
    {"t": "fetch", "f": F, "term": 2, "start": 1, "stop": 3},
    {"t": "offer", "f": F, "promised": 1, "last": 0, "last_term": 0, "trusted": False},
    {"t": "release", "f": F, "term": 9, "ver": None, "isr": []},
    {"t": "prepared", "f": F, "term": 1, "ok": True, "promised": 1, "created": 1, "deleted": None, "last": 1,
     "last_term": 1, "runs": [[1, 1]], "ver": [1, 0], "isr": ["n1"], "trusted": True},
    {"t": "append_ack", "f": F, "term": 1, "ok": False, "promised": 1, "match": 0, "last": 0, "runs": [],
     "ver": None, "trusted": False},
    {"t": "c_append", "rid": 1, "f": F, "client": "c", "seq": 1, "data": b"x", "cond": {"expect_len": 0}},
    {"t": "c_get", "rid": 1, "f": F, "start": 1, "limit": 10, "replica_ok": True},
]


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.sampled_from(VALID), st.data())
def test_mutated_valid_messages_never_raise(base: dict[str, Any], data: st.DataObject) -> None:
    """One field of a real message replaced by anything: handled or counted, never an exception."""
    core = _core()
    core.on_membership(["n0", "n1", "n2"], 0.5)
    msg = dict(base)
    key = data.draw(st.sampled_from(sorted(msg)))
    msg[key] = data.draw(st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=3), max_leaves=8))
    core.receive(data.draw(st.sampled_from(["n1", "n2", "c9"])), msg, 1.0)
    core.receive("n1", base, 1.1)
    core.tick(3.0)
    for _, out in core.take_outgoing():
        assert parse(msgpack.unpackb(msgpack.packb(out, use_bin_type=True), raw=False)) is not None


def test_a_rejoined_node_waits_until_stale_views_of_it_are_gone() -> None:
    """b hears late that the primary p crashed; p restarts at once. Had p led straight away, it
    would vouch for an in-sync set {p, b} that b - acting on its stale view of p as dead - replaces
    with {b} and appends under; cut off b, and p alone would adopt its own log over b's
    acknowledged append. A rejoined node therefore waits ``settle`` before it leads or vouches."""
    sim = cluster(3)
    make(sim, b"h;")
    p, b, c = owners(sim)
    sim.crash(c)
    sim.run_for(1.0)
    assert sorted(primary(sim).primaries[F].isr) == sorted([p, b])
    sim.lag[b] = 1.0
    sim.crash(p)
    sim.run_for(sim.detect + 0.1)   # everyone but b has seen p die
    sim.restart(p)                  # p is back before b has even heard it was gone
    sim.run_for(1.0)                # b now acts on "p is dead" (and will hear p is back 0.6 s later)
    late = sim.client("late")
    late.on_membership([b], sim.now)  # a client whose view also still lacks p
    op = late.append(F, b"via-b;", sim.now)
    sim.run_for(0.2)
    sim.lag.clear()
    sim.partition({b})
    sim.run_for(sim.config.settle + 3.0)
    sim.heal()
    sim.restart(c)
    sim.run_until(lambda: op in late.results, sim.now + 30)
    res = late.results.get(op)
    sim.run_for(sim.config.settle + 3.0)
    data = get(sim).data
    assert res is not None and res.ok
    assert data == b"h;via-b;"   # acknowledged (by b alone), so never lost
    assert logs_identical(sim, owners(sim))


def test_replica_rejects_lower_terms_other_primaries_and_gaps() -> None:
    core = _core()

    def send(src: str, msg: dict[str, Any]) -> dict[str, Any]:
        core.receive(src, msg, 1.0)
        out = core.take_outgoing()
        assert len(out) == 1 and out[0][0] == src
        return out[0][1]

    def app(term: int, prev: int, prev_term: int, *entries: Entry) -> dict[str, Any]:
        return {"t": "append", "f": F, "term": term, "created": 1, "prev": prev, "prev_term": prev_term,
                "entries": [e.to_wire() for e in entries], "commit": 0, "top": prev + len(entries)}

    assert send("n1", {"t": "prepare", "f": F, "term": 5})["ok"]
    assert not send("n2", {"t": "prepare", "f": F, "term": 5})["ok"]        # term 5 belongs to n1
    r = send("n2", app(3, 0, 0, Entry(3, 1, "c", 1, b"old")))
    assert not r["ok"] and r["promised"] == 5                               # a lower term
    assert core.storage.last(F) == (0, 0)
    assert send("n1", app(5, 0, 0, Entry(5, 1, "c", 1, b"a")))["ok"]
    r = send("n1", app(5, 2, 5, Entry(5, 3, "c", 3, b"gap")))               # would leave a gap
    assert not r["ok"] and r["runs"] == [[1, 5]] and r["last"] == 1
    assert send("n1", app(5, 1, 5, Entry(5, 2, "c", 2, b"b")))["ok"]
    r = send("n1", app(5, 1, 4, Entry(5, 2, "c", 2, b"b")))                 # prev term mismatch
    assert not r["ok"]
    assert [e.data for e in core.storage.read(F, 1, 10)] == [b"a", b"b"]
    assert send("n3", {"t": "prepare", "f": F, "term": 6})["ok"]            # a higher term wins
    assert not send("n1", app(5, 2, 5, Entry(5, 3, "c", 3, b"late")))["ok"]


def test_declared_failed_drops_trust_and_leadership_for_a_while() -> None:
    sim = cluster(3)
    make(sim, b"h;")
    core = primary(sim)
    assert F in core.primaries and core.vols[F].trusted
    core.on_declared_failed(sim.now)
    assert F not in core.primaries and not core.vols[F].trusted and not core.settled()
    sim.run_for(sim.config.settle + 2.0)
    assert F in core.primaries and core.vols[F].trusted
    assert append(sim, b"x;").index == 2


def test_a_primary_that_stood_still_steps_down_instead_of_dropping_its_replicas() -> None:
    """A primary SIGSTOPped with an append in flight wakes up long past ``lag_timeout``. Its replicas
    did not fall behind: it did. It must not drop them from the in-sync set (and then lead alone,
    truncating what a newer primary acknowledged meanwhile); it steps down like a node that was
    declared failed. Failed on the old code: the set shrank to the primary alone."""
    sim = cluster(3)
    make(sim, b"h;")
    p, r1, r2 = owners(sim)
    sim.hooks.append(lambda src, dest, m: not (dest == p and src in (r1, r2)))   # answers held
    c = sim.client("c1")
    c.append(F, b"a;", sim.now)
    sim.run_for(0.2)
    core = primary(sim)
    assert F in core.primaries and set(core.primaries[F].isr) == {p, r1, r2}
    core.tick(sim.now + 2 * sim.config.lag_timeout)     # its first step after the stall
    assert F not in core.primaries or set(core.primaries[F].isr) == {p, r1, r2}
    assert core.stats["stalls"] == 1

"""Trim (log compaction): a marker entry ordered with the appends drops the entries below it on every
copy once it is committed. Sans-IO cores on the simulated network, the disk storage, and hypothesis
over random schedules (docs/hydfs.md, "Trim")."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given

from hydfs.client import Result
from hydfs.conditions import Tables, check
from hydfs.disk import DiskStorage
from hydfs.entries import Entry, TrimMark
from hydfs.messages import FENCED, OUT_OF_ORDER, TRIM_RANGE, TRIMMED, parse
from hydfs.sim import Sim
from hydfs.storage import MemoryStorage
from tests.test_hydfs_core import F, append, cluster, do, get, ids, logs_identical, make, owners, primary
from tests.test_hydfs_props import PROPS, check_seeds, workloads


def trim(sim: Sim, below: int, cid: str = "task", cond: dict[str, Any] | None = None,
         key: tuple[str, int] | None = None) -> Result:
    return do(sim, cid, lambda c, now: c.trim(F, below, now, cond, key))


def keyed(sim: Sim, data: bytes, key: tuple[str, int], cond: dict[str, Any] | None = None) -> Result:
    return do(sim, key[0], lambda c, now: c.append(F, data, now, cond, key))


def firsts(sim: Sim, nodes: list[str]) -> list[int]:
    return [sim.nodes[n].storage.first(F) for n in nodes]


def filled(n: int = 5, entries: int = 10, **kw: Any) -> Sim:
    """A file of ``entries`` acknowledged entries: "h;" at 1, then "0;", "1;", ... at 2, 3, ..."""
    sim = cluster(n, **kw)
    make(sim, b"h;")
    for i in range(entries - 1):
        append(sim, b"%d;" % i)
    return sim


def settled(sim: Sim, nodes: list[str], first: int, timeout: float = 10.0) -> None:
    """Wait until every copy in ``nodes`` starts at ``first`` and all are identical."""
    assert sim.run_until(lambda: firsts(sim, nodes) == [first] * len(nodes) and logs_identical(sim, nodes),
                         sim.now + timeout), (firsts(sim, nodes), [sim.log(n, F) for n in nodes])


# ----------------------------------------------------------------- semantics


def test_trim_drops_the_prefix_everywhere_and_indexes_stay() -> None:
    sim = filled()
    r = trim(sim, 6)
    assert r.ok and r.index == 11 and r.reply["first"] == 6
    settled(sim, owners(sim), 6)
    assert len(primary(sim).primaries[F].tables.dedup) == 6  # the idempotency table is bounded too
    g = get(sim)
    assert [i for i, _ in g.entries] == [6, 7, 8, 9, 10, 11]  # 11: the marker, an entry of no data
    assert g.data == b"4;5;6;7;8;"
    assert append(sim, b"next;").index == 12
    rd = do(sim, "reader", lambda c, now: c.read(F, 2, 4, now))
    assert rd.reply["data"] == b"5;6;" and rd.reply["size"] == len(b"4;5;6;7;8;next;")  # offsets of what is kept
    ls = do(sim, "reader", lambda c, now: c.ls(F, now))
    assert ls.reply["first"] == 6 and ls.reply["last"] == 12
    # a replica read starts at the same first entry
    rep = do(sim, "reader", lambda c, now: c.get(F, now, replica=owners(sim)[1]))
    assert rep.entries[0][0] == 6


def test_below_past_the_marker_is_refused_and_lower_trims_drop_nothing() -> None:
    sim = filled(entries=4)
    r = trim(sim, 6)  # the marker would be entry 5
    assert not r.ok and r.err == TRIM_RANGE
    assert trim(sim, 5).reply["first"] == 5  # below its own index: only the marker stays
    settled(sim, owners(sim), 5)
    assert [i for i, _ in get(sim).entries] == [5]
    assert trim(sim, 3).reply["first"] == 5  # lower than before: nothing more dropped
    assert trim(sim, 5).reply["first"] == 5  # twice: the same
    assert [i for i, _ in get(sim).entries] == [5, 6, 7]


def test_a_trim_is_idempotent_and_fenced_like_an_append() -> None:
    sim = filled()
    assert keyed(sim, b"e2;", ("w", 1), cond={"fence": "task", "epoch": 2}).ok
    zombie = trim(sim, 5, cid="z", cond={"fence": "task", "epoch": 1})
    assert zombie.err == FENCED
    assert firsts(sim, owners(sim)) == [1, 1, 1]
    a = trim(sim, 5, key=("w", 2), cond={"fence": "task", "epoch": 2})
    b = trim(sim, 5, key=("w", 2), cond={"fence": "task", "epoch": 2})  # a retry: the same marker
    assert a.ok and b.ok and a.index == b.index == 12
    assert append(sim, b"x;").index == 13


def test_a_replica_that_missed_the_trim_while_down_is_installed() -> None:
    """Its log ends below the primary's first entry: nothing it holds is of use, it continues from there."""
    sim = filled(3, entries=5)
    down = owners(sim)[2]
    sim.crash(down)
    sim.run_for(1.0)
    for i in range(10):
        append(sim, b"more%d;" % i)
    assert trim(sim, 14).reply["first"] == 14
    sim.restart(down)
    settled(sim, owners(sim), 14, timeout=20.0)
    assert [e[1] for e in sim.log(down, F)] == [14, 15, 16]
    assert append(sim, b"after;").index == 17
    settled(sim, owners(sim), 14)


def test_a_replica_that_missed_the_commit_of_a_marker_is_told_again() -> None:
    """The one message that carries the marker's commit to a caught-up replica is lost: with nothing
    else to send, the primary sends it again until the replica reports it trimmed."""
    sim = filled(3)
    o = owners(sim)
    lost = [0]

    def drop_first(src: str, dest: str, msg: dict[str, Any]) -> bool:
        if dest == o[2] and msg.get("t") == "append" and msg.get("commit", 0) >= 11 and not lost[0]:
            lost[0] += 1
            return False
        return True

    sim.hooks.append(drop_first)
    assert trim(sim, 6).ok
    settled(sim, o, 6)
    assert lost[0] == 1


def test_an_uncommitted_marker_that_is_cut_drops_nothing() -> None:
    """A marker only one replica got, cut later as a divergent suffix: that replica must still hold
    everything the surviving log holds (a copy that trims on receipt would start past it for good)."""
    sim = filled(3)
    o = owners(sim)
    sim.hooks.append(lambda src, dest, msg: not (src == o[0] and dest == o[2] and msg.get("t") == "append"))
    c = sim.client("task")
    op = c.trim(F, 6, sim.now)
    sim.run_for(0.3)
    assert [e[1] for e in sim.log(o[1], F)][-1] == 11  # the marker reached o[1] only
    c.cancel(op)
    sim.crash(o[0])
    sim.crash(o[1])
    sim.hooks.clear()
    sim.run_for(1.0)
    assert append(sim, b"other;").index == 11  # o[2] alone, in a new term
    sim.restart(o[1])
    sim.run_for(sim.config.settle + 2.0)
    assert [e[1] for e in sim.log(o[1], F)] == list(range(1, 12))
    assert sim.log(o[1], F) == sim.log(o[2], F)


def test_trim_then_every_replica_crashes_and_restarts() -> None:
    sim = filled(3)
    assert trim(sim, 8).ok
    settled(sim, ids(3), 8)
    for n in ids(3):
        sim.crash(n)
    sim.run_for(1.0)
    for n in ids(3):
        sim.restart(n)
    g = get(sim)
    assert [i for i, _ in g.entries] == [8, 9, 10, 11] and g.data == b"6;7;8;"
    assert append(sim, b"y;").index == 12


def test_takeover_after_a_trim_keeps_the_tables() -> None:
    """The new primary rebuilds dedup, floors and fences from the retained log alone."""
    sim = filled()
    assert keyed(sim, b"a;", ("w", 1), cond={"fence": "task", "epoch": 3}).index == 11
    assert keyed(sim, b"b;", ("w", 2)).index == 12
    assert trim(sim, 12).ok  # (w, 1) is trimmed, (w, 2) retained
    settled(sim, owners(sim), 12)
    sim.crash(owners(sim)[0])
    sim.run_for(1.0)
    assert keyed(sim, b"b;", ("w", 2)).index == 12             # retained: its index, as before
    assert keyed(sim, b"a;", ("w", 1)).err == TRIMMED           # trimmed: refused, not appended again
    assert keyed(sim, b"z;", ("z", 1), cond={"fence": "task", "epoch": 2}).err == FENCED
    assert keyed(sim, b"c;", ("w", 3), cond={"after": 1}).index == 14  # after a trimmed seq: satisfied
    assert [d for _, d in get(sim).entries] == [b"b;", b"", b"c;"]


def test_retry_of_a_trimmed_append_gets_trimmed() -> None:
    sim = filled()
    c = sim.client("w")
    op = c.append(F, b"mine;", sim.now, key=("w", 7))
    sim.hooks.append(lambda src, dest, msg: not (dest == "w" and msg.get("t") == "reply"))
    sim.run_for(0.3)  # landed at 11 and acknowledged, but the answer is lost
    assert primary(sim).primaries[F].commit == 11
    assert trim(sim, 12).ok  # (the task layer never trims what it has not seen acknowledged)
    sim.hooks.clear()
    r = sim.wait("w", op)
    assert not r.ok and r.err == TRIMMED
    assert all(d != b"mine;" for _, d in get(sim).entries)


def test_after_names_a_seq_a_trim_dropped() -> None:
    sim = filled()
    assert keyed(sim, b"1;", ("w", 1)).index == 11
    assert keyed(sim, b"2;", ("w", 2), cond={"after": 1}).index == 12
    assert trim(sim, 13).ok
    assert keyed(sim, b"3;", ("w", 3), cond={"after": 2}).index == 14  # would be out_of_order without floors
    c = sim.client("v")  # the floor is per client: another client's seq 1 is still not ordered
    op = c.append(F, b"x;", sim.now, {"after": 1}, ("v", 9))
    sim.run_for(2.0)
    assert op not in c.results and c.stats["out_of_order"] > 0
    assert c.cancel(op) == OUT_OF_ORDER


def test_a_new_owner_after_a_failure_gets_the_retained_entries_only() -> None:
    sim = filled(5)
    before = owners(sim)
    assert trim(sim, 9).ok
    settled(sim, before, 9)
    sim.crash(before[1])
    sim.run_for(3.0)
    after = owners(sim)
    new = (set(after) - set(before)).pop()
    settled(sim, after, 9)
    assert [e[1] for e in sim.log(new, F)] == [9, 10, 11]
    assert sorted(primary(sim).primaries[F].isr) == sorted(after)


def test_a_takeover_whose_own_copy_ends_below_the_best_ones_first_entry() -> None:
    """The new primary lacks what follows its common prefix with the best copy, and the best copy
    dropped it: it installs its own copy from the best one's first entry, then fetches."""
    sim = filled(3, entries=4)
    o = owners(sim)
    sim.crash(o[1])
    sim.run_for(1.0)
    for i in range(8):
        append(sim, b"m%d;" % i)
    assert trim(sim, 10).ok
    sim.hooks.append(lambda src, dest, msg: not (dest == o[1] and msg.get("t") == "append"))
    sim.restart(o[1])  # back, but nothing reaches it: its log still ends at 4
    sim.run_for(sim.config.settle + 1.0)
    assert sim.nodes[o[1]].storage.last(F)[0] == 4
    sim.crash(o[0])
    sim.hooks.clear()
    sim.run_for(1.0)
    g = get(sim)
    assert g.ok and [i for i, _ in g.entries] == [10, 11, 12, 13]
    assert sim.nodes[o[1]].storage.first(F) == 10
    assert append(sim, b"z;").index == 14


def test_a_paged_get_that_a_trim_overtakes_starts_over() -> None:
    """Pages 1-3 read, then a trim drops 1-7: the next page must not append 8.. to 1-3 as one file."""
    sim = filled()
    c = sim.client("pager")
    c.page = 3
    hold = [True]
    sim.hooks.append(lambda src, dest, msg: not (
        hold[0] and src == "pager" and msg.get("t") == "c_get" and msg.get("start", 1) > 1))
    op = c.get(F, sim.now)
    sim.run_for(0.1)  # the first page came back; the request for the second is held
    assert trim(sim, 8).ok
    hold[0] = False
    r = sim.wait("pager", op)
    assert [i for i, _ in r.entries] == [8, 9, 10, 11]
    assert c.stats["trimmed_reads"] == 1


# ----------------------------------------------------------------- tables and messages


def test_tables_keep_floors_and_fences_of_what_a_trim_drops() -> None:
    t = Tables()
    t.add([Entry(1, 1, "a", 1, b"", "k", 5), Entry(1, 2, "a", 2, b""), Entry(1, 3, "b", 9, b"")])
    mark = t.mark(3)
    assert mark == TrimMark(3, {"a": 2}, {"k": 5})
    t.add([Entry(1, 4, "t", 1, b"", trim=mark)])
    t.prune(3)
    assert set(t.dedup) == {("b", 9), ("t", 1)}
    assert t.trimmed("a", 2) and not t.trimmed("a", 3) and not t.trimmed("b", 1)
    assert check({"after": 1}, t, 4, "a") is None and check({"after": 3}, t, 4, "a") == OUT_OF_ORDER
    assert check({"fence": "k", "epoch": 4}, t, 4) == FENCED
    rebuilt = Tables()
    rebuilt.add([Entry(1, 3, "b", 9, b""), Entry(1, 4, "t", 1, b"", trim=mark)])  # from the retained log only
    assert rebuilt.floors == t.floors and rebuilt.fences == t.fences


def test_floors_of_fenced_out_clients_are_dropped() -> None:
    """A task log gets a client id per instance (``task#epoch``); without this its markers carried one
    floor per instance that ever ran, for ever. A client fenced out keeps no floor: its retries get
    ``fenced``. One that also wrote unfenced, or under two fence keys, keeps its floor."""
    t = Tables()
    t.add([Entry(1, 1, "t#1", 1, b"", "t", 1), Entry(1, 2, "t#1", 2, b"", "t", 1),
           Entry(1, 3, "u", 1, b"", "k", 1), Entry(1, 4, "u", 2, b""),
           Entry(1, 5, "t#2", 1, b"", "t", 2), Entry(1, 6, "t#2", 2, b"", "t", 2)])
    mark = t.mark(6)
    assert mark.floors == {"u": 2, "t#2": 1} and mark.fenced == {"t#2": ("t", 2)}
    t.add([Entry(1, 7, "t#2", 3, b"", "t", 2, trim=mark)])
    t.prune(6)
    assert not t.trimmed("t#1", 2)
    assert check({"fence": "t", "epoch": 1}, t, 7) == FENCED   # the retry of t#1's seq 2: fenced, not re-appended
    t.add([Entry(1, 8, "t#3", 1, b"", "t", 3)])
    mark2 = t.mark(8)
    assert mark2.floors == {"u": 2} and mark2.fenced == {}     # t#2 fenced out since: its floor goes
    rebuilt = Tables()
    rebuilt.add([Entry(1, 8, "t#3", 1, b"", "t", 3), Entry(1, 9, "t#3", 2, b"", "t", 3, trim=mark2)])
    assert rebuilt.floors == {"u": 2} and rebuilt.fences == {"t": 3, "k": 1}
    assert Entry.from_meta(Entry(1, 7, "x", 1, b"", trim=mark).meta(), b"").trim == mark
    assert TrimMark.from_wire(mark.to_wire()) == mark


def test_a_task_log_through_many_instances_keeps_one_floor() -> None:
    """Instances of one task, each fencing out the one before and trimming its log: the marker's
    floors stay at the live instance's, and a zombie's retry of a trimmed append is refused."""
    sim = filled()
    for epoch in range(1, 8):
        cid, cond = f"task#{epoch}", {"fence": "task", "epoch": epoch}
        for i in range(3):
            assert keyed(sim, b"e%d-%d;" % (epoch, i), (cid, i + 1), cond).ok
        last = keyed(sim, b"last;", (cid, 4), cond)
        assert trim(sim, last.index, cid, cond, (cid, 5)).ok
    tables = primary(sim).primaries[F].tables
    assert sorted(c for c in tables.floors if c.startswith("task")) == ["task#7"], tables.floors
    before = [d for _, d in get(sim).entries]
    r = keyed(sim, b"e3-1;", ("task#3", 2), {"fence": "task", "epoch": 3})   # a zombie's retry
    assert not r.ok and r.err == FENCED
    assert [d for _, d in get(sim).entries] == before


def test_the_dedup_table_keeps_a_window_per_client() -> None:
    """A file never trimmed (a source, an output) kept one dedup entry per append for ever. Now each
    client's latest ``window``; an older key was ordered (seqs land in order) and is answered
    ``trimmed``, ``after`` naming it is satisfied, and a rebuild from the log answers the same."""
    log = [Entry(1, i, "w", i, b"") for i in range(1, 11)] + [Entry(1, 11, "v", 1, b"")]
    t = Tables(window=4)
    t.add(log)
    assert set(t.dedup) == {("w", 7), ("w", 8), ("w", 9), ("w", 10), ("v", 1)}
    assert t.trimmed("w", 6) and t.trimmed("w", 1) and not t.trimmed("w", 11) and not t.trimmed("v", 2)
    assert check({"after": 3}, t, 11, "w") is None and check({"after": 11}, t, 11, "w") == OUT_OF_ORDER
    rebuilt = Tables(window=4)
    for e in log:
        rebuilt.add([e])
    assert rebuilt.dedup == t.dedup and [rebuilt.trimmed("w", s) for s in range(12)] == [t.trimmed("w", s)
                                                                                        for s in range(12)]
    mark = t.mark(9)           # drops w's 1..8: the let-go ones count toward its floor
    assert mark.floors == {"w": 8}
    t.add([Entry(1, 12, "w", 11, b"", trim=mark)])
    t.prune(9)
    assert set(t.dedup) == {("w", 9), ("w", 10), ("v", 1), ("w", 11)} and t.trimmed("w", 8)


def test_a_retry_older_than_the_window_lands_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hydfs.conditions.DEDUP_WINDOW", 4)
    sim = filled()
    c = sim.client("w")
    lost = [True]
    sim.hooks.append(lambda src, dest, msg: not (lost[0] and dest == "w" and msg.get("t") == "reply"))
    op = c.append(F, b"first;", sim.now, key=("w", 1))
    sim.run_for(0.3)           # landed; its answer lost, and the client keeps asking
    lost[0] = False
    sim.hooks.clear()
    c.cancel(op)
    for s in range(2, 12):
        assert keyed(sim, b"%d;" % s, ("w", s)).ok
    r = keyed(sim, b"first;", ("w", 1))   # the writer tries again long after
    assert not r.ok and r.err == TRIMMED
    assert [d for _, d in get(sim).entries].count(b"first;") == 1
    dedup = primary(sim).primaries[F].tables.dedup
    assert all(sum(1 for c, _ in dedup if c == client) <= 4 for client, _ in dedup), dedup


def test_a_marker_crosses_the_wire_and_bad_ones_are_refused() -> None:
    e = Entry(2, 7, "t", 1, b"", trim=TrimMark(5, {"a": 3}, {"k": 1}))
    msg = {"t": "fetched", "f": F, "term": 2, "ok": True, "start": 7, "entries": [e.to_wire()]}
    parsed = parse(msg)
    assert parsed is not None and parsed["entries"] == [e]
    assert Entry.from_meta(e.meta(), b"") == e
    for bad in ([0, {}, {}], [5, {"a": -1}, {}], [5, {1: 2}, {}], [5, {}], "x"):
        assert parse({**msg, "entries": [[*e.to_wire()[:7], bad]]}) is None


# ----------------------------------------------------------------- disk


def _entries(n: int, size: int = 1000) -> list[Entry]:
    return [Entry(1, i, "c", i, bytes([i % 256]) * size) for i in range(1, n + 1)]


def test_disk_trim_reclaims_space_and_survives_a_restart(tmp_path: Path) -> None:
    s = DiskStorage(tmp_path)
    s.append("f", _entries(100))
    s.sync()
    log = next(tmp_path.glob("*.log"))
    before = log.stat().st_size
    s.trim("f", 91)
    after = log.stat().st_size
    assert after < before // 5
    assert s.first("f") == 91 and s.last("f") == (100, 1) and s.runs("f") == [(1, 1)]
    s.close()
    s = DiskStorage(tmp_path)
    assert s.first("f") == 91 and [e.index for e in s.read("f", 1, 200)] == list(range(91, 101))
    assert s.read("f", 95, 96) == _entries(100)[94:95]
    assert s.read_bytes("f", 0, 1500) == bytes([91]) * 1000 + bytes([92]) * 500
    s.append("f", [Entry(2, 101, "c", 101, b"new")])
    assert s.runs("f") == [(1, 1), (101, 2)]
    s.close()
    assert DiskStorage(tmp_path).last("f") == (101, 2)


def test_a_crash_between_the_copy_and_the_rename_leaves_the_old_file(tmp_path: Path) -> None:
    s = DiskStorage(tmp_path)
    s.append("f", _entries(20, 10))
    s.sync()
    f = s._files["f"]
    tmp, _blocks = f.log.copy_tail(15, {"base": 16, "runs": [[1, 1]]})  # step 1 only, then a crash
    assert tmp.exists()
    s.close()
    s = DiskStorage(tmp_path)
    assert s.first("f") == 1 and len(s.read("f", 1, 100)) == 20
    assert not list(tmp_path.glob("*.tmp"))  # the half-done copy is removed at start-up
    # and after the rename, the new file alone is there
    f = s._files["f"]
    tmp, blocks = f.log.copy_tail(15, {"base": 16, "runs": [[1, 1]]})
    f.log.replace_with(tmp, blocks)
    s.close()
    s = DiskStorage(tmp_path)
    assert s.first("f") == 16 and [e.index for e in s.read("f", 1, 100)] == list(range(16, 21))


def test_a_trim_a_full_disk_refuses_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hydfs.blockfile as bf

    s = DiskStorage(tmp_path)
    s.append("f", _entries(20, 100))
    s.sync()

    def full(fd: int, bufs: list[bytes], pos: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bf, "_pwritev", full)
    with pytest.raises(OSError):
        s.trim("f", 11)
    monkeypatch.undo()
    assert s.first("f") == 1 and len(s.read("f", 1, 100)) == 20 and not list(tmp_path.glob("*.tmp"))
    s.trim("f", 11)  # once there is room
    s.close()
    assert DiskStorage(tmp_path).first("f") == 11


def test_the_cost_of_a_trim_follows_the_retained_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = DiskStorage(tmp_path, tail_bytes=0)
    s.append("f", _entries(200, 10_000))
    s.sync()
    read = 0
    real = os.pread

    def counting(fd: int, n: int, off: int) -> bytes:
        nonlocal read
        out = real(fd, n, off)
        read += len(out)
        return out

    monkeypatch.setattr(os, "pread", counting)
    s.trim("f", 191)
    assert read < 11 * 10_100  # the 10 retained entries (and their headers), not the 190 dropped ones


def test_a_node_on_disk_restarts_with_its_trimmed_log(tmp_path: Path) -> None:
    """Restart from disk in the simulator: the nodes' DiskStorage reopened from their directories."""
    sim = Sim(ids(3), seed=3, down=ids(3))
    for n in ids(3):
        sim.nodes[n].storage = DiskStorage(tmp_path / n)  # type: ignore[assignment]
        sim.restart(n)
    sim.run_for(sim.config.settle + 0.5)
    make(sim, b"h;")
    for i in range(9):
        append(sim, b"%d;" % i)
    assert trim(sim, 7).ok
    sim.run_for(1.0)
    assert all(sim.nodes[n].storage.first(F) == 7 for n in ids(3))
    for n in ids(3):
        sim.crash(n)
        sim.nodes[n].storage.close()  # type: ignore[attr-defined]
        sim.nodes[n].storage = DiskStorage(tmp_path / n)  # type: ignore[assignment]
    sim.run_for(1.0)
    for n in ids(3):
        sim.restart(n)
    g = get(sim)
    assert [i for i, _ in g.entries] == [7, 8, 9, 10, 11] and g.data == b"5;6;7;8;"
    assert append(sim, b"z;").index == 12


def test_memory_storage_trim_keeps_offsets_of_the_retained_entries() -> None:
    m = MemoryStorage()
    m.append("f", [Entry(1, i, "c", i, b"ab") for i in range(1, 6)])
    m.trim("f", 4)
    assert m.data_end("f", 4) == 2 and m.data_end("f", 5) == 4 and m.read_bytes("f", 1, 2) == b"ba"
    with pytest.raises(ValueError):
        m.trim("f", 7)


# ----------------------------------------------------------------- random schedules


@PROPS
@given(w=workloads(["trim", "trim", "crash", "restart", "restart", "isolate", "heal"]))
def test_trims_among_failures(w: Any) -> None:
    """Trims below acknowledged indexes among crashes, restarts and partitions: every owner ends with
    the same log from the same first index, every acknowledged append at or above it is there once at
    its index, none below it is, an append answered ``trimmed`` is not in the log, and no node ever
    committed a different history (tests/test_hydfs_props.py)."""
    check_seeds(w, 2)


@PROPS
@given(w=workloads(["trim", "trim", "power", "power", "crash", "restart", "restart", "isolate", "heal"]))
def test_trims_and_machine_crashes(w: Any) -> None:
    """The same, with machine crashes that lose unflushed tails (a trim itself is synced at once)."""
    check_seeds(w, 2)


@PROPS
@given(w=workloads(["trim", "trim", "full", "full", "space", "crash", "restart"], until=1.5))
def test_trims_and_full_disks(w: Any) -> None:
    """The same, with disks that fill (no log write succeeds) and get space again."""
    check_seeds(w, 2)


"""Snapshots and log compaction of a task: the log stays short, a rebuild starts from the last
snapshot, and a zombie that wakes after its replacement compacted the log is still fenced."""

from __future__ import annotations

from dataclasses import replace

import pytest

from rainstorm.stream.plan import build_plan
from rainstorm.stream.records import (
    CommitRecord,
    OutState,
    RecordError,
    SnapshotRecord,
    TaskState,
    decode_record,
    decode_state,
    encode_record,
    encode_state,
)
from rainstorm.stream.stores import OutOfOrder
from rainstorm.stream.task import AppendLog, Phase, TrimLog, complete, execute
from tests.test_stream_task import CFG, LINES, STAGES, Driver, expected

SNAP = replace(CFG, batch_lines=2, snapshot_every=3)


def test_state_round_trips_and_malformed_state_is_refused() -> None:
    st = TaskState(7, [3, 4], [False, True], (120, False), [(2, [("a", 1), (("t", 1), [1, 2])])],
                   [OutState(5, False, 3, [(4, b"x", False), (5, b"y", False)])], 6, 4, [(7, b"l\n", b"")])
    assert decode_state(encode_state(st)) == st
    assert decode_record(encode_record(SnapshotRecord(2, "f", 7))) == SnapshotRecord(2, "f", 7)
    for bad in (b"", b"\x93\x02\x03\x01", encode_state(replace(st, committed=[-1]))):   # type: ignore[list-item]
        with pytest.raises(RecordError):
            decode_state(bad)


def test_snapshots_keep_each_log_short_and_one_file_per_task() -> None:
    plan = build_plan("j", "in", "out", STAGES, 1)
    d = Driver(plan, LINES, SNAP)
    tasks = [d.start(ref) for ref in plan.tasks()]
    d.run()
    assert d.out() == expected(STAGES)[0] and d.dead() == expected(STAGES)[1]
    for t in tasks:
        assert t.stats["snapshots"] >= 2, (t.name, t.stats)
        f = d.logs.files[plan.log_name(t.ref)]
        assert len(f.gone) > len(f.entries)    # most of the log was trimmed
        # what is left: the records after the last snapshot's index, the snapshot record, the trims' gaps
        assert sum(isinstance(r, CommitRecord) for r in d.records(t.ref)) <= SNAP.snapshot_every + SNAP.inflight
    # every task's previous snapshot files were removed: one each is left, the one its log names
    named = {r.file for t in tasks for r in d.records(t.ref) if isinstance(r, SnapshotRecord)}
    assert set(d.logs.blobs) == named and len(named) == len(tasks)
    # and however many snapshots, each instance used two names, alternating
    assert len(d.logs.names) <= 2 * len(tasks) < sum(t.stats["snapshots"] for t in tasks), d.logs.names


def test_a_replacement_rebuilds_from_the_last_snapshot_and_replays_only_what_follows() -> None:
    plan = build_plan("j", "in", "out", STAGES, 1)
    d = Driver(plan, LINES, SNAP)
    for ref in plan.tasks():
        d.start(ref)
    count = (1, 0)
    first = d.tasks[count]
    d.run(until=lambda: first.stats["snapshots"] >= 2 and first.stats["commits"] >= 8, rounds=500)
    second = d.start(count, epoch=2)       # the first one is gone (no more steps): replaced
    d.run()
    assert d.out() == expected(STAGES)[0]
    assert second.stats["snapshot_index"] > 0
    assert second.stats["replayed_records"] <= SNAP.snapshot_every + SNAP.inflight
    assert first.phase is not Phase.DEAD     # it never learnt: a zombie, checked below


def test_a_zombie_that_wakes_after_compaction_is_fenced() -> None:
    plan = build_plan("j", "in", "out", STAGES, 1)
    d = Driver(plan, LINES, SNAP)
    for ref in plan.tasks():
        d.start(ref)
    count = (1, 0)
    zombie = d.tasks[count]
    d.run(until=lambda: zombie.stats["commits"] >= 4, rounds=500)
    held: list = []
    d.hold = lambda t, e: t is zombie and (held.append(e) or True)    # stalled: its effects wait
    d.run(until=lambda: bool(held), rounds=500)
    second = d.start(count, epoch=2)
    d.run(until=lambda: second.stats["snapshots"] >= 2, rounds=2000)
    d.hold = lambda t, e: False
    # it wakes: its stalled appends and trims land now, on a log the replacement has compacted
    for e in held:
        if isinstance(e, AppendLog | TrimLog) and zombie.alive:
            r = execute(e, d.logs, d.inbox, d.source)
            if not isinstance(r, OutOfOrder):   # (one that waits for a lost one of its own stays out)
                complete(zombie, e, r)
    assert zombie.phase is Phase.DEAD and zombie.cause is not None and zombie.cause.value == "fenced"
    d.run()
    assert d.out() == expected(STAGES)[0]


def test_a_slow_task_snapshots_by_age_too() -> None:
    """A task that commits rarely would take hours to reach ``snapshot_every``: ``snapshot_age`` bounds
    its log by time as well (at the first commit after the age is reached)."""
    slow = replace(CFG, batch_lines=2, rate=10.0, snapshot_every=1000, snapshot_age=0.5)
    plan = build_plan("j", "in", "out", STAGES, 1)
    d = Driver(plan, LINES, slow)
    tasks = [d.start(ref) for ref in plan.tasks()]
    d.run()
    assert d.out() == expected(STAGES)[0]
    source = tasks[0]
    assert source.stats["commits"] < slow.snapshot_every and source.stats["snapshots"] >= 2, source.stats
    never = replace(slow, snapshot_age=0.0)
    d = Driver(plan, LINES, never)
    tasks = [d.start(ref) for ref in plan.tasks()]
    d.run()
    assert tasks[0].stats["snapshots"] == 0


def test_a_replacement_snapshots_at_its_first_chance() -> None:
    """The records a replacement replays are the log's since its last snapshot: it snapshots at once
    rather than a whole ``snapshot_age`` after it started, so a replaced task's log stays within one
    interval (the soak saw two before its first trim)."""
    aged = replace(CFG, batch_lines=2, rate=10.0, snapshot_every=1000, snapshot_age=5.0)
    plan = build_plan("j", "in", "out", STAGES, 1)
    d = Driver(plan, LINES, aged)
    for ref in plan.tasks():
        d.start(ref)
    source = (0, 0)
    first = d.tasks[source]
    d.run(until=lambda: first.stats["commits"] >= 6, rounds=500)
    assert first.stats["snapshots"] == 0      # its age not reached yet: all of it is in the log
    second = d.start(source, epoch=2)
    d.run(until=lambda: second.stats["snapshots"] >= 1 or second.now - second.started_at > 2.0, rounds=2000)
    assert second.stats["replayed_records"] >= 4 and second.stats["snapshots"] >= 1, second.stats
    assert second.now - second.started_at < aged.snapshot_age
    d.run()
    assert d.out() == expected(STAGES)[0]

"""The task state machine and the in-memory stores, driven step by step without a simulator."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from rainstorm.stream import AggregateByKey, FilteredTransform, Transform
from rainstorm.stream.channels import Answer, Deliver, Query
from rainstorm.stream.plan import Plan, TaskRef, build_plan
from rainstorm.stream.records import CommitRecord, FenceRecord, decode_record, encode_batch
from rainstorm.stream.reference import run_reference
from rainstorm.stream.source import Stripe, all_lines, lines_file
from rainstorm.stream.stores import (
    Applied,
    Fenced,
    MemoryInboxStore,
    MemoryLogStore,
    MemorySource,
    NotOwner,
    OutOfOrder,
)
from rainstorm.stream.task import (
    Accept,
    AppendLog,
    Effect,
    Phase,
    Publish,
    ReadSource,
    Send,
    Task,
    TaskConfig,
    complete,
    execute,
)

CFG = TaskConfig(batch_lines=4, batch_entries=2, window=3, resend=0.1)
LINES = [f"line {i}" + (" err" if i % 5 == 0 else "") for i in range(1, 31)]
DATA = lines_file(LINES)
OFFS = [o for o, _ in all_lines(DATA)]     # line i (from 0) starts at byte OFFS[i]: its id is f"in:{OFFS[i]}"


def boom(k: Any, v: Any) -> Any:
    if v.endswith("7"):
        raise ValueError("sevens are bad")
    return (v.split()[-1], v)


class Driver:
    """Runs tasks' effects on shared in-memory stores, in order, with a lossless network."""

    def __init__(self, plan: Plan, lines: list[str], cfg: TaskConfig = CFG) -> None:
        self.plan, self.cfg = plan, cfg
        self.logs = MemoryLogStore()
        self.inbox = MemoryInboxStore()
        self.source = MemorySource({plan.src: lines_file(lines)})
        self.tasks: dict[TaskRef, Task] = {}
        self.net: deque[Send] = deque()
        self.sent: list[Send] = []
        self.now = 0.0
        self.hold: Callable[[Task, Effect], bool] = lambda t, e: False   # True: swallow the effect

    def start(self, ref: TaskRef, epoch: int = 1) -> Task:
        t = Task(self.plan, ref, epoch, self.cfg)
        self.tasks[ref] = t
        t.start(self.now)
        return t

    def step(self, t: Task) -> bool:
        effs = t.take_effects()
        for e in effs:
            if self.hold(t, e):
                continue
            if isinstance(e, Send):
                self.net.append(e)
                self.sent.append(e)
            else:
                complete(t, e, execute(e, self.logs, self.inbox, self.source))
        return bool(effs)

    def run(self, until: Callable[[], bool] | None = None, rounds: int = 5000) -> None:
        for _ in range(rounds):
            if until is not None and until():
                return
            busy = False
            for t in list(self.tasks.values()):
                busy |= self.step(t)
            while self.net:
                s = self.net.popleft()
                dest = self.tasks.get(s.dest)
                if dest is not None:
                    dest.on_message(s.msg, self.now)
                busy = True
            if not busy:
                self.now += 0.2
                for t in self.tasks.values():
                    t.tick(self.now)
            if until is None and all(t.done for t in self.tasks.values()):
                return
        raise AssertionError("did not finish: " + str({r: (t.phase, t.why) for r, t in self.tasks.items()}))

    def out(self) -> Counter[bytes]:
        return Counter(self.logs.data(self.plan.dest).splitlines())

    def dead(self) -> Counter[bytes]:
        return Counter(self.logs.data(self.plan.deadletters).splitlines())

    def records(self, ref: TaskRef) -> list[Any]:
        return [decode_record(d) for _, d in self.logs.entries(self.plan.log_name(ref))]


def expected(stages: list[Any]) -> tuple[Counter[bytes], Counter[bytes]]:
    out, dead = run_reference(stages, "in", LINES)
    return Counter(out), Counter(dead)


STAGES = [Transform(boom), FilteredTransform(lambda k, v: k != "err"), AggregateByKey(lambda k, v: len(v), "count")]


@pytest.mark.parametrize("fuse,tasks", [(True, 1), (False, 1), (True, 2), (False, 3)])
def test_failure_free_job_matches_reference(fuse: bool, tasks: int) -> None:
    plan = build_plan("j", "in", "out", STAGES, tasks, fuse=fuse)
    d = Driver(plan, LINES)
    for ref in plan.tasks():
        d.start(ref)
    d.run()
    assert (d.out(), d.dead()) == expected(STAGES)
    assert sum(d.dead().values()) == 3            # lines 7, 17, 27


def test_fused_filter_job_is_one_task_that_reads_filters_and_writes() -> None:
    stages = [FilteredTransform(lambda k, v: v.endswith("err"))]
    plan = build_plan("j", "in", "out", stages, 1)
    assert plan.tasks() == [(0, 0)]
    d = Driver(plan, LINES)
    d.start((0, 0))
    d.run()
    assert d.out() == expected(stages)[0]
    assert f'["in:{OFFS[4]}", "line 5 err"]'.encode() in d.out()
    recs = d.records((0, 0))
    assert isinstance(recs[0], FenceRecord) and all(isinstance(r, CommitRecord) for r in recs[1:])
    assert recs[-1].source == (len(DATA), True)


def test_replacement_fences_the_old_instance_which_can_no_longer_commit() -> None:
    plan = build_plan("j", "in", "out", STAGES, 1, fuse=True)
    d = Driver(plan, LINES)
    old = d.start((0, 0), epoch=1)
    d.start((1, 0), epoch=1)
    d.run(until=lambda: old.stats["commits"] >= 2)
    new = Task(plan, (0, 0), 2, CFG)
    new.start()
    d.step(new)                                   # the new fence lands
    d.run(until=lambda: not old.alive, rounds=50)  # the old one's next append is refused
    assert old.phase is Phase.DEAD and old.why.startswith("fenced")
    d.tasks[(0, 0)] = new
    d.run()
    assert (d.out(), d.dead()) == expected(STAGES)
    fence = 0
    for r in d.records((0, 0)):
        if isinstance(r, FenceRecord):
            fence = max(fence, r.epoch)
        else:
            assert r.epoch >= fence


def test_crash_after_commit_before_publish_republishes_once_and_resumes_source() -> None:
    stages = [Transform(lambda k, v: (v, 1))]
    plan = build_plan("j", "in", "out", stages, 1)
    d = Driver(plan, LINES, replace(CFG, snapshot_every=0))   # no snapshot: the whole log is read below
    first = d.start((0, 0), epoch=1)
    d.hold = lambda t, e: t is first and isinstance(e, Publish)   # it dies before any publish lands
    d.run(until=lambda: first.stats["commits"] >= 2, rounds=100)
    assert d.logs.data("out") == b""
    d.hold = lambda t, e: False
    second = d.start((0, 0), epoch=2)
    d.run()
    assert d.out() == expected(stages)[0] and set(d.out().values()) == {1}
    # the replacement did not re-read what the first committed: its first commit starts past it
    commits = [r for r in d.records((0, 0)) if isinstance(r, CommitRecord)]
    assert [r.source[0] for r in commits if r.source] == [OFFS[4 * i] for i in range(1, 8)] + [len(DATA)]
    assert second.stats["rebuilt_records"] >= 3


def receiver() -> tuple[Driver, Task]:
    plan = build_plan("j", "in", "out", [Transform(lambda k, v: (k, v))], 1, fuse=False)
    d = Driver(plan, [])
    r = d.start((1, 0), epoch=4)
    d.step(r)   # fence
    d.step(r)   # read log
    d.step(r)   # open inbox
    assert r.phase is Phase.RUNNING
    # a new instance tells its producers its marks at once (they need not wait to resend)
    effects = r.take_effects()
    assert [e.msg for e in effects if isinstance(e, Send)] == [Answer((1, 0), (0, 0), 4, 0, 0)]
    for e in effects:
        if not isinstance(e, Send):
            complete(r, e, execute(e, d.logs, d.inbox, d.source))   # its first (empty) inbox read
    return d, r


def deliver(d: Driver, r: Task, seq: int, epoch: int = 1, end: bool = False) -> list[Any]:
    """Hand ``r`` one delivery; perform the inbox accept it asks for; return the messages it sends.
    Other effects (the inbox read the new entry triggers) are left queued on the task."""
    payload = encode_batch([(f"in:{seq}", f"in:{seq}", "x")])
    r.on_message(Deliver((0, 0), (1, 0), epoch, seq, payload, end), d.now)
    sent: list[Any] = []
    later: list[Effect] = []
    todo = r.take_effects()
    while todo:
        e = todo.pop(0)
        if isinstance(e, Send):
            sent.append(e.msg)
        elif isinstance(e, Accept):
            complete(r, e, execute(e, d.logs, d.inbox, d.source))
            todo += r.take_effects()
        else:
            later.append(e)
    r._effects[:0] = later
    return sent


def test_receiver_accepts_only_next_and_answers_every_delivery() -> None:
    d, r = receiver()
    assert deliver(d, r, 1) == [Answer((1, 0), (0, 0), 4, 1, 0)]
    assert deliver(d, r, 1) == [Answer((1, 0), (0, 0), 4, 1, 0)]        # duplicate: answered, not re-added
    assert deliver(d, r, 3) == [Answer((1, 0), (0, 0), 4, 1, 0)]        # gap: not accepted
    assert deliver(d, r, 2, epoch=3) == [Answer((1, 0), (0, 0), 4, 2, 0)]
    assert deliver(d, r, 3, epoch=2) == [Answer((1, 0), (0, 0), 4, 2, 0)]   # a replaced producer: rejected
    assert [e.seq for e in d.inbox.tasks[r.name].entries] == [1, 2]
    assert r.stats["stale_producer"] == 1


def test_receiver_not_ready_does_not_answer_and_commit_sends_marks() -> None:
    plan = build_plan("j", "in", "out", [Transform(lambda k, v: (k, v))], 1, fuse=False)
    r = Task(plan, (1, 0), 1, CFG)
    r.on_message(Query((0, 0), (1, 0), 1), 0.0)
    assert r.take_effects() == [] and r.stats["msg_not_ready"] == 1
    d, r = receiver()
    deliver(d, r, 1)
    deliver(d, r, 2, end=True)
    d.run(until=lambda: r.done, rounds=20)
    assert d.out() == Counter({b'["in:1", "x"]': 1, b'["in:2", "x"]': 1})
    marks = [m for m in d.sent if isinstance(m.msg, Answer)]
    assert marks and marks[-1].msg.committed == 2
    assert deliver(d, r, 2) == [Answer((1, 0), (0, 0), 4, 2, 2)]


def test_query_answers_only_what_the_log_vouches_for() -> None:
    d, r = receiver()
    deliver(d, r, 1)
    deliver(d, r, 2)
    r.on_message(Query((0, 0), (1, 0), 1), d.now)
    assert [e.msg for e in r.take_effects() if isinstance(e, Send)] == [Answer((1, 0), (0, 0), 4, 0, 0)]
    r.on_message(Query((0, 0), (1, 0), 0), d.now)   # from a replaced producer instance: ignored
    assert [e for e in r.take_effects() if isinstance(e, Send)] == []


def test_losing_the_inbox_store_stops_the_instance() -> None:
    d, r = receiver()
    deliver(d, r, 1)
    d.inbox.lose()
    deliver(d, r, 2)
    assert r.phase is Phase.DEAD and r.why.startswith("inbox lost")


def test_a_log_that_does_not_replay_stops_the_instance_with_a_reason() -> None:
    plan = build_plan("j", "in", "out", [Transform(lambda k, v: (k, v))], 1, fuse=False)
    d = Driver(plan, [])
    d.logs.append(plan.log_name((1, 0)), b"\xc1garbage", fence="x", epoch=0, client="c", seq=1)
    r = d.start((1, 0), epoch=1)
    d.step(r)
    d.step(r)
    assert r.phase is Phase.DEAD and "does not replay" in r.why and "\n" not in r.why


def test_instance_that_finds_a_newer_fence_stops() -> None:
    plan = build_plan("j", "in", "out", [Transform(lambda k, v: (k, v))], 1)
    d = Driver(plan, ["a"])
    old = Task(plan, (0, 0), 1, CFG)
    old.start()
    fence = old.take_effects()
    assert isinstance(fence[0], AppendLog)
    d.start((0, 0), epoch=2)
    d.step(d.tasks[(0, 0)])                       # epoch 2's fence first ...
    complete(old, fence[0], execute(fence[0], d.logs, d.inbox, d.source))
    assert old.phase is Phase.DEAD and old.why.startswith("fenced")
    # ... or epoch 1's fence landed, but epoch 2's came before the read
    d2 = Driver(plan, ["a"])
    old2 = d2.start((0, 0), epoch=1)
    eff = old2.take_effects()
    complete(old2, eff[0], execute(eff[0], d2.logs, d2.inbox, d2.source))
    d2.start((0, 0), epoch=2)
    d2.step(d2.tasks[(0, 0)])
    for e in old2.take_effects():
        complete(old2, e, execute(e, d2.logs, d2.inbox, d2.source))
    assert old2.phase is Phase.DEAD and old2.why == "replaced by epoch 2"


# ----------------------------------------------------------------------------------------- the stores

def test_memory_log_store_matches_hydfs_append_rules() -> None:
    s = MemoryLogStore()
    assert s.append("f", b"a", fence="t", epoch=2, client="c", seq=1) == 1
    assert s.append("f", b"b", fence="t", epoch=2, client="c", seq=2) == 2     # equal epoch: fine
    with pytest.raises(Fenced):
        s.append("f", b"c", fence="t", epoch=1, client="z", seq=1)
    assert s.append("f", b"b", fence="t", epoch=1, client="c", seq=2) == 2     # a retry: original index
    assert s.append("f", b"d", fence="u", epoch=0, client="z", seq=1) == 3     # other fence key
    assert s.entries("f") == [(1, b"a"), (2, b"b"), (3, b"d")] and s.entries("g") == []


def test_memory_inbox_open_accept_read_apply() -> None:
    s = MemoryInboxStore()
    assert s.open("t", 1, {0: 0, 1: 0}) == {0: 0, 1: 0}
    for seq in (1, 2, 3):
        assert s.accept("t", 1, 0, seq, b"%d" % seq, False, floor=0) == seq
    assert s.accept("t", 1, 0, 5, b"", False, floor=0) == 3                  # gap
    assert s.accept("t", 1, 1, 1, b"x", False, floor=4) == 4                 # floor: committed mark
    assert s.accept("t", 1, 1, 5, b"y", False, floor=4) == 5
    assert [e.seq for e in s.read("t", 1, 2)] == [1, 2]
    assert [e.seq for e in s.read("t", 1, 10)] == [3, 5]
    assert s.read("t", 1, 10) == []
    first = s.tasks["t"].entries[0]
    s.apply("t", 1, Applied(7, [first.id]))
    assert s.tasks["t"].applied == 7 and first not in s.tasks["t"].entries
    # a new owner keeps what is above its committed marks; re-reads the pending entries first
    assert s.open("t", 2, {0: 2, 1: 4}) == {0: 3, 1: 5}
    assert [(e.channel, e.seq) for e in s.read("t", 2, 10)] == [(0, 3), (1, 5)]
    with pytest.raises(NotOwner):
        s.read("t", 1, 1)
    with pytest.raises(NotOwner):
        s.open("t", 1, {})
    s.lose()
    with pytest.raises(NotOwner):
        s.accept("t", 2, 0, 4, b"", False, 0)


def test_memory_source_reads_its_stripe() -> None:
    src = MemorySource({"f": b"a\nb\nc\nd\ne\n"})     # blocks of 4 bytes: "a\nb\n", "c\nd\n", "e\n"
    r = src.read("f", 0, Stripe(0, 2, 4), 100, final=True)
    assert (r.lines, r.offsets(), r.next, r.eof) == (["a", "b"], [0, 2], 4, False)
    r = src.read("f", r.next, Stripe(0, 2, 4), 100, final=True)
    assert (r.lines, r.offsets(), r.eof) == (["e"], [8], True)
    r = src.read("f", 0, Stripe(1, 2, 4), 100, final=True)
    assert (r.lines, r.offsets(), r.eof) == (["c", "d"], [4, 6], True)


def test_pipelined_commits_land_in_order_even_when_appends_are_reordered() -> None:
    """Up to ``inflight`` commits are appended before the first is acknowledged; an append that
    overtakes its predecessor is refused (OutOfOrder) and retried, so the log keeps commit order."""
    stages = [Transform(lambda k, v: (v, 1))]
    plan = build_plan("j", "in", "out", stages, 1)
    logs, inbox = MemoryLogStore(), MemoryInboxStore()
    source = MemorySource({"in": DATA})
    t = Task(plan, (0, 0), 1, TaskConfig(batch_lines=3, inflight=3))
    t.start(0.0)
    pending: list[Effect] = []
    refused = 0
    for _ in range(2000):
        pending += t.take_effects()
        if not pending:
            if t.done:
                break
            t.tick(1.0)
            continue
        e = pending.pop()          # newest first: the worst order for a pipelined writer
        if isinstance(e, AppendLog | Publish):
            r = execute(e, logs, inbox, source)
            if isinstance(r, OutOfOrder):
                refused += 1
                pending.insert(0, e)
                continue
            complete(t, e, r)
        elif isinstance(e, Send):
            continue
        else:
            complete(t, e, execute(e, logs, inbox, source))
    assert t.done and refused > 0, (t.phase, t.why)
    commits = [decode_record(d) for _, d in logs.entries(plan.log_name((0, 0)))][1:]
    assert [r.source[0] for r in commits] == [OFFS[3 * i] for i in range(1, 10)] + [len(DATA)]
    assert Counter(logs.data("out").splitlines()) == expected(stages)[0]


def test_a_source_reads_about_a_batch_not_the_whole_byte_budget() -> None:
    """With small batches a source asked for ``batch_bytes`` (1 MiB) per read and split it all into
    lines to keep ``batch_lines`` of them: each commit cost the whole window (seen in a profile)."""
    plan = build_plan("j", "in", "out", [Transform(lambda k, v: (v, 1))], 1)
    d = Driver(plan, LINES * 50, TaskConfig(batch_lines=2))
    t = d.start((0, 0))
    reads: list[ReadSource] = []
    d.hold = lambda task, e: isinstance(e, ReadSource) and bool(reads.append(e))   # record, let it run
    d.run(until=lambda: t.stats["commits"] >= 10, rounds=200)
    assert len(reads) >= 10
    # about 2 lines' bytes (their size is learnt as it goes, from a 100-byte guess), not batch_bytes
    assert all(r.max_bytes <= 1024 for r in reads), [r.max_bytes for r in reads]
    assert reads[-1].max_bytes < reads[0].max_bytes


def test_a_caught_up_follow_source_asks_again_after_a_pause_not_at_once() -> None:
    """The worker ticks a task after every wake-up, and an empty read's answer wakes it: every empty
    read used to start the next one at once, so the instance's loop spun (a caught-up ``--follow``
    source cost a core, bench/follow.py). Now it asks again only after ``follow_poll``."""
    plan = build_plan("j", "in", "out", [Transform(lambda k, v: (v, 1))], 1)
    cfg = TaskConfig(batch_lines=64, follow=True, follow_poll=0.1)
    d = Driver(plan, LINES, cfg)
    t = d.start((0, 0))
    d.run(until=lambda: t.stats["commits"] >= 1 and not t._inflight, rounds=500)   # caught up
    reads, now = 0, d.now
    for _ in range(2000):                 # the worker's loop: effects, then a tick, 1 ms a turn
        for e in t.take_effects():
            if isinstance(e, ReadSource):
                reads += 1
            if not isinstance(e, Send):
                complete(t, e, execute(e, d.logs, d.inbox, d.source))
        now += 0.001
        t.tick(now)
    assert reads <= 2.0 / cfg.follow_poll + 2, reads      # 2 s of loop turns: about 20 reads, not 2000

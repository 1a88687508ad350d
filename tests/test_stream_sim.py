"""Whole jobs in the seeded simulator: any crashes, zombies, Redis losses and network faults give
exactly the failure-free output (as a multiset), each count group's values 1..n, each dead letter
once, and no commit by a fenced zombie. Every run is deterministic (seeded; derandomized hypothesis)."""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rainstorm.stream import AggregateByKey, FilteredTransform, Transform
from rainstorm.stream.reference import run_reference
from rainstorm.stream.sim import (
    POINTS,
    Crash,
    Faults,
    JobSim,
    NodeCrash,
    RedisLoss,
    RedisRollback,
    SimResult,
    Zombie,
)
from rainstorm.stream.stores import MemoryLogStore
from rainstorm.stream.task import TaskConfig

LINES = [f"w{i % 7},{i}" for i in range(1, 121)]


def parse(k: Any, v: Any) -> Any:
    if v.endswith("3"):
        raise ValueError(f"no threes: {v}")
    return (v.split(",")[0], v)


COUNT_JOB = [Transform(parse), FilteredTransform(lambda k, v: not v.endswith("5")),
             AggregateByKey(lambda k, v: k, "count")]
REF_OUT, REF_DEAD = run_reference(COUNT_JOB, "in.txt", LINES)


@cache
def failure_free(tasks: int, fuse: bool) -> Counter[bytes]:
    r = JobSim(COUNT_JOB, LINES, tasks=tasks, fuse=fuse, seed=12345).run()
    assert r.finished
    return Counter(r.output)


def groups(lines: list[bytes]) -> dict[Any, list[Any]]:
    out: dict[Any, list[Any]] = defaultdict(list)
    for line in lines:
        k, v = json.loads(line)
        out[k].append(v)
    return out


def assert_exactly_once(sim: JobSim, r: SimResult, tasks: int, fuse: bool) -> None:
    assert r.finished, sim.phases()
    assert sim.check() == []
    assert Counter(r.output) == Counter(REF_OUT) == failure_free(tasks, fuse)
    expected_n = Counter(parse("", line)[0] for line in LINES if not line.endswith(("3", "5")))
    for g, values in groups(r.output).items():
        # exactly 1..n, and in that order: a key's running values never go back in the destination
        assert values == list(range(1, expected_n[g] + 1)), g
    assert Counter(r.dead) == Counter(REF_DEAD)
    assert len(set(r.dead)) == len(r.dead) == sum(1 for line in LINES if line.endswith("3"))


# ------------------------------------------------------------------------------------------ the property

ints = st.integers
crash = st.builds(Crash, task=ints(0, 11), point=st.sampled_from(POINTS), nth=ints(1, 14), after=st.booleans())
zombie = st.builds(Zombie, task=ints(0, 11), nth=ints(1, 10), pause=ints(1, 100).map(lambda x: x / 100))
loss = st.builds(RedisLoss, at=ints(0, 150).map(lambda x: x / 100), node=ints(0, 2))
node_crash = st.builds(NodeCrash, at=ints(0, 150).map(lambda x: x / 100), node=ints(0, 2))
rollback = st.builds(RedisRollback, at=ints(0, 150).map(lambda x: x / 100), node=ints(0, 2),
                     back=ints(0, 150).map(lambda x: x / 100))
faults = st.builds(
    Faults,
    drop=st.sampled_from([0.0, 0.1, 0.3]),
    dup=st.sampled_from([0.0, 0.1, 0.3]),
    delay=st.sampled_from([(0.001, 0.005), (0.001, 0.05)]),
    events=st.lists(st.one_of(crash, crash, zombie, loss, rollback, node_crash), max_size=7),
)


@settings(max_examples=250, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(faults=faults, seed=ints(0, 1 << 16), tasks=ints(1, 3), fuse=st.booleans())
def test_any_failures_give_the_failure_free_output(faults: Faults, seed: int, tasks: int, fuse: bool) -> None:
    sim = JobSim(COUNT_JOB, LINES, tasks=tasks, fuse=fuse, seed=seed, faults=faults)
    assert_exactly_once(sim, sim.run(), tasks, fuse)


LONG_JOB = [*COUNT_JOB, Transform(lambda k, v: (v % 3, k))]     # after the aggregate: fused into its task
LONG_REF = Counter(run_reference(LONG_JOB, "in.txt", LINES)[0])
configs = st.builds(TaskConfig, batch_lines=st.sampled_from([1, 5, 64]), batch_entries=st.sampled_from([1, 3, 16]),
                    batch_bytes=st.sampled_from([1, 40, 4096]), block=st.sampled_from([7, 64, 1 << 20]),
                    inflight=st.sampled_from([1, 2, 4]), window=st.sampled_from([1, 2, 8]),
                    max_outbox=st.sampled_from([1, 4, 64]), max_queue=st.sampled_from([1, 3]),
                    resend=st.sampled_from([0.05, 0.3]), snapshot_every=st.sampled_from([0, 1, 3, 1000]),
                    snapshot_age=st.sampled_from([0.0, 0.3, 60.0]))


@settings(max_examples=60, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(faults=faults, cfg=configs, seed=ints(0, 1 << 16), tasks=st.sampled_from([1, 2, 4]), fuse=st.booleans(),
       nodes=ints(1, 3))
def test_any_failures_any_batching_longer_job(faults: Faults, cfg: TaskConfig, seed: int, tasks: int, fuse: bool,
                                              nodes: int) -> None:
    sim = JobSim(LONG_JOB, LINES, tasks=tasks, fuse=fuse, seed=seed, faults=faults, config=cfg, nodes=nodes)
    r = sim.run(until=600.0)
    assert r.finished, sim.phases()
    assert sim.check() == []
    assert Counter(r.output) == LONG_REF
    assert Counter(r.dead) == Counter(REF_DEAD)


# ------------------------------------------------------------------------------------- chosen scenarios

def test_failure_free_runs_match_the_reference() -> None:
    for tasks, fuse in itertools.product((1, 2, 3), (False, True)):
        assert failure_free(tasks, fuse) == Counter(REF_OUT)


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("after", [False, True])
def test_crash_every_task_at_each_point(point: str, after: bool) -> None:
    """Every task crashes before or after the nth effect of one kind: the snapshot's steps (write the
    file, append the record: "log", trim, remove the old file, read it back in a rebuild) included."""
    snap = point in ("snapshot", "trim", "remove", "readsnap")
    events: list[Any] = [Crash(t, point, n, after) for t in range(8) for n in ((1, 2) if snap else (2, 5))]
    if point == "readsnap":   # rebuilds that start from a snapshot: crash every task once, later on
        events += [Crash(t, "log", 12, False) for t in range(8)]
    sim = JobSim(COUNT_JOB, LINES, tasks=2, seed=7, faults=Faults(drop=0.1, dup=0.1, events=events))
    r = sim.run()
    assert_exactly_once(sim, r, 2, False)
    assert r.stats["crash_" + ("after_" if after else "before_") + point] >= (2 if snap else 4), r.stats


def test_zombie_that_wakes_after_its_replacement_is_fenced() -> None:
    events: list[Any] = [Zombie(t, 3, 1.0) for t in range(8)]   # stalled 1 s; replaced after 0.2 s
    sim = JobSim(COUNT_JOB, LINES, tasks=2, seed=3, faults=Faults(events=events, stale_route=0.5))
    r = sim.run()
    assert_exactly_once(sim, r, 2, False)
    assert r.stats["zombies"] == 8 and r.stats["died_fenced"] >= 6
    assert sim.logs.fenced >= 6            # their appends were refused by the log, not just skipped


def test_zombie_that_commits_before_the_fence_is_kept() -> None:
    events: list[Any] = [Zombie(t, 2, 0.01) for t in range(8)]  # wakes before the replacement fences
    sim = JobSim(COUNT_JOB, LINES, tasks=2, seed=4, faults=Faults(events=events, stale_route=0.5))
    r = sim.run()
    assert_exactly_once(sim, r, 2, False)
    assert r.stats["zombies"] == 8


def test_redis_losses_and_node_crashes_of_adjacent_stages() -> None:
    events: list[Any] = [RedisLoss(0.05 * i, i % 3) for i in range(1, 20)] + [NodeCrash(0.3, 0), NodeCrash(0.35, 1)]
    sim = JobSim(COUNT_JOB, LINES, tasks=2, seed=5, faults=Faults(drop=0.2, events=events))
    r = sim.run()
    assert_exactly_once(sim, r, 2, False)
    assert r.stats["died_inbox lost"] > 0 and r.stats["crash_node"] > 0


def test_redis_restarting_from_an_older_aof_while_the_workers_run_on() -> None:
    events: list[Any] = [RedisRollback(0.1 * i, i % 3, 0.05 * (i % 7)) for i in range(1, 25)]
    sim = JobSim(COUNT_JOB, LINES, tasks=2, seed=10, faults=Faults(drop=0.1, events=events))
    r = sim.run()
    assert_exactly_once(sim, r, 2, False)
    assert r.stats["RedisRollback"] >= 5


def test_one_node_everything_crashes_together_repeatedly() -> None:
    events: list[Any] = [NodeCrash(0.1 + 0.25 * i, 0) for i in range(6)]
    sim = JobSim(COUNT_JOB, LINES, tasks=3, nodes=1, seed=6, faults=Faults(dup=0.3, events=events))
    assert_exactly_once(sim, sim.run(), 3, False)


# -------------------------------------------------------------------------- replayed, never recomputed

calls = itertools.count()


def stamped(acc: Any, k: Any, v: Any) -> Any:
    """A count that also records a fresh stamp per call: recomputing a committed batch would show."""
    return [acc[0] + 1, next(calls)]


def test_outputs_are_resent_from_the_log_never_recomputed() -> None:
    job = [Transform(parse), AggregateByKey(lambda k, v: k, stamped, initial=[0, -1])]
    events: list[Any] = [Crash(t, p, n, a) for t in range(3, 6) for p, n, a in
                         (("log", 3, False), ("log", 4, True), ("apply", 2, True), ("send", 3, True))]
    start = next(calls)
    sim = JobSim(job, LINES, tasks=2, seed=8, faults=Faults(drop=0.2, dup=0.2, events=events))
    r = sim.run()
    assert r.finished and sim.check() == []
    n = sum(1 for line in LINES if not line.endswith("3"))
    assert next(calls) - start > n + 1            # some uncommitted batches were computed again ...
    seen = groups(r.output)
    assert sum(len(v) for v in seen.values()) == n
    for values in seen.values():                  # ... yet each running value went out once, as logged
        assert sorted(v[0] for v in values) == list(range(1, len(values) + 1))
        assert len({v[1] for v in values}) == len(values)


def test_sum_final_values_match_even_though_running_values_depend_on_arrival_order() -> None:
    job = [Transform(lambda k, v: (v.split(",")[0], int(v.split(",")[1]))), AggregateByKey(lambda k, v: k, "sum")]
    totals: dict[str, int] = defaultdict(int)
    for line in LINES:
        w, x = line.split(",")
        totals[w] += int(x)
    events: list[Any] = [Crash(t, "log", 3, True) for t in range(4)]
    sim = JobSim(job, LINES, tasks=2, seed=9, faults=Faults(drop=0.2, events=events))
    r = sim.run()
    assert r.finished and sim.check() == []
    assert {g: max(v) for g, v in groups(r.output).items()} == totals
    assert len(r.output) == len(LINES)


def test_rate_limited_source() -> None:
    cfg = TaskConfig(batch_lines=16, block=64, rate=100.0)
    r = JobSim([FilteredTransform(lambda k, v: True)], LINES, tasks=2, fuse=True, seed=1, config=cfg).run()
    assert r.finished and len(r.output) == len(LINES)
    assert r.time >= len(LINES) / 2 / 100 * 0.8


# ------------------------------------------------------------------------------------ the checks bite

class IgnoresFences(MemoryLogStore):
    def append(self, name: str, data: bytes, *, fence: str, epoch: int, client: str, seq: int,
               after: int = 0) -> int:
        return super().append(name, data, fence=fence, epoch=1 << 40, client=client, seq=seq, after=after)


def test_without_log_fencing_zombies_break_exactly_once() -> None:
    bad = 0
    for seed in range(6):
        events: list[Any] = [Zombie(t, 3, 1.0) for t in range(8)]
        sim = JobSim(COUNT_JOB, LINES, tasks=2, seed=seed, faults=Faults(events=events, stale_route=0.5),
                     logs=IgnoresFences())
        r = sim.run(until=30.0)
        bad += (not r.finished or bool(sim.check()) or Counter(r.output) != Counter(REF_OUT))
    assert bad >= 3


def test_paced_source_measures_each_output_lines_latency() -> None:
    """A paced fused task records, per output line, arrival -> sink append acknowledged."""
    from rainstorm.stream.latency import quantile

    cfg = TaskConfig(batch_lines=64, block=64, rate=200.0, linger=0.005)
    sim = JobSim([FilteredTransform(lambda k, v: not v.endswith("5"))], LINES, tasks=2, fuse=True, seed=3, config=cfg)
    r = sim.run()
    assert r.finished
    hist: Counter[int] = Counter()
    for inst in sim.current.values():
        assert inst is not None
        hist.update(inst.task.latency.counts)
    assert sum(hist.values()) == len(r.output)            # one sample per output line
    p50, top = quantile(hist, 0.5), quantile(hist, 1.0)
    assert p50 is not None and top is not None
    assert 0.0002 < p50 <= top < 0.2     # at least one simulated I/O; at most a few ticks of the simulator

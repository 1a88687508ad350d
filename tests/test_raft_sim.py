"""Raft in the simulated network: crashes (also between a Ready and its save), restarts, partitions, loss,
duplication and reordering, with every invariant checked as it runs (:mod:`raft.sim`).

Every run is seeded and hypothesis is derandomized, so a failure reproduces exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raft.config import RaftConfig
from raft.core import FOLLOWER, LEADER
from raft.sim import InvariantViolation, RaftSim

CFG = RaftConfig(snapshot_every=25)  # small, so snapshots and InstallSnapshot happen in every run
ET = CFG.election_timeout
KINDS = ["crash_leader", "crash", "crash_mid_ready", "restart", "isolate_leader", "isolate_minority", "heal"]


@dataclass
class Chaos:
    n: int = 3
    seed: int = 0
    p_loss: float = 0.0
    p_dup: float = 0.0
    faults: list[tuple[float, str, int]] = field(default_factory=list)  # (time, kind, node #)
    duration: float = 15.0


def new_sim(ch: Chaos) -> RaftSim:
    return RaftSim(ch.n, ch.seed, CFG, delay=(0.001, 0.03), p_loss=ch.p_loss, p_dup=ch.p_dup, skew=1.0,
                   drift=0.01, log_check_every=200)


def inject(sim: RaftSim, kind: str, arg: int) -> None:
    """One fault; crashes only while at most a minority is down (counting this one)."""
    n = len(sim.ids)
    minority = (n - 1) // 2
    down = [x for x in sim.ids if x not in sim.up()]
    nid = sim.ids[arg % n]
    if kind.startswith("crash"):
        if kind == "crash_leader":
            nid = sim.leader() or nid
        if len(down) < minority and nid in sim.up():
            sim.crash(nid, mid_ready=kind == "crash_mid_ready")
    elif kind == "restart":
        for d in down:
            sim.restart(d)
    elif kind == "isolate_leader":
        lead = sim.leader()
        if lead:
            sim.partition([[lead]])
    elif kind == "isolate_minority":
        sim.partition([sim.net.rng.sample(sim.ids, minority)])
    elif kind == "heal":
        sim.heal()


def run_until(sim: RaftSim, cond: Callable[[], object], limit: float, step: float = 0.01) -> float:
    """Run until ``cond()``; the seconds it took (fails past ``limit``)."""
    t0 = sim.now
    while not cond():
        assert sim.now - t0 < limit, "timed out"
        sim.run_for(step)
    return sim.now - t0


def settle(sim: RaftSim) -> None:
    """Heal everything, restart everyone, and wait until a fresh proposal is acknowledged and applied everywhere."""
    sim.heal()
    for nid in sim.ids:
        sim.restart(nid)
    sim.run_for(4 * ET)
    for _ in range(100):
        if b"final" in sim.acked:
            break
        sim.propose(b"final")
        sim.run_for(0.2)
    assert b"final" in sim.acked, "no progress after healing"
    for _ in range(50):  # followers learn the commit index from heartbeats, which may be lost too
        sim.run_for(CFG.heartbeat)
        lead = sim.nodes[sim.leader() or sim.ids[0]].core
        if lead and all(x.core and x.core.applied == lead.commit for x in sim.nodes.values()):
            break
    sim.check_converged()


def run(ch: Chaos) -> RaftSim:
    sim = new_sim(ch)
    faults = sorted(ch.faults)
    t, k = 0.0, 0
    while t < ch.duration:
        t += 0.05
        sim.run_until(t)
        while faults and faults[0][0] <= t:
            _, kind, arg = faults.pop(0)
            inject(sim, kind, arg)
        sim.propose(b"p%d" % k)
        k += 1
    settle(sim)
    return sim


@st.composite
def chaos(draw: st.DrawFn) -> Chaos:
    n = draw(st.sampled_from([3, 5]))
    faults = draw(st.lists(st.tuples(st.floats(0, 15, allow_nan=False), st.sampled_from(KINDS),
                                     st.integers(0, n - 1)), max_size=25))
    return Chaos(n, draw(st.integers(0, 2**32)), draw(st.sampled_from([0.0, 0.02, 0.1, 0.2])),
                 draw(st.sampled_from([0.0, 0.05, 0.2])), faults)


@settings(max_examples=400, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chaos())
def test_invariants_under_chaos(ch: Chaos) -> None:
    sim = run(ch)
    assert sim.acked and all(sim.applied[i][1] == d for d, i in sim.acked.items())


@pytest.mark.parametrize("n", [3, 5])
def test_leader_crash_elects_another_and_keeps_every_acknowledged_entry(n: int) -> None:
    sim = new_sim(Chaos(n, seed=n))
    sim.run_for(3 * ET)
    for k in range(100):
        sim.propose(b"a%d" % k)
        sim.run_for(0.01)
    sim.run_for(0.5)
    assert len(sim.acked) == 100
    old = sim.leader()
    assert old is not None
    sim.crash(old)
    run_until(sim, sim.leader, 3 * ET)  # a timeout (1-2 s), a pre-vote and a vote
    new = sim.leader()
    assert new is not None and new != old
    log = sim.core(new).log
    assert all(i <= log.snap_index or log.term(i) is not None for i in sim.acked.values())
    sim.restart(old)
    settle(sim)


def test_isolated_leader_steps_down_and_the_majority_goes_on() -> None:
    sim = new_sim(Chaos(5, seed=11))
    sim.run_for(3 * ET)
    old = sim.leader()
    assert old is not None
    term = sim.core(old).term
    sim.partition([[old]])
    old_core = sim.core(old)
    run_until(sim, lambda: old_core.role is not LEADER, ET + CFG.heartbeat + 0.05)  # check-quorum
    sim.run_for(3 * ET)
    new = sim.leader()
    assert new is not None and new != old
    assert sim.propose(b"majority")
    sim.run_for(0.5)
    assert b"majority" in sim.acked
    assert old_core.term == term  # pre-vote: the isolated one never raised its term
    settle(sim)
    assert sim.leader() == new  # it came back without deposing anyone


def test_partitioned_follower_returns_without_disrupting() -> None:
    sim = new_sim(Chaos(3, seed=5))
    sim.run_for(3 * ET)
    lead = sim.leader()
    assert lead is not None
    follower = next(x for x in sim.ids if x != lead)
    terms = {x: sim.core(x).term for x in sim.ids}
    sim.partition([[follower]])
    for k in range(100):
        sim.propose(b"x%d" % k)
        sim.run_for(0.2)
    f = sim.core(follower)
    assert f.stats["pre_campaigns"] >= 5 and f.term == terms[follower]
    sim.heal()
    sim.run_for(2 * ET)
    assert sim.leader() == lead and {x: sim.core(x).term for x in sim.ids} == terms
    assert f.role is FOLLOWER and f.stats["snapshots_installed"] >= 1  # caught up through a snapshot
    settle(sim)


def test_crash_between_ready_and_save_loses_only_what_was_never_sent() -> None:
    sim = new_sim(Chaos(3, seed=9))
    for r in range(10):  # alternately the leader and a follower die mid-Ready, under load
        run_until(sim, sim.leader, 5 * ET)
        lead = sim.leader()
        target = lead if r % 2 == 0 else next(x for x in sim.ids if x != lead)
        assert target is not None
        sim.crash(target, mid_ready=True)
        for k in range(20):
            sim.propose(b"y%d.%d" % (r, k))
            sim.run_for(0.02)
        assert target not in sim.up()
        sim.restart(target)
    assert sim.mid_ready_crashes == 10
    settle(sim)


def test_same_seed_same_run() -> None:
    ch = Chaos(5, seed=3, p_loss=0.1, p_dup=0.1, faults=[(2.0, "crash_leader", 0), (4.0, "restart", 0),
                                                          (6.0, "isolate_minority", 1), (9.0, "heal", 0)])
    a, b = run(ch), run(ch)
    assert (a.events, a.net.sent, a.acked, a.leaders) == (b.events, b.net.sent, b.acked, b.leaders)
    assert a.net.dropped > 0 and a.net.duplicated > 0


def test_a_violation_is_caught() -> None:
    """The checker is live: a node that applies something else at a committed index is reported."""
    sim = new_sim(Chaos(3, seed=1))
    sim.run_for(3 * ET)
    for k in range(5):
        sim.propose(b"z%d" % k)
    sim.run_for(0.5)
    index, (term, _, digest) = max(sim.applied.items())
    sim.applied[index] = (term, b"other", digest)
    with pytest.raises(InvariantViolation):
        sim.crash(sim.ids[0])
        sim.restart(sim.ids[0])
        sim.run_for(2 * ET)

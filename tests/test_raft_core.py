"""The sans-I/O Raft core, scenario by scenario, with messages delivered by hand; and the wire format."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raft.config import RaftConfig
from raft.core import FOLLOWER, LEADER, PRE_CANDIDATE, NotLeader, RaftCore, Restored
from raft.messages import Entry, HardState, MalformedMessage, Message, MsgType, Snapshot, from_wire
from raft.storage import MemoryStorage

CFG = RaftConfig()
ET = CFG.election_timeout


class Cluster:
    """Cores on one shared clock; messages go out after their Ready is saved and arrive at once, unless
    ``cut`` (a set of nodes that can talk to no one) or ``drop`` says otherwise."""

    def __init__(self, n: int = 3, config: RaftConfig = CFG, restored: dict[str, Restored] | None = None) -> None:
        self.ids = [f"n{i}" for i in range(n)]
        self.config = config
        self.now = 0.0
        self.storage = {nid: MemoryStorage() for nid in self.ids}
        for nid, r in (restored or {}).items():  # as if they had saved it
            st = self.storage[nid]
            st.hard_state, st.snapshot, st.entries = r.hard_state, r.snapshot, list(r.entries)
        self.applied: dict[str, list[Entry]] = {nid: [] for nid in self.ids}
        self.cores = {nid: self._core(nid, (restored or {}).get(nid)) for nid in self.ids}
        self.cut: set[str] = set()
        self.wire: Callable[[Message], Message | None] = lambda m: m  # None drops it
        self.delivered: list[Message] = []

    def _core(self, nid: str, restored: Restored | None) -> RaftCore:
        return RaftCore(nid, self.ids, self.config, random.Random(nid), self.now, restored)

    def __getitem__(self, nid: str) -> RaftCore:
        return self.cores[nid]

    def restart(self, nid: str) -> None:
        self.cores[nid] = self._core(nid, self.storage[nid].load())

    def deliver(self) -> None:
        """Drain every Ready and deliver every message, until the cluster is quiet."""
        for _ in range(1000):
            out: list[Message] = []
            for nid, core in self.cores.items():
                while core.has_ready():
                    rd = core.ready()
                    self.storage[nid].save(rd)
                    out.extend(rd.messages)
                    self.applied[nid].extend(rd.committed)
                    core.advance(rd)
            if not out:
                return
            for sent in out:
                m = None if sent.src in self.cut or sent.dst in self.cut else self.wire(sent)
                if m is not None:
                    self.delivered.append(m)
                    self.cores[m.dst].step(m, self.now)
        raise AssertionError("the cluster never went quiet")

    def run(self, seconds: float, step: float = 0.05, only: set[str] | None = None) -> None:
        """Advance the clock, ticking (``only``'s or all) cores and delivering after each step."""
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now += step
            for nid in sorted(only or self.cores):
                self.cores[nid].tick(self.now)
            self.deliver()

    def elect(self, nid: str) -> None:
        """``nid``'s election timer fires first (its timer alone is ticked past any deadline); a second
        try if the first only taught it a higher term."""
        for _ in range(2):
            self.now += 2 * ET
            self.cores[nid].tick(self.now)
            self.deliver()
            if self.cores[nid].role is LEADER:
                return
        raise AssertionError(f"{nid} was not elected")

    def leaders(self) -> list[str]:
        return [nid for nid, c in self.cores.items() if c.role is LEADER]

    def data(self, nid: str) -> list[bytes]:
        return [e.data for e in self.applied[nid] if e.data]


def test_election_and_replication() -> None:
    c = Cluster()
    with pytest.raises(NotLeader) as exc:
        c["n1"].propose(b"x", c.now)
    assert exc.value.leader_hint is None
    c.elect("n0")
    assert c["n0"].term == 1 and c.leaders() == ["n0"]
    assert all(c[n].role is FOLLOWER and c[n].leader_id == "n0" for n in ("n1", "n2"))
    assert c.storage["n1"].hard_state.vote == "n0"  # the vote was durable before the answer went out
    for i in range(10):
        c["n0"].propose(f"e{i}".encode(), c.now)
    c.deliver()
    assert c["n0"].commit == 11  # the no-op and ten entries
    assert c.data("n0") == [f"e{i}".encode() for i in range(10)]
    c.run(0.2)  # followers learn the commit index from the next heartbeat
    for n in c.ids:
        assert c.data(n) == c.data("n0") and c[n].applied == 11
    with pytest.raises(NotLeader) as exc:
        c["n2"].propose(b"x", c.now)
    assert exc.value.leader_hint == "n0"


def test_proposals_batch_into_one_append_per_follower() -> None:
    c = Cluster()
    c.elect("n0")
    c.delivered.clear()
    for i in range(50):
        c["n0"].propose(f"e{i}".encode(), c.now)
    c.deliver()
    appends = [m for m in c.delivered if m.type is MsgType.APPEND]
    assert len(appends) == 2 and all(len(m.entries) == 50 for m in appends)


def test_single_voter_commits_alone() -> None:
    c = Cluster(1)
    c.elect("n0")
    c["n0"].propose(b"x", c.now)
    c.deliver()
    assert c.data("n0") == [b"x"]


def test_conflicting_suffix_is_repaired_with_few_round_trips() -> None:
    c = Cluster()
    c.elect("n0")
    for i in range(5):
        c["n0"].propose(f"a{i}".encode(), c.now)
    c.deliver()
    c.cut = {"n0"}  # the old leader keeps appending where no one hears it
    for i in range(40):
        c["n0"].propose(f"lost{i}".encode(), c.now)
    c.deliver()
    c.run(3 * ET, only={"n1", "n2"})
    new = next(n for n in c.leaders() if n != "n0")
    assert c[new].term == 2
    for i in range(3):
        c[new].propose(f"b{i}".encode(), c.now)
    c.deliver()
    c.cut = set()
    rejections = c[new].stats["rejections"]
    c.run(0.5)
    assert c.leaders() == [new] and c["n0"].term == 2
    assert c["n0"].log.entries == c[new].log.entries
    assert c.storage["n0"].entries == c[new].log.entries  # the truncation reached storage too
    assert c[new].stats["rejections"] - rejections <= 2  # the whole lost term skipped at once
    assert all(not d.startswith(b"lost") for n in c.ids for d in c.data(n))


def _log(*terms: int) -> list[Entry]:
    return [Entry(i + 1, t, f"{i + 1}/{t}".encode()) for i, t in enumerate(terms)]


def test_figure_8_older_term_entry_on_a_majority_is_not_committed() -> None:
    """§5.4.2: S1 (term 4) gets its term-2 entry onto a majority, but must not count it committed:
    S5, whose log ends in term 3, can still be elected and overwrite it."""
    cfg = RaftConfig(max_entries_per_msg=1)
    logs = {"n0": _log(1, 2), "n1": _log(1), "n2": _log(1), "n3": _log(1), "n4": _log(1, 3)}
    c = Cluster(5, cfg, {n: Restored(HardState(3, None, 1), None, e) for n, e in logs.items()})
    c.cut = {"n4"}
    # S1's no-op (index 3) never lands: appends arrive with only the entries before it
    c.wire = lambda m: dataclasses.replace(m, entries=[e for e in m.entries if e.index < 3])
    c.elect("n0")
    assert c["n0"].term == 4
    c.run(0.5, only={"n0"})
    assert [c[n].log.term(2) for n in c.ids] == [2, 2, 2, 2, 3]  # the term-2 entry is on a majority
    assert c["n0"].commit == 1  # ... yet not committed: no entry of term 4 is on a majority
    # S1 crashes; S5 comes back and wins with its term-3 log, overwriting index 2 everywhere
    c.cut = {"n0"}
    c.wire = lambda m: m
    c.elect("n4")
    c.run(0.5, only={"n4"})
    assert all(c[n].log.term(2) == 3 for n in ("n1", "n2", "n3", "n4"))
    assert all(e.term != 2 for n in c.ids for e in c.applied[n])  # nobody ever applied the term-2 entry


def test_figure_8_entry_commits_once_a_current_term_entry_does() -> None:
    logs = {"n0": _log(1, 2), "n1": _log(1), "n2": _log(1), "n3": _log(1), "n4": _log(1, 3)}
    c = Cluster(5, CFG, {n: Restored(HardState(3, None, 1), None, e) for n, e in logs.items()})
    c.cut = {"n4"}
    c.elect("n0")
    assert c["n0"].commit == 3  # the no-op reached a majority: it and the term-2 entry before it commit
    assert [e.term for e in c.applied["n0"]] == [1, 2, 4]  # (commit 1 was restored: applied again)


def test_pre_vote_keeps_a_partitioned_node_from_raising_terms() -> None:
    c = Cluster()
    c.elect("n0")
    c.cut = {"n2"}
    c.run(10 * ET)
    assert c["n2"].stats["pre_campaigns"] >= 3 and c["n2"].stats["elections"] == 0
    assert c["n2"].term == 1 and c["n2"].role is PRE_CANDIDATE
    c.cut = set()
    c.run(ET)
    assert c.leaders() == ["n0"] and all(c[n].term == 1 for n in c.ids)
    assert c["n2"].leader_id == "n0"


def test_check_quorum_leader_cut_off_steps_down_within_an_election_timeout() -> None:
    c = Cluster()
    c.elect("n0")
    c.run(0.5)
    c.cut = {"n0"}
    t0 = c.now
    while c["n0"].role is LEADER and c.now - t0 < 5 * ET:
        c.run(0.05)
    assert c["n0"].role is FOLLOWER and c.now - t0 <= ET + CFG.heartbeat
    assert c["n0"].stats["stepped_down"] == 1 and c["n0"].leader_id is None
    c.run(3 * ET)
    assert [n for n in c.leaders() if n != "n0"]  # the majority elected someone else meanwhile
    c.cut = set()
    c.run(ET)
    assert len(c.leaders()) == 1 and c["n0"].role is FOLLOWER


def test_leader_stickiness_votes_ignored_while_the_leader_is_heard() -> None:
    c = Cluster()
    c.elect("n0")
    c.run(0.5)
    n1 = c["n1"]
    vote = Message(MsgType.VOTE, "n1", "n2", 7, log_index=n1.last_index, log_term=n1.log.last_term)
    c["n2"].step(vote, c.now)
    assert c["n2"].term == 1 and not c["n2"].has_ready()  # ignored outright: no answer, no new term
    c["n0"].step(Message(MsgType.VOTE, "n1", "n0", 7, log_index=n1.last_index, log_term=n1.log.last_term), c.now)
    assert c["n0"].role is LEADER and c["n0"].term == 1
    # n1's own timer firing early (a stalled process) gets it nowhere: its pre-vote is ignored too
    n1.tick(c.now + 3 * ET)
    assert n1.role is PRE_CANDIDATE
    c.deliver()
    assert n1.term == 1 and c.leaders() == ["n0"]
    # once no leader was heard for an election timeout, the same vote is granted
    later = c.now + ET + 0.01
    c["n2"].step(vote, later)
    assert c["n2"].term == 7 and c["n2"].vote == "n1"


def test_lagging_follower_gets_the_snapshot() -> None:
    c = Cluster()
    c.elect("n0")
    c.cut = {"n2"}
    for i in range(30):
        c["n0"].propose(f"e{i}".encode(), c.now)
    c.deliver()
    c.run(0.2, only={"n0", "n1"})
    for n in ("n0", "n1"):
        snap = c[n].compact(c[n].applied, b"state@" + str(c[n].applied).encode())
        c.storage[n].compact(snap)
    assert c["n0"].log.snap_index == 31 and not c["n0"].log.entries
    c.cut = set()
    c["n0"].propose(b"after", c.now)
    c.run(0.3)
    n2 = c["n2"]
    assert n2.stats["snapshots_installed"] == 1 and n2.snapshot is not None
    assert n2.snapshot.data == b"state@31" and c.storage["n2"].snapshot == n2.snapshot
    assert n2.last_index == c["n0"].last_index == 32 and n2.applied == 32
    assert c.data("n2") == [b"after"]  # the rest came in the snapshot


def test_restarted_voter_does_not_vote_twice_in_a_term() -> None:
    c = Cluster()
    c.elect("n0")
    c.restart("n1")
    assert c["n1"].term == 1 and c["n1"].vote == "n0"
    late = c.now + 10 * ET  # long after: no leader heard, so only the vote itself can refuse
    n2 = c["n2"]
    c["n1"].step(Message(MsgType.VOTE, "n2", "n1", 1, log_index=n2.last_index, log_term=n2.log.last_term), late)
    rd = c["n1"].ready()
    assert [m.reject for m in rd.messages] == [True]


def test_candidate_with_a_stale_log_loses() -> None:
    c = Cluster()
    c.elect("n0")
    c.cut = {"n2"}
    c["n0"].propose(b"x", c.now)
    c.deliver()
    c.cut = {"n0"}
    c.now += 2 * ET
    c["n2"].tick(c.now)  # n2 lacks "x": n1 refuses even its pre-vote
    c.deliver()
    assert c["n2"].role is PRE_CANDIDATE and c["n2"].term == 1
    c["n1"].tick(c.now + 2 * ET)
    c.now += 2 * ET
    c.deliver()
    assert c["n1"].role is LEADER and c["n1"].term == 2


def test_foreign_and_stale_messages_are_ignored() -> None:
    c = Cluster()
    c.elect("n0")
    n1 = c["n1"]
    n1.step(Message(MsgType.APPEND, "intruder", "n1", 9), c.now)
    n1.step(Message(MsgType.APPEND, "n0", "n2", 9), c.now)
    assert n1.term == 1 and n1.stats["foreign"] == 2
    n1.step(Message(MsgType.VOTE_RESP, "n2", "n1", 0), c.now)  # stale term
    assert n1.role is FOLLOWER and not n1.has_ready()


def test_candidate_steps_down_on_a_leaders_append() -> None:
    c = Cluster()
    c.elect("n0")
    c["n1"].tick(c.now + 3 * ET)
    assert c["n1"].role is PRE_CANDIDATE
    c.run(2 * CFG.heartbeat, only={"n0"})
    assert c["n1"].role is FOLLOWER and c["n1"].leader_id == "n0" and c["n1"].term == 1


# -- wire format ----------------------------------------------------------------------------------------
def test_wire_round_trip() -> None:
    m = Message(MsgType.APPEND, "n0", "n1", 3, 4, 2, [Entry(5, 2, b"a"), Entry(6, 3, b"")], 4, False, 0,
                None)
    assert from_wire(msgpack.unpackb(msgpack.packb(m.to_wire()))) == m
    s = Message(MsgType.SNAPSHOT, "n0", "n1", 3, snapshot=Snapshot(9, 3, b"state"))
    assert from_wire(msgpack.unpackb(msgpack.packb(s.to_wire()))) == s


@pytest.mark.parametrize("bad", [
    None, 1, "app", [], ["app"] * 11,
    ["nope", "a", "b", 1, 0, 0, [], 0, False, 0, None],
    ["app", "a", "b", -1, 0, 0, [], 0, False, 0, None],
    ["app", "a", "b", True, 0, 0, [], 0, False, 0, None],
    ["app", "a", "b", 1, 0, 0, [], 0, 0, 0, None],
    ["app", "", "b", 1, 0, 0, [], 0, False, 0, None],
    ["app", "a", "b", 1, 0, 0, [[2, 1, b"x"]], 0, False, 0, None],   # not right after log_index
    ["app", "a", "b", 1, 0, 0, [[1, 2, b"x"]], 0, False, 0, None],   # a term past the message's
    ["app", "a", "b", 1, 0, 0, [[1, 1, "x"]], 0, False, 0, None],
    ["app", "a", "b", 1, 0, 0, [[1, 1, b"x"], [2, 0, b"x"]], 0, False, 0, None],
    ["snap", "a", "b", 1, 0, 0, [], 0, False, 0, None],
    ["snap", "a", "b", 1, 0, 0, [], 0, False, 0, [1, 1]],
    ["app", "a", "b", 1 << 64, 0, 0, [], 0, False, 0, None],
])
def test_malformed_messages_are_refused(bad: object) -> None:
    with pytest.raises(MalformedMessage):
        from_wire(bad)


_junk = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=3) | st.binary(max_size=3)
         | st.lists(st.integers() | st.binary(max_size=2), max_size=4))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(MsgType)), st.integers(0, 13), _junk)
def test_from_wire_raises_only_malformed(kind: MsgType, pos: int, junk: object) -> None:
    """A valid message with one field (or one part of its entry or snapshot) replaced by anything."""
    wire = Message(kind, "n0", "n1", 3, 2, 1, [Entry(3, 2, b"x")], 2, False, 0, Snapshot(1, 1, b"s")).to_wire()
    if pos < 11:
        wire[pos] = junk
    elif pos < 13:
        wire[6][0][pos - 11] = junk
    else:
        wire[10][2] = junk
    try:
        from_wire(wire)
    except MalformedMessage:
        pass

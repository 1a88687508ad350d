"""The sans-IO SWIM core, member by member: join, probes, suspicion, refutation, leave, restart, schema."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossip.config import GossipConfig
from gossip.swim import (
    MAX_INT,
    SNAPSHOT_CHUNK,
    Swim,
    rejoin_incarnation,
    retransmit_limit,
    suspicion_remaining,
    suspicion_timeout,
)
from gossip.types import MemberEvent, State

CFG = GossipConfig()
Drop = Callable[[str, str, dict[str, Any]], bool]


def addr(name: str) -> str:
    return f"10.1.0.{ord(name[-1]) % 250}:7946"


class Net:
    """Instant, lossless delivery between a few cores, with a hook to drop chosen messages."""

    def __init__(self, names: list[str], config: GossipConfig = CFG, seed: int = 0) -> None:
        self.config = config
        self.now = 0.0
        self.nodes: dict[str, Swim] = {}
        self.down: set[str] = set()
        self.events: dict[str, list[MemberEvent]] = {}
        self.sent: list[tuple[str, str, dict[str, Any]]] = []
        self.drop: Drop = lambda src, dst, msg: False
        for i, n in enumerate(names):
            self.add(n, seed * 100 + i)

    def add(self, name: str, seed: int = 0, incarnation: int = 0) -> Swim:
        s = Swim(name, addr(name), self.config, random.Random(seed), self.now, incarnation)
        self.nodes[name] = s
        self.events.setdefault(name, [])
        self.down.discard(name)
        return s

    def by_addr(self, a: str) -> str | None:
        return next((n for n, s in self.nodes.items() if s.addr == a), None)

    def pump(self) -> None:
        for _ in range(1000):
            moved = False
            for name, s in list(self.nodes.items()):
                if name in self.down:
                    s.take_outgoing()
                    continue
                self.events[name].extend(s.take_events())
                for dest, msg in s.take_outgoing():
                    moved = True
                    self.sent.append((name, dest, msg))
                    target = self.by_addr(dest)
                    if target is None or target in self.down or self.drop(name, target, msg):
                        continue
                    self.nodes[target].receive(s.addr, msgpack.unpackb(msgpack.packb(msg)), self.now)
            if not moved:
                for name, s in self.nodes.items():
                    self.events[name].extend(s.take_events())
                return
        raise AssertionError("messages never stopped flowing")

    def start(self) -> None:
        names = list(self.nodes)
        self.nodes[names[0]].join([], self.now)
        for n in names[1:]:
            self.nodes[n].join([addr(names[0])], self.now)
            self.pump()

    def run(self, seconds: float, step: float = 0.01) -> None:
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now = round(self.now + step, 6)
            for name, s in self.nodes.items():
                if name not in self.down:
                    s.tick(self.now)
            self.pump()

    def state(self, viewer: str, member: str) -> tuple[State, int] | None:
        for m in self.nodes[viewer].members(self.now):
            if m.node_id == member:
                return m.state, m.incarnation
        return None

    def kinds(self, viewer: str, member: str) -> list[str]:
        return [e.kind for e in self.events[viewer] if e.node_id == member]


def gossip_msg(frm: str, updates: list[list[Any]], inc: int = 0) -> dict[str, Any]:
    return {"t": "gossip", "from": frm, "inc": inc, "u": updates}


# -- formulas ------------------------------------------------------------------------------------------
def test_timeouts_scale_with_log_n() -> None:
    assert suspicion_timeout(CFG, 2) == pytest.approx(CFG.suspicion_periods * CFG.period)
    assert suspicion_timeout(CFG, 100) == pytest.approx(2 * CFG.suspicion_periods * CFG.period)
    lo = suspicion_timeout(CFG, 100)
    assert suspicion_remaining(CFG, 100, 0) == pytest.approx(CFG.suspicion_max_mult * lo)
    assert suspicion_remaining(CFG, 100, CFG.suspicion_confirmations) == pytest.approx(lo)
    assert suspicion_remaining(CFG, 100, 1) < suspicion_remaining(CFG, 100, 0)
    assert suspicion_remaining(CFG, 3, 0) == pytest.approx(suspicion_timeout(CFG, 3))  # nobody could confirm
    assert retransmit_limit(CFG, 100) == math.ceil(CFG.retransmit_mult * math.log(101))


def test_rejoin_incarnation_beats_what_the_cluster_holds() -> None:
    assert rejoin_incarnation(0, None) == 0
    assert rejoin_incarnation(0, (State.FAILED, 7)) == 8
    assert rejoin_incarnation(0, (State.LEFT, 3)) == 4
    assert rejoin_incarnation(5, (State.ALIVE, 5)) == 5
    assert rejoin_incarnation(5, (State.SUSPECT, 5)) == 6
    assert rejoin_incarnation(9, (State.FAILED, 2)) == 9


# -- join ----------------------------------------------------------------------------------------------
def test_first_member_is_alone_and_quiet() -> None:
    s = Swim("a", addr("a"), CFG, random.Random(1), 0.0)
    s.join([], 0.0)
    assert [m.node_id for m in s.alive()] == ["a"]
    assert math.isfinite(s.next_deadline())
    s.tick(s.next_deadline())
    assert s.take_outgoing() == []  # nobody to probe


def test_join_through_introducer_gives_everyone_everyone() -> None:
    net = Net(["a", "b", "c", "d"])
    net.start()
    assert sorted(m.node_id for m in net.nodes["d"].alive()) == ["a", "b", "c", "d"]  # the snapshot
    net.run(CFG.period * 5)  # the earlier joiners hear of the later ones by gossip
    for n in net.nodes:
        assert sorted(m.node_id for m in net.nodes[n].alive()) == ["a", "b", "c", "d"], n
        assert all(e.kind == "join" for e in net.events[n])
        assert sorted(e.node_id for e in net.events[n]) == sorted(set(net.nodes) - {n})


def test_join_is_retried_until_answered() -> None:
    net = Net(["a", "b"])
    net.nodes["a"].join([], 0.0)
    net.down.add("a")
    net.nodes["b"].join(["10.9.9.9:1", addr("a")], 0.0)  # first introducer does not exist
    net.pump()
    net.run(3 * CFG.join_retry)
    assert net.state("b", "a") is None
    net.down.discard("a")
    net.run(2 * CFG.join_retry)
    assert net.state("b", "a") == (State.ALIVE, 0)
    assert net.state("a", "b") == (State.ALIVE, 0)
    joins = [m for _, dst, m in net.sent if m["t"] == "join"]
    assert {d for _, d, m in net.sent if m["t"] == "join"} == {"10.9.9.9:1", addr("a")} and len(joins) >= 4
    net.run(5 * CFG.join_retry)
    assert len([m for _, _, m in net.sent if m["t"] == "join"]) == len(joins)  # answered: no more joins


def test_big_snapshot_comes_in_datagram_sized_chunks() -> None:
    s = Swim("a", addr("a"), CFG, random.Random(1), 0.0)
    s.join([], 0.0)
    s.receive("x:1", gossip_msg("z", [["alive", f"m{i}", f"10.2.{i // 200}.{i % 200}:1", 0]
                                      for i in range(60)]), 0.0)
    for k in range(10):
        s.receive("x:1", gossip_msg("z", [["alive", f"n{k}-{i}", f"10.3.{k}.{i}:1", 0] for i in range(60)]), 0.0)
    s.take_outgoing()
    s.receive("10.4.0.1:1", {"t": "join", "from": "new", "inc": 0, "addr": "10.4.0.1:1"}, 0.0)
    acks = [m for _, m in s.take_outgoing() if m["t"] == "join_ack"]
    assert len(acks) == math.ceil(662 / SNAPSHOT_CHUNK)
    assert all(len(m["m"]) <= SNAPSHOT_CHUNK and len(msgpack.packb(m)) < 60000 for m in acks)
    assert sum(len(m["m"]) for m in acks) == 662  # 660 + a + the joiner


# -- probing -------------------------------------------------------------------------------------------
def test_round_robin_pings_everyone_once_per_round() -> None:
    names = ["a", "b", "c", "d", "e", "f"]
    net = Net(names)
    net.start()
    net.sent.clear()
    net.run(CFG.period * 5 * 3)
    pings = [net.by_addr(dst) for src, dst, m in net.sent if src == "a" and m["t"] == "ping"]
    assert len(pings) in (14, 15, 16)
    for r in range(2):  # each full round of 5 covers the 5 others (rounds may straddle the window edge)
        window = pings[r * 5 + 1: r * 5 + 11]
        assert set(window) == set(names) - {"a"}


def test_lost_ack_is_rescued_by_ping_req() -> None:
    net = Net(["a", "b", "c"])
    net.start()
    # a cannot hear b directly, but c relays: b must stay alive and unsuspected in a's view
    net.drop = lambda src, dst, msg: {src, dst} == {"a", "b"}
    net.run(CFG.period * 20)
    assert net.state("a", "b") == (State.ALIVE, 0)
    assert net.nodes["a"].stats["sent.ping_req"] > 0 and net.nodes["c"].stats["sent.ack"] > 0
    assert net.nodes["a"].stats["suspected"] == 0


def test_silent_member_is_suspected_then_failed_once() -> None:
    net = Net(["a", "b", "c", "d"])
    net.start()
    net.down.add("d")
    net.run(CFG.period * 3)
    assert net.state("a", "d")[0] in (State.SUSPECT, State.FAILED)  # type: ignore[index]
    assert "d" in {m.node_id for m in net.nodes["a"].alive()} or net.state("a", "d")[0] is State.FAILED  # type: ignore[index]
    net.run(suspicion_remaining(CFG, 4, 0) + CFG.period * 3)
    for n in "abc":
        assert net.state(n, "d") == (State.FAILED, 0)
        assert net.kinds(n, "d") == ["join", "fail"] or net.kinds(n, "d") == ["fail"]
        assert "d" not in {m.node_id for m in net.nodes[n].alive()}


def test_suspicion_off_fails_at_once() -> None:
    net = Net(["a", "b", "c"], GossipConfig(suspicion=False))
    net.start()
    net.down.add("c")
    net.run(CFG.period * 2.5)
    assert net.state("a", "c") == (State.FAILED, 0) or net.state("b", "c") == (State.FAILED, 0)
    assert net.nodes["a"].stats["suspected"] + net.nodes["b"].stats["suspected"] == 0


def test_suspicion_is_sent_to_the_suspect_who_refutes() -> None:
    net = Net(["a", "b", "c"])
    net.start()
    # b misses a's probes (ping and ping_req paths) but hears everything else
    net.drop = lambda src, dst, msg: dst == "b" and msg["t"] == "ping"
    for _ in range(100):
        net.run(CFG.period)
        if net.nodes["a"].stats["suspected"] or net.nodes["c"].stats["suspected"]:
            break
    net.drop = lambda src, dst, msg: False
    net.run(CFG.period * 3)
    assert net.nodes["b"].stats["refuted"] >= 1 and net.nodes["b"].incarnation >= 1
    for n in "ac":
        assert net.state(n, "b") == (State.ALIVE, net.nodes["b"].incarnation)
        assert net.kinds(n, "b") == ["join"]  # a refuted suspicion is no event


def test_dead_members_are_not_probed_and_are_forgotten() -> None:
    cfg = GossipConfig(dead_retention=5.0, reconnect_every=10**6)
    net = Net(["a", "b", "c"], cfg)
    net.start()
    net.down.add("c")
    net.run(suspicion_remaining(cfg, 3, 0) + cfg.period * 4)
    assert net.state("a", "c") == (State.FAILED, 0)
    net.sent.clear()
    net.run(3.0)
    assert not [1 for _, dst, m in net.sent if dst == addr("c") and m["t"] in ("ping", "ping_req")]
    assert net.state("a", "c") == (State.FAILED, 0)  # still listed
    net.run(3.0)
    assert net.state("a", "c") is None and net.state("b", "c") is None


def test_failed_member_gets_reconnect_pings_that_bring_it_back() -> None:
    net = Net(["a", "b", "c"])
    net.start()
    net.drop = lambda src, dst, msg: "c" in (src, dst)  # c cut off both ways
    net.run(suspicion_remaining(CFG, 3, 0) + CFG.period * 5)
    assert net.state("a", "c")[0] is State.FAILED  # type: ignore[index]
    assert net.state("c", "a")[0] is State.FAILED  # type: ignore[index]
    net.drop = lambda src, dst, msg: False
    net.run(CFG.period * CFG.reconnect_every * 4)
    for x, y in [("a", "c"), ("b", "c"), ("c", "a"), ("c", "b")]:
        assert net.state(x, y)[0] is State.ALIVE, (x, y, net.state(x, y))  # type: ignore[index]
        assert net.kinds(x, y)[-2:] == ["fail", "join"]


# -- refutation and precedence -------------------------------------------------------------------------
@pytest.mark.parametrize("held,incoming,expect", [
    (("alive", 1), ("suspect", 1), ("suspect", 1)),     # suspect(i) beats alive(j) iff i >= j
    (("alive", 2), ("suspect", 1), ("alive", 2)),
    (("suspect", 1), ("alive", 1), ("suspect", 1)),     # alive(i) beats suspect(j) iff i > j
    (("suspect", 1), ("alive", 2), ("alive", 2)),
    (("alive", 3), ("failed", 3), ("suspect", 3)),      # a failure we cannot confirm: suspicion first
    (("suspect", 3), ("failed", 3), ("failed", 3)),     # failed beats suspect at the same incarnation
    (("suspect", 3), ("left", 3), ("left", 3)),
    (("alive", 3), ("left", 3), ("left", 3)),
    (("alive", 4), ("left", 3), ("alive", 4)),
    (("failed", 3), ("alive", 3), ("failed", 3)),       # no comeback without a higher incarnation
    (("failed", 3), ("alive", 4), ("alive", 4)),
    (("left", 3), ("suspect", 3), ("left", 3)),
    (("failed", 3), ("left", 3), ("left", 3)),
    (("left", 3), ("failed", 3), ("left", 3)),
])
def test_precedence(held: tuple[str, int], incoming: tuple[str, int], expect: tuple[str, int]) -> None:
    s = Swim("a", addr("a"), CFG, random.Random(1), 0.0)
    s.join([], 0.0)
    s.receive("z:1", {"t": "join_ack", "from": "z", "inc": 0, "you": 0,
                      "m": [[held[0], "b", addr("b"), held[1]]]}, 0.0)
    s.receive("z:1", gossip_msg("z", [[incoming[0], "b", addr("b"), incoming[1]]]), 0.0)
    got = next(m for m in s.members(0.0) if m.node_id == "b")
    assert (got.state.value, got.incarnation) == expect


@pytest.mark.parametrize("rumour", ["suspect", "failed", "left"])
def test_member_refutes_any_rumour_of_its_death(rumour: str) -> None:
    s = Swim("b", addr("b"), CFG, random.Random(1), 0.0, incarnation=2)
    s.join([], 0.0)
    s.receive(addr("a"), gossip_msg("a", [[rumour, "b", addr("b"), 2]]), 0.0)
    assert s.incarnation == 3 and s.state is State.ALIVE
    out = s.take_outgoing()
    assert out and out[0][0] == addr("a")  # told the rumour's source directly
    assert ["alive", "b", addr("b"), 3] in out[0][1]["u"]
    s.receive(addr("a"), gossip_msg("a", [[rumour, "b", addr("b"), 1]]), 0.0)  # old news: ignored
    assert s.incarnation == 3


def test_header_of_a_known_sender_is_an_alive_claim_but_unknown_senders_are_not_learnt() -> None:
    s = Swim("a", addr("a"), CFG, random.Random(1), 0.0)
    s.join([], 0.0)
    s.receive("z:1", {"t": "join_ack", "from": "z", "inc": 0, "you": 0,
                      "m": [["failed", "b", addr("b"), 2]]}, 0.0)
    s.receive(addr("b"), {"t": "ping", "from": "b", "inc": 2, "seq": 1, "to": "a"}, 0.0)
    assert s.take_outgoing()[0][1]["u"][0] == ["failed", "b", addr("b"), 2]  # the ack tells b its fate
    s.receive(addr("b"), {"t": "ping", "from": "b", "inc": 3, "seq": 2, "to": "a"}, 0.0)
    assert [(m.state, m.incarnation) for m in s.members(0.0) if m.node_id == "b"] == [(State.ALIVE, 3)]
    assert [e.kind for e in s.take_events()] == ["join"]
    s.receive(addr("x"), {"t": "ping", "from": "x", "inc": 0, "seq": 3, "to": "a"}, 0.0)
    assert s.take_outgoing()[-1][1]["t"] == "ack"
    assert "x" not in {m.node_id for m in s.members(0.0)}


# -- leave and restart ---------------------------------------------------------------------------------
def test_leave_is_recorded_as_left_never_failed() -> None:
    cfg = GossipConfig(dead_retention=4.0)
    net = Net(["a", "b", "c", "d", "e"], cfg)
    net.start()
    net.run(cfg.period * 5)
    net.nodes["e"].leave(net.now)
    net.pump()
    assert net.nodes["e"].state is State.LEFT and net.nodes["e"].incarnation == 1
    assert "e" not in {m.node_id for m in net.nodes["e"].alive()}
    net.run(cfg.period * 3)
    net.down.add("e")  # the process exits after lingering
    net.run(2.0)  # long enough for anyone who had missed the news to suspect and fail e
    for n in "abcd":
        assert net.state(n, "e") == (State.LEFT, 1)
        assert net.kinds(n, "e") == ["join", "leave"]
        assert "e" not in {m.node_id for m in net.nodes[n].alive()}
    net.run(cfg.dead_retention)
    assert all(net.state(n, "e") is None for n in "abcd")


def test_restarted_member_comes_back_alive_everywhere() -> None:
    net = Net(["a", "b", "c", "d"])
    net.start()
    net.down.add("d")
    net.run(suspicion_remaining(CFG, 4, 0) + CFG.period * 5)
    assert all(net.state(n, "d") == (State.FAILED, 0) for n in "abc")
    fresh = net.add("d", seed=99)  # same id and address, incarnation 0 again
    fresh.join([addr("b")], net.now)
    net.pump()
    net.run(CFG.period * 10)
    assert fresh.incarnation >= 1
    for n in "abc":
        assert net.state(n, "d") == (State.ALIVE, fresh.incarnation)
        assert net.kinds(n, "d")[-2:] == ["fail", "join"]
    assert sorted(m.node_id for m in fresh.alive()) == ["a", "b", "c", "d"]


def test_member_that_left_can_come_back() -> None:
    net = Net(["a", "b", "c"])
    net.start()
    net.run(CFG.period * 5)
    net.nodes["c"].leave(net.now)
    net.pump()
    net.down.add("c")
    net.run(CFG.period * 3)
    assert net.state("a", "c") == (State.LEFT, 1)
    fresh = net.add("c", seed=7)
    fresh.join([addr("a")], net.now)
    net.pump()
    net.run(CFG.period * 5)
    assert fresh.incarnation == 2
    assert net.state("a", "c") == (State.ALIVE, 2) and net.state("b", "c") == (State.ALIVE, 2)
    assert net.kinds("b", "c")[-2:] == ["leave", "join"]


# -- dissemination -------------------------------------------------------------------------------------
def test_piggyback_limits_and_retransmit_count() -> None:
    cfg = GossipConfig(piggyback_max=5)
    s = Swim("a", addr("a"), cfg, random.Random(1), 0.0)
    s.join([], 0.0)
    news = [["alive", f"m{i}", f"10.5.0.{i + 1}:1", 0] for i in range(20)]
    s.receive("z:1", gossip_msg("z", news), 0.0)
    counts: dict[str, int] = {}
    for k in range(400):
        s.receive("y:1", {"t": "ping", "from": "y", "inc": 0, "seq": k, "to": "a"}, 0.0)
        for _, msg in s.take_outgoing():
            u = msg.get("u", [])
            assert len(u) <= cfg.piggyback_max
            for upd in u:
                counts[upd[1]] = counts.get(upd[1], 0) + 1
    limit = retransmit_limit(cfg, 21)
    assert counts == {f"m{i}": limit for i in range(20)}


def test_outgoing_messages_are_plain_msgpack() -> None:
    net = Net(["a", "b", "c"])
    net.start()
    net.down.add("c")
    net.run(3.0)
    kinds = {m["t"] for _, _, m in net.sent}
    assert {"join", "join_ack", "ping", "ack", "ping_req", "gossip"} <= kinds
    for _, _, m in net.sent:
        assert msgpack.unpackb(msgpack.packb(m, use_bin_type=True), raw=False) == m


# -- schema --------------------------------------------------------------------------------------------
BAD: list[Any] = [
    None, 0, -1, 2**70, "ping", b"ping", [], [1, 2], {}, {"t": 1},
    {"t": "ping"}, {"t": "ping", "from": "x", "inc": 0},                          # no seq/to
    {"t": "ping", "from": "x", "inc": -1, "seq": 1, "to": "a"},
    {"t": "ping", "from": "x", "inc": 2**64, "seq": 1, "to": "a"},
    {"t": "ping", "from": "x", "inc": True, "seq": 1, "to": "a"},
    {"t": "ping", "from": "x", "inc": 1.5, "seq": 1, "to": "a"},
    {"t": "ping", "from": "", "inc": 0, "seq": 1, "to": "a"},
    {"t": "ping", "from": "x" * 1000, "inc": 0, "seq": 1, "to": "a"},
    {"t": "ping", "from": b"x", "inc": 0, "seq": 1, "to": "a"},
    {"t": "ping", "from": "x", "inc": 0, "seq": [1], "to": "a"},
    {"t": "nope", "from": "x", "inc": 0},
    {"t": "ack", "from": "x", "inc": 0, "seq": 1},
    {"t": "ping_req", "from": "x", "inc": 0, "seq": 1, "target": "b", "taddr": "nocolon"},
    {"t": "ping_req", "from": "x", "inc": 0, "seq": 1, "target": "b", "taddr": "h:²"},
    {"t": "gossip", "from": "x", "inc": 0, "u": "alive"},
    {"t": "gossip", "from": "x", "inc": 0, "u": [["alive", "b", "h:1"]]},
    {"t": "gossip", "from": "x", "inc": 0, "u": [["zombie", "b", "h:1", 0]]},
    {"t": "gossip", "from": "x", "inc": 0, "u": [["alive", "b", "h:1", -3]]},
    {"t": "gossip", "from": "x", "inc": 0, "u": [["alive", "b", "h:1", 0, 5]]},
    {"t": "gossip", "from": "x", "inc": 0, "u": [[["alive"], "b", "h:1", 0]]},
    {"t": "gossip", "from": "x", "inc": 0, "u": [{"alive": 1}]},
    {"t": "gossip", "from": "x", "inc": 0, "u": [["alive", "b", "h:1", 0]] * 65},
    {"t": "gossip", "from": "x", "inc": 0, "chk": 7},
    {"t": "join", "from": "x", "inc": 0},
    {"t": "join_ack", "from": "x", "inc": 0, "you": 0},
    {"t": "join_ack", "from": "x", "inc": 0, "you": 0, "m": [["alive", "b", "h:1", 0]] * 1025},
    {"t": "sync", "from": "x", "inc": 0, "m": [], "r": "yes"},
]


def test_malformed_messages_are_counted_and_change_nothing() -> None:
    s = Swim("a", addr("a"), CFG, random.Random(1), 0.0)
    s.join([], 0.0)
    for i, msg in enumerate(BAD):
        s.receive("x:1", msg, 0.0)
        assert s.stats["schema"] == i + 1, msg
    assert s.stats["internal_error"] == 0
    assert [m.node_id for m in s.members(0.0)] == ["a"] and s.take_outgoing() == [] and s.take_events() == []


scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**64), max_value=2**70),
                    st.floats(allow_nan=True), st.text(max_size=12), st.binary(max_size=8))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), inner,
                                                 max_size=5)), max_leaves=15)
names = st.sampled_from(["a", "b", "c", "x"])
addrs = st.one_of(st.sampled_from([addr("a"), addr("b"), "h:1", "h:99999"]), st.text(max_size=10))
ints = st.one_of(st.integers(min_value=0, max_value=5), st.just(MAX_INT), st.integers())
update = st.one_of(st.tuples(st.sampled_from(["alive", "suspect", "failed", "left", "x"]), names, addrs, ints)
                   .map(list), values)
shaped = st.fixed_dictionaries(
    {"t": st.sampled_from(["ping", "ack", "ping_req", "gossip", "join", "join_ack", "sync", "x"]),
     "from": st.one_of(names, values), "inc": ints},
    optional={"seq": ints, "to": names, "of": names, "target": names, "taddr": addrs, "addr": addrs,
              "you": ints, "r": st.one_of(st.booleans(), values), "chk": st.one_of(names, values),
              "u": st.one_of(st.lists(update, max_size=4), values), "m": st.one_of(st.lists(update, max_size=4),
                                                                                   values)})


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(msgs=st.lists(st.one_of(values, shaped), min_size=1, max_size=6), dt=st.floats(0, 2))
def test_receive_never_raises(msgs: list[Any], dt: float) -> None:
    net = Net(["a", "b", "c"])
    net.start()
    a = net.nodes["a"]
    for msg in msgs:
        a.receive("h:1", msg, net.now)
        net.pump()
    net.run(dt + 0.1, step=0.05)
    assert a.stats["internal_error"] == 0
    assert a.state is State.ALIVE and {m.node_id for m in a.members(net.now)} >= {"a"}
    # whatever a was fed, what it says is still well-formed to its peers
    assert net.nodes["b"].stats["schema"] == 0 and net.nodes["c"].stats["schema"] == 0
    assert all(src != "a" or isinstance(msgpack.packb(msg), bytes) for src, _, msg in net.sent)


def test_incarnation_ceiling_is_not_a_poison_pill() -> None:
    net = Net(["a", "b"])
    net.start()
    a = net.nodes["a"]
    a.receive(addr("b"), gossip_msg("b", [["suspect", "a", addr("a"), MAX_INT - 1]]), net.now)
    assert a.incarnation == MAX_INT  # refuted, at the ceiling
    a.receive(addr("b"), gossip_msg("b", [["failed", "a", addr("a"), MAX_INT]]), net.now)
    assert a.incarnation == MAX_INT and a.state is State.ALIVE
    net.pump()
    net.run(CFG.period * 5)
    assert net.nodes["b"].stats["schema"] == 0
    assert net.state("b", "a") == (State.ALIVE, MAX_INT)

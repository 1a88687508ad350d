"""A deterministic discrete-event network running many :class:`gossip.swim.Swim` members in one process.

Everything (message loss, delays, per-member randomness) comes from seeded ``random.Random``
instances and a heap of timed events, so a run is reproducible from its seed. The network drops each
datagram independently with probability ``loss``, delays it uniformly in ``delay``, and never
delivers across a partition or to a crashed member. Crashed members stop sending, receiving and
ticking; a restart is a brand-new ``Swim`` (fresh state, incarnation 0) with the same id and address.

Metrics kept while it runs: when each live member first marked each crashed member failed, false
failure declarations (a member that is up, has not left and is not cut off from the observer by a
partition, declared failed by anyone -- a late verdict on a restarted member's previous life does not
count), messages sent per member, and whether the views agree.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from gossip.config import GossipConfig
from gossip.swim import SNAPSHOT_CHUNK, Swim, suspicion_timeout
from gossip.types import MemberEvent

_DELIVER, _TICK, _CALL = 0, 1, 2


@dataclass
class SimMember:
    index: int
    node_id: str
    addr: str
    swim: Swim
    crashed: bool = False
    left: bool = False        # left voluntarily (still up while it lingers)
    gone: bool = False        # process ended after a leave
    gen: int = 0              # restarts so far; stale timers carry an older gen
    old_life: int = -1        # highest incarnation of its previous lives: verdicts on those are not false
    scheduled: float = math.inf
    sent: int = 0

    @property
    def up(self) -> bool:
        return not (self.crashed or self.gone)


@dataclass
class FalseFailure:
    at: float
    observer: str
    target: str
    incarnation: int  # (target, incarnation) names one false verdict, however many members reached it


@dataclass
class Sim:
    """``n`` members ``n000``.. at ``10.0.x.y:7946``; call :meth:`start`, then run and inject faults."""

    n: int
    config: GossipConfig = field(default_factory=GossipConfig)
    seed: int = 0
    loss: float = 0.0
    delay: tuple[float, float] = (0.0005, 0.004)
    keep_events: bool = False

    def __post_init__(self) -> None:
        self.rng = random.Random(f"net:{self.seed}")
        self.now = 0.0
        self._heap: list[tuple[float, int, int, Any, Any, Any]] = []
        self._seq = itertools.count()
        self.members: list[SimMember] = []
        self.by_id: dict[str, SimMember] = {}
        self.by_addr: dict[str, SimMember] = {}
        self.group: dict[str, int] = {}           # partition group per member id; empty = no partition
        self.crash_time: dict[str, float] = {}
        self.detected: dict[tuple[str, str], float] = {}   # (crashed, observer) -> seconds after crash
        self.false_failures: list[FalseFailure] = []
        self.event_counts: Counter[str] = Counter()
        self.events: list[tuple[str, MemberEvent]] = []     # (observer, event) when keep_events
        self.dropped = 0
        self._mark_time = 0.0
        self._mark_sent = 0
        for i in range(self.n):
            nid = f"n{i:03d}" if self.n <= 1000 else f"n{i:05d}"
            addr = f"10.0.{i // 250}.{i % 250 + 1}:7946"
            m = SimMember(i, nid, addr, self._new_swim(nid, addr, 0))
            self.members.append(m)
            self.by_id[nid] = m
            self.by_addr[addr] = m

    def _new_swim(self, nid: str, addr: str, gen: int) -> Swim:
        return Swim(nid, addr, self.config, random.Random(f"{self.seed}:{nid}:{gen}"), self.now)

    # -- setup ---------------------------------------------------------------------------------------
    def start(self, bootstrap: str = "snapshot", spread: float | None = None) -> None:
        """Bring everyone up. ``snapshot``: all members already know each other (as if each had joined
        through the first one), so long runs start in steady state. ``join``: member 0 starts alone
        and the others send real ``join`` messages to it at random times within ``spread`` seconds."""
        first = self.members[0]
        first.swim.join([], self.now)
        if bootstrap == "snapshot":
            entries = [["alive", m.node_id, m.addr, 0] for m in self.members]
            chunks = [entries[i:i + SNAPSHOT_CHUNK] for i in range(0, len(entries), SNAPSHOT_CHUNK)]
            for m in self.members:
                intro = self.members[(m.index + 1) % self.n] if m.index == 0 else first
                if m.index:
                    m.swim.join([first.addr], self.now)
                for chunk in chunks:
                    m.swim.receive(intro.addr, {"t": "join_ack", "from": intro.node_id, "inc": 0, "you": 0,
                                                "m": chunk}, self.now)
                m.swim.take_outgoing()
                m.swim.take_events()
                self._reschedule(m)
        elif bootstrap == "join":
            self._reschedule(first)
            window = self.config.period if spread is None else spread
            for m in self.members[1:]:
                self.at(self.now + self.rng.uniform(0, window), functools.partial(self._join, m, [first.addr]))
        else:
            raise ValueError(f"unknown bootstrap {bootstrap!r}")

    def _join(self, m: SimMember, introducers: list[str]) -> None:
        m.swim.join(introducers, self.now)
        self._after(m)

    # -- running -------------------------------------------------------------------------------------
    def at(self, t: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` at simulated time ``t`` (fault injection at precise times)."""
        heapq.heappush(self._heap, (t, next(self._seq), _CALL, fn, None, None))

    def run_until(self, t: float) -> None:
        heap = self._heap
        pop = heapq.heappop
        by_addr = self.by_addr
        members = self.members
        while heap and heap[0][0] <= t:
            when, _, kind, a, b, c = pop(heap)
            self.now = when
            if kind == _DELIVER:
                m = by_addr.get(a)
                if m is None or m.crashed or m.gone:
                    continue
                m.swim.receive(b, c, when)
                self._after(m)
            elif kind == _TICK:
                m = members[a]
                if m.crashed or m.gone or m.gen != b or m.scheduled != when:
                    continue
                m.scheduled = math.inf
                m.swim.tick(when)
                self._after(m)
            else:
                a()
        self.now = max(self.now, t)

    def run_periods(self, periods: float) -> None:
        self.run_until(self.now + periods * self.config.period)

    def _after(self, m: SimMember) -> None:
        """Ship what ``m`` queued, record its events and re-arm its timer."""
        swim = m.swim
        out = swim.take_outgoing()
        if out:
            now = self.now
            rng = self.rng
            loss = self.loss
            lo, hi = self.delay
            group = self.group
            src = m.addr
            m.sent += len(out)
            push = heapq.heappush
            heap = self._heap
            seq = self._seq
            for dest, msg in out:
                if loss and rng.random() < loss:
                    self.dropped += 1
                    continue
                if group:
                    d = self.by_addr.get(dest)
                    if d is not None and group.get(d.node_id, -1) != group.get(m.node_id, -1):
                        self.dropped += 1
                        continue
                push(heap, (now + rng.uniform(lo, hi), next(seq), _DELIVER, dest, src, msg))
        events = swim.take_events()
        if events:
            self._record(m, events)
        self._reschedule(m)

    def _reschedule(self, m: SimMember) -> None:
        d = m.swim.next_deadline()
        if d < m.scheduled:
            d = max(d, self.now)
            m.scheduled = d
            heapq.heappush(self._heap, (d, next(self._seq), _TICK, m.index, m.gen, None))

    def _record(self, m: SimMember, events: list[MemberEvent]) -> None:
        for ev in events:
            self.event_counts[ev.kind] += 1
            if self.keep_events:
                self.events.append((m.node_id, ev))
            if ev.kind != "fail":
                continue
            target = self.by_id.get(ev.node_id)
            if target is None:
                continue
            if target.crashed:
                key = (target.node_id, m.node_id)
                if key not in self.detected:
                    self.detected[key] = ev.at - self.crash_time[target.node_id]
            elif not (target.left or target.gone) and ev.incarnation > target.old_life and \
                    self.group.get(target.node_id, -1) == self.group.get(m.node_id, -1):
                self.false_failures.append(FalseFailure(ev.at, m.node_id, target.node_id, ev.incarnation))

    # -- faults --------------------------------------------------------------------------------------
    def crash(self, ids: Iterable[str]) -> None:
        for nid in ids:
            m = self.by_id[nid]
            m.crashed = True
            self.crash_time[nid] = self.now
            for key in [k for k in self.detected if k[0] == nid]:
                del self.detected[key]

    def restart(self, ids: Iterable[str], introducers: list[str] | None = None) -> None:
        """A fresh process (incarnation 0) with the same id and address joins again, through
        ``introducers`` or else one random member that is up and not restarting with it."""
        batch = list(dict.fromkeys(ids))  # ordered: a set's order changes with the hash seed
        if introducers is None:
            candidates = [x.addr for x in self.members if x.up and not x.left and x.node_id not in batch]
            introducers = [self.rng.choice(candidates)] if candidates else []
        for nid in batch:
            m = self.by_id[nid]
            m.old_life = max(m.old_life, m.swim.incarnation)
            m.gen += 1
            m.crashed = m.gone = m.left = False
            m.scheduled = math.inf
            m.swim = self._new_swim(nid, m.addr, m.gen)
            m.swim.join(introducers, self.now)
            self._after(m)

    def leave(self, ids: Iterable[str], linger: float = 0.6) -> None:
        """Graceful leave: the member announces it, keeps answering for ``linger`` s, then exits."""
        for nid in ids:
            m = self.by_id[nid]
            m.left = True
            m.swim.leave(self.now)
            self._after(m)
            self.at(self.now + linger, functools.partial(setattr, m, "gone", True))

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Members in different groups cannot reach each other; unlisted members form one more group."""
        self.group = {nid: i for i, g in enumerate(groups) for nid in g}

    def heal(self) -> None:
        self.group = {}

    # -- metrics -------------------------------------------------------------------------------------
    def live(self) -> list[SimMember]:
        """Members that are up and have not left."""
        return [m for m in self.members if m.up and not m.left]

    def mark(self) -> None:
        """Start a new window for :meth:`messages_per_member_period`."""
        self._mark_time = self.now
        self._mark_sent = sum(m.sent for m in self.members)

    def messages_per_member_period(self) -> float:
        periods = (self.now - self._mark_time) / self.config.period
        live = len(self.live())
        sent = sum(m.sent for m in self.members) - self._mark_sent
        return sent / (live * periods) if periods > 0 and live else 0.0

    def detection_times(self) -> list[float]:
        """Seconds from crash to failure, one per (crashed member, live observer) pair detected."""
        live = {m.node_id for m in self.live()}
        return sorted(t for (_, obs), t in self.detected.items() if obs in live)

    def undetected(self) -> list[tuple[str, str]]:
        """(crashed, live observer) pairs where the observer has not yet declared the crash."""
        crashed = [m.node_id for m in self.members if m.crashed]
        return [(c, o.node_id) for c in crashed for o in self.live() if (c, o.node_id) not in self.detected]

    def views_agree(self) -> bool:
        """All live members list the same set of alive/suspect members."""
        views = {frozenset(x.node_id for x in m.swim.alive()) for m in self.live()}
        return len(views) <= 1

    def converged(self) -> bool:
        """Every live member sees exactly the live members as alive/suspect."""
        want = frozenset(m.node_id for m in self.live())
        return all(frozenset(x.node_id for x in m.swim.alive()) == want for m in self.live())

    def view_errors(self) -> int:
        """(observer, member) pairs where the observer's alive-or-not differs from the truth."""
        want = frozenset(m.node_id for m in self.live())
        return sum(len(frozenset(x.node_id for x in m.swim.alive()) ^ want) for m in self.live())


def detection_bound(config: GossipConfig, n: int, crashed: int = 1, eps: float = 1e-6) -> float:
    """Seconds within which every live member declares every one of ``crashed`` simultaneous crashes
    failed, except with probability about ``eps`` (no message loss, suspicion on)::

        bound = period * (k + 1) + suspicion_timeout(n) + period * (ceil(log2 n) + 2)

    * ``k`` periods until each crashed member is pinged by at least one live member: each of the
      ``L = n - crashed`` live members walks a shuffled round of ``M = n - 1`` members, so it misses a
      given crashed member in the next ``k`` periods with probability about ``1 - k/M``; the union
      bound over the crashed gives ``crashed * (1 - k/M) ** L <= eps``;
    * ``+ 1`` period: that probe (direct, indirect, direct retry) runs to the end of its period;
    * ``suspicion_timeout(n)`` (the *confirmed* timeout ``lo``), which every member starts when the
      suspicion reaches it: the members asked to check the suspect confirm it within one period;
    * ``ceil(log2 n)`` periods for the suspicion to reach everyone (push gossip at least doubles its
      audience each period), plus 2: one for the checkers' verdict, one of slack for piggyback
      queueing and tick granularity.

    With suspicion off, drop the suspicion term. The expected time for one crash is much lower:
    about ``period * (1 / (1 - 1/e) + 1) + suspicion_timeout(n)`` plus a period or two of gossip;
    at N = 100 with 33 crashes the bound is 6.45 s and the simulation's worst case about 3 s.
    """
    live = max(1, n - crashed)
    rounds = max(1, n - 1)
    k = 0
    while k < rounds and crashed * (1 - k / rounds) ** live > eps:
        k += 1
    susp = suspicion_timeout(config, n) if config.suspicion else 0.0
    return config.period * (k + 1) + susp + config.period * (math.ceil(math.log2(max(n, 2))) + 2)

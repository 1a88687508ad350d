"""A deterministic, seeded network of :class:`raft.core.RaftCore` nodes, checking Raft's invariants as it runs.

:class:`Network` is the reusable part (a whole-system simulator can put other endpoints on it): one
``random.Random(seed)``, an event heap ordered by ``(time, seq)``, per-node clocks with a fixed skew
and drift, and a wire that delays each message uniformly, drops it with ``p_loss``, duplicates it with
``p_dup`` (so delays reorder), and never delivers across a partition (checked at send and at delivery).

:class:`RaftSim` runs the same loop as :mod:`raft.driver` -- step/tick, then for each Ready: save to
a :class:`MemoryStorage`, send, apply, advance -- and can crash a node (its core is dropped, its
storage kept: exactly what ``save`` made durable) either at once or between its next ``ready()`` and
``save()`` (that Ready is lost, with the messages it would have sent: the fsync-before-send point),
then restart it from storage. Every message goes through msgpack and :func:`raft.messages.from_wire`.

Checked as it runs (:class:`InvariantViolation` at once): election safety (one leader per term, ever);
state machine safety (every node applies, in order, a prefix of one global sequence; snapshots carry
the same state); leader completeness (a new leader of term T holds every entry committed in a term
before T); durability (an entry, when a leader commits it, is in the storage of a quorum, so no
crash can lose it). :meth:`RaftSim.check_logs` checks log matching across all live nodes, and
:meth:`RaftSim.check_converged` that after healing every acknowledged proposal is applied everywhere.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import itertools
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgpack

from raft.config import RaftConfig
from raft.core import LEADER, NotLeader, RaftCore, Ready
from raft.messages import Entry, Message, from_wire
from raft.storage import MemoryStorage


class InvariantViolation(AssertionError):
    pass


class Network:
    """Time, events and an unreliable wire between named endpoints."""

    def __init__(self, seed: int = 0, delay: tuple[float, float] = (0.001, 0.01), p_loss: float = 0.0,
                 p_dup: float = 0.0, skew: float = 0.0, drift: float = 0.0) -> None:
        self.rng = random.Random(f"net:{seed}")
        self.delay, self.p_loss, self.p_dup, self.skew, self.drift = delay, p_loss, p_dup, skew, drift
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._clocks: dict[str, tuple[float, float]] = {}  # name -> (offset, rate) of its local clock
        self.groups: dict[str, int] = {}
        self.sent = self.dropped = self.duplicated = 0

    def add(self, name: str) -> None:
        self._clocks[name] = (self.rng.uniform(0, self.skew), 1 + self.rng.uniform(-self.drift, self.drift))

    def clock(self, name: str) -> float:
        """``name``'s local time now."""
        offset, rate = self._clocks[name]
        return offset + rate * self.now

    def global_time(self, name: str, local: float) -> float:
        offset, rate = self._clocks[name]
        return (local - offset) / rate

    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (max(t, self.now), next(self._seq), fn))

    def can_talk(self, a: str, b: str) -> bool:
        return self.groups.get(a, -1) == self.groups.get(b, -1)

    def send(self, src: str, dst: str, deliver: Callable[[], None]) -> None:
        """Deliver later (``deliver()``), maybe twice, maybe never."""
        self.sent += 1
        if not self.can_talk(src, dst) or (self.p_loss and self.rng.random() < self.p_loss):
            self.dropped += 1
            return
        copies = 2 if self.p_dup and self.rng.random() < self.p_dup else 1
        self.duplicated += copies - 1
        for _ in range(copies):
            self.at(self.now + self.rng.uniform(*self.delay), functools.partial(self._arrive, src, dst, deliver))

    def _arrive(self, src: str, dst: str, deliver: Callable[[], None]) -> None:
        if self.can_talk(src, dst):
            deliver()
        else:
            self.dropped += 1

    def run_until(self, t: float) -> None:
        while self._heap and self._heap[0][0] <= t:
            when, _, fn = heapq.heappop(self._heap)
            self.now = when
            fn()
        self.now = max(self.now, t)

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Endpoints in different groups cannot talk; unlisted ones form one more group."""
        self.groups = {name: i for i, g in enumerate(groups) for name in g}

    def heal(self) -> None:
        self.groups = {}


class HashChain:
    """The simulated state machine: the applied index and a running digest of every entry applied."""

    def __init__(self) -> None:
        self.index = 0
        self.digest = b""

    def apply(self, e: Entry) -> None:
        if e.index != self.index + 1:
            raise InvariantViolation(f"applied {e.index} after {self.index}")
        self.index = e.index
        self.digest = hashlib.blake2b(self.digest + msgpack.packb([e.index, e.term, e.data]), digest_size=16).digest()

    def snapshot(self) -> bytes:
        return msgpack.packb([self.index, self.digest])

    def restore(self, data: bytes) -> None:
        self.index, self.digest = msgpack.unpackb(data)


@dataclass
class SimNode:
    id: str
    storage: MemoryStorage = field(default_factory=MemoryStorage)
    core: RaftCore | None = None
    sm: HashChain = field(default_factory=HashChain)
    gen: int = 0                   # lives so far: a proposal is acknowledged only by the life that made it
    scheduled: float = math.inf    # the pending tick event (older ones are ignored)
    crash_on_ready: bool = False   # crash between the next ready() and its save()
    snap_index: int = 0
    leader_term: int = -1          # last term it was seen leading (leader completeness is checked once per term)
    seen_commit: int = 0           # its commit as of the last check, while leading


class RaftSim:
    def __init__(self, n: int = 3, seed: int = 0, config: RaftConfig | None = None, *,
                 delay: tuple[float, float] = (0.001, 0.01), p_loss: float = 0.0, p_dup: float = 0.0,
                 skew: float = 0.0, drift: float = 0.0, log_check_every: int = 500) -> None:
        self.seed = seed
        self.config = config or RaftConfig()
        self.net = Network(seed, delay, p_loss, p_dup, skew, drift)
        self.ids = [f"n{i}" for i in range(n)]
        self.quorum = n // 2 + 1
        self.nodes = {nid: SimNode(nid) for nid in self.ids}
        self.leaders: dict[int, str] = {}                    # term -> the one leader it ever had
        self.applied: dict[int, tuple[int, bytes, bytes]] = {}  # index -> (term, data, digest): the one sequence
        self.commit_term: dict[int, tuple[int, int]] = {}    # index -> (entry term, term it was first committed in)
        self.pending: dict[tuple[str, int, int], tuple[int, bytes]] = {}  # (node, gen, index) -> (term, data)
        self.acked: dict[bytes, int] = {}                    # proposal data -> index its leader applied it at
        self.lost = 0                                        # proposals whose index went to another entry
        self.mid_ready_crashes = 0
        self.events = 0
        self.log_check_every = log_check_every
        for nid in self.ids:
            self.net.add(nid)
            self._start(self.nodes[nid])

    # -- running -----------------------------------------------------------------------------------
    @property
    def now(self) -> float:
        return self.net.now

    def run_until(self, t: float) -> None:
        self.net.run_until(t)

    def run_for(self, seconds: float) -> None:
        self.net.run_until(self.net.now + seconds)

    def _start(self, node: SimNode) -> None:
        restored = node.storage.load()
        node.sm = HashChain()
        if restored.snapshot is not None:
            node.sm.restore(restored.snapshot.data)
            node.snap_index = restored.snapshot.index
        rng = random.Random(f"{self.seed}:{node.id}:{node.gen}")
        node.core = RaftCore(node.id, self.ids, self.config, rng, self.net.clock(node.id), restored)
        node.leader_term, node.seen_commit = -1, 0
        self._schedule(node)

    def _schedule(self, node: SimNode) -> None:
        assert node.core is not None
        # a hair late, so that the local clock has surely reached the deadline despite float rounding
        t = max(self.net.global_time(node.id, node.core.next_deadline()) + 1e-9, self.net.now)
        if t < node.scheduled:
            node.scheduled = t
            self.net.at(t, functools.partial(self._tick, node, node.gen, t))

    def _tick(self, node: SimNode, gen: int, t: float) -> None:
        if node.core is None or node.gen != gen or node.scheduled != t:
            return
        node.scheduled = math.inf
        node.core.tick(self.net.clock(node.id))
        self._after(node)

    def _deliver(self, dst: str, wire: bytes) -> None:
        node = self.nodes[dst]
        if node.core is None:
            return
        node.core.step(from_wire(msgpack.unpackb(wire)), self.net.clock(dst))
        self._after(node)

    def _after(self, node: SimNode) -> None:
        """What the driver does after any input: drain the Readies, then check."""
        core = node.core
        assert core is not None
        self.events += 1
        self._check_node(node)
        while core.has_ready():
            rd = core.ready()
            if node.crash_on_ready:  # the Ready dies with the process, unsaved and unsent
                self.mid_ready_crashes += 1
                self.crash(node.id)
                return
            node.storage.save(rd)
            for m in rd.messages:
                self._send(m)
            self._apply(node, rd)
            core.advance(rd)
            self._check_node(node)  # before compaction drops the entries just committed
            if core.applied - node.snap_index >= self.config.snapshot_every:
                snap = core.compact(core.applied, node.sm.snapshot())
                node.storage.compact(snap)
                node.snap_index = snap.index
        if self.log_check_every and self.events % self.log_check_every == 0:
            self.check_logs()
        self._schedule(node)

    def _send(self, m: Message) -> None:
        wire = msgpack.packb(m.to_wire())
        self.net.send(m.src, m.dst, functools.partial(self._deliver, m.dst, wire))

    def _apply(self, node: SimNode, rd: Ready) -> None:
        if rd.snapshot is not None:
            node.sm.restore(rd.snapshot.data)
            node.snap_index = rd.snapshot.index
            known = self.applied.get(node.sm.index)
            if known is not None and known[2] != node.sm.digest:
                raise InvariantViolation(f"{node.id}: snapshot at {node.sm.index} holds another state")
        for e in rd.committed:
            node.sm.apply(e)
            mine = (e.term, e.data, node.sm.digest)
            known = self.applied.setdefault(e.index, mine)
            if known != mine:
                raise InvariantViolation(f"{node.id} applied {e.index}/{e.term} where another node applied "
                                         f"{e.index}/{known[0]}")
            proposal = self.pending.pop((node.id, node.gen, e.index), None)
            if proposal is not None:
                if proposal == (e.term, e.data):
                    self.acked[e.data] = e.index
                else:
                    self.lost += 1

    def _check_node(self, node: SimNode) -> None:
        core = node.core
        if core is None or core.role is not LEADER:
            return
        if self.leaders.setdefault(core.term, node.id) != node.id:
            raise InvariantViolation(f"two leaders in term {core.term}: {self.leaders[core.term]} and {node.id}")
        if node.leader_term != core.term:  # newly elected: it must hold everything committed before its term
            node.leader_term, node.seen_commit = core.term, core.commit
            for index, (term, in_term) in self.commit_term.items():
                if in_term < core.term and index > core.log.snap_index and core.log.term(index) != term:
                    raise InvariantViolation(f"leader {node.id} of term {core.term} lacks entry {index}/{term} "
                                             f"committed in term {in_term}")
        for index in range(node.seen_commit + 1, core.commit + 1):
            t = core.log.term(index)
            assert t is not None
            known = self.commit_term.setdefault(index, (t, core.term))
            if known[0] != t:
                raise InvariantViolation(f"{node.id} committed {index}/{t}, already committed as {index}/{known[0]}")
            holders = [n.id for n in self.nodes.values() if self._stored(n.storage, index, t)]
            if len(holders) < self.quorum:
                raise InvariantViolation(f"{node.id} committed {index}/{t} stored only on {holders}")
        node.seen_commit = max(node.seen_commit, core.commit)

    @staticmethod
    def _stored(storage: MemoryStorage, index: int, term: int) -> bool:
        return (storage.snapshot is not None and storage.snapshot.index >= index) or storage.term_at(index) == term

    # -- clients and faults ------------------------------------------------------------------------
    def leader(self) -> str | None:
        """The live leader of the highest term, if any."""
        best = max((n for n in self.nodes.values() if n.core is not None and n.core.role is LEADER),
                   key=lambda n: n.core.term if n.core else 0, default=None)
        return best.id if best else None

    def propose(self, data: bytes) -> bool:
        """A client hands ``data`` to whoever leads; False if no one does (it retries later, as clients do)."""
        nid = self.leader()
        if nid is None:
            return False
        node = self.nodes[nid]
        assert node.core is not None
        try:
            index = node.core.propose(data, self.net.clock(nid))
        except NotLeader:
            return False
        self.pending[(nid, node.gen, index)] = (node.core.term, data)
        self._after(node)
        return True

    def crash(self, nid: str, mid_ready: bool = False) -> None:
        node = self.nodes[nid]
        if mid_ready and node.core is not None:
            node.crash_on_ready = True
            return
        node.core, node.crash_on_ready, node.scheduled = None, False, math.inf
        node.gen += 1

    def restart(self, nid: str) -> None:
        """Start a crashed node from its storage (a node still up just loses a pending mid-ready crash)."""
        node = self.nodes[nid]
        node.crash_on_ready = False
        if node.core is None:
            self._start(node)

    def core(self, nid: str) -> RaftCore:
        """``nid``'s core (it must be up)."""
        core = self.nodes[nid].core
        if core is None:
            raise KeyError(f"{nid} is down")
        return core

    def up(self) -> list[str]:
        return [nid for nid, n in self.nodes.items() if n.core is not None]

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        self.net.partition(groups)

    def heal(self) -> None:
        self.net.heal()

    # -- whole-cluster checks ----------------------------------------------------------------------
    def check_logs(self) -> None:
        """Log matching: two logs with an entry of the same index and term agree on everything before it."""
        cores = [n.core for n in self.nodes.values() if n.core is not None]
        for a, b in itertools.combinations(cores, 2):
            lo = max(a.log.snap_index, b.log.snap_index) + 1
            hi = min(a.log.last_index, b.log.last_index)
            same = next((i for i in range(hi, lo - 1, -1) if a.log.term(i) == b.log.term(i)), None)
            if same is not None and a.log.between(lo, same) != b.log.between(lo, same):
                raise InvariantViolation(f"{a.id} and {b.id} agree at {same} but differ before it")

    def check_converged(self) -> None:
        """After healing and a quiet period: one leader, everyone applied the same, every ack is in it."""
        self.check_logs()
        lead = self.leader()
        if lead is None:
            raise InvariantViolation("no leader after the quiet period")
        leader_core = self.nodes[lead].core
        assert leader_core is not None
        for n in self.nodes.values():
            if n.core is None:
                continue
            if n.sm.index != leader_core.commit:
                raise InvariantViolation(f"{n.id} applied {n.sm.index}, the leader committed {leader_core.commit}")
            if self.applied[n.sm.index][2] != n.sm.digest:
                raise InvariantViolation(f"{n.id}: state differs from the global sequence at {n.sm.index}")
        for data, index in self.acked.items():
            if self.applied.get(index, (0, b""))[1] != data or index > leader_core.commit:
                raise InvariantViolation(f"acknowledged proposal {data!r} at {index} lost")

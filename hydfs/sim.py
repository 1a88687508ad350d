"""A deterministic, seeded simulated network of HyDFS nodes and clients.

One event queue ordered by (time, sequence number); all randomness from one ``random.Random``.
It drops, duplicates and delays (so reorders) messages, crashes nodes (their :class:`MemoryStorage` survives, everything
else is lost) and restarts them, partitions the network, and plays the membership layer: after
``detect`` seconds every live node and client learns the new live set, each up to ``skew`` seconds
later than the next (views disagree for a while, as with gossip). A node cut off by a partition is
declared failed like a crashed one and learns that first (SWIM tells a member it is suspected
before it is declared failed; it never hears of it after everyone else has acted on it).
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from hydfs.client import ClientCore
from hydfs.context import CoreConfig
from hydfs.node_core import NodeCore
from hydfs.storage import MemoryStorage


@dataclass
class SimNode:
    node_id: str
    storage: MemoryStorage = field(default_factory=MemoryStorage)
    core: NodeCore | None = None

    @property
    def up(self) -> bool:
        return self.core is not None


class Sim:
    def __init__(self, node_ids: Iterable[str], seed: int = 0, *, drop: float = 0.0,
                 delay: tuple[float, float] = (0.001, 0.01), detect: float = 0.5, tick: float = 0.05,
                 config: CoreConfig | None = None, client_retry: float = 1.0, down: Iterable[str] = (),
                 skew: float = 0.0, flush_every: float = 1.0, dup: float = 0.0) -> None:
        self.rng = random.Random(seed)
        self.dup = dup  # chance that a message is delivered twice
        self.flush_every = flush_every
        self._next_flush = flush_every
        self.now = 0.0
        self.drop = drop
        self.delay = delay
        self.detect = detect
        self.skew = skew
        self._view_seq = 0
        self._applied: dict[str, int] = {}  # node -> newest view delivered
        self.tick_every = tick
        self.config = config or CoreConfig()
        self.client_retry = client_retry
        self.nodes: dict[str, SimNode] = {}
        self.clients: dict[str, ClientCore] = {}
        self.groups: list[set[str]] | None = None   # partition: who can talk to whom
        self.stats: Counter[str] = Counter()
        self.trace: list[tuple[float, str, str, dict[str, Any]]] | None = None
        self.hooks: list[Callable[[str, str, dict[str, Any]], bool]] = []  # return False to drop
        self.slow: dict[str, float] = {}   # node -> extra delay on every message to or from it
        self.lag: dict[str, float] = {}    # node -> extra delay before membership changes reach it
        self._q: list[tuple[float, int, str, Any]] = []
        self._seq = 0
        later = set(down)
        for n in node_ids:
            self.nodes[n] = SimNode(n)
            if n not in later:
                self._start_core(n)
        self._push(0.0, "members", None)
        self._push(self.tick_every, "tick", None)

    # ----------------------------------------------------------------- scenario controls

    def client(self, client_id: str) -> ClientCore:
        c = self.clients.get(client_id)
        if c is None:
            c = self.clients[client_id] = ClientCore(client_id, replicas=self.config.replicas,
                                                     retry=self.client_retry)
            c.on_membership(self.oracle(), self.now)
        return c

    def crash(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.core is not None:
            node.core = None
            self.stats["crashes"] += 1
            self._push(self.now + self.detect, "members", None)

    def power_off(self, node_id: str) -> None:
        """A machine crash under ``fsync = "interval"``: the node crashes and each of its logs loses a
        random part of what it wrote since the last periodic flush (``flush_every``)."""
        self.crash(node_id)
        self.nodes[node_id].storage.lose_unflushed(lambda lo, hi: self.rng.randint(lo, hi))
        self.stats["power_offs"] += 1

    def restart(self, node_id: str) -> None:
        """Start a crashed node again on its old storage (or a node that was never up: a join)."""
        node = self.nodes[node_id]
        if node.core is None:
            self._start_core(node_id)
            core = node.core
            assert core is not None
            core.on_membership(self.oracle() | {node_id}, self.now)
            self._applied[node_id] = self._view_seq
            self._flush(node_id)
            self.stats["restarts"] += 1
            self._push(self.now + self.detect, "members", None)

    def partition(self, *groups: Iterable[str]) -> None:
        """Cut each named group off from everyone else. The nodes not named stay connected and are
        the side the membership layer keeps alive (if every node is named: the largest group).
        Clients reach every node."""
        gs = [set(g) for g in groups]
        rest = set(self.nodes) - set().union(*gs)
        self.groups = [rest, *gs] if rest else gs
        self._push(self.now + self.detect, "members", None)

    def heal(self) -> None:
        self.groups = None
        self._push(self.now + self.detect, "members", None)

    def oracle(self) -> set[str]:
        """Who the membership layer would call alive right now: up, and on the kept side."""
        up = {n for n, node in self.nodes.items() if node.up}
        if self.groups:
            up &= self.groups[0] if len(self.groups[0] & up) else max(self.groups, key=lambda g: len(g & up))
        return up

    def up_nodes(self) -> list[str]:
        return sorted(n for n, node in self.nodes.items() if node.up)

    # ----------------------------------------------------------------- running

    def run_for(self, seconds: float) -> None:
        self.run_until(lambda: False, self.now + seconds)

    def run_until(self, cond: Callable[[], bool], deadline: float) -> bool:
        """Run events until ``cond()`` holds (checked after each event) or the clock passes ``deadline``."""
        while self._q:
            if cond():
                return True
            t, _, kind, payload = self._q[0]
            if t > deadline:
                break
            heapq.heappop(self._q)
            self.now = t
            self._event(kind, payload)
        self.now = max(self.now, deadline)
        return cond()

    def wait(self, client_id: str, op_id: int, timeout: float = 60.0) -> Any:
        c = self.clients[client_id]
        done = self.run_until(lambda: op_id in c.results, self.now + timeout)
        if not done:
            raise TimeoutError(f"{client_id} op {op_id} did not finish in {timeout}s of simulated time")
        return c.results.pop(op_id)

    # ----------------------------------------------------------------- internals

    def _start_core(self, node_id: str) -> None:
        node = self.nodes[node_id]
        node.core = NodeCore(node_id, node.storage, self.config, random.Random(self.rng.random()))

    def _push(self, t: float, kind: str, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._q, (t, self._seq, kind, payload))

    def _event(self, kind: str, payload: Any) -> None:
        if kind == "deliver":
            src, dest, msg = payload
            self._deliver(src, dest, msg)
        elif kind == "tick":
            for n, node in self.nodes.items():
                if node.core is not None:
                    node.core.tick(self.now)
                    self._flush(n)
            for cid, c in self.clients.items():
                c.tick(self.now)
                self._flush(cid)
            if self.now >= self._next_flush:
                self._next_flush = self.now + self.flush_every
                for node in self.nodes.values():
                    if node.core is not None:
                        node.storage.flush_data()
            self._push(self.now + self.tick_every, "tick", None)
        elif kind == "members":
            alive = frozenset(self.oracle())
            self._view_seq += 1
            for n in self.nodes:
                late = 0.0 if n not in alive or not self.skew else self.skew * self.rng.random()
                late += self.lag.get(n, 0.0) if n in alive else 0.0
                self._push(self.now + late, "view", (n, self._view_seq, alive))
            for c in self.clients.values():
                c.on_membership(alive, self.now)
        elif kind == "view":
            n, seq, alive = payload
            core = self.nodes[n].core
            if core is not None and seq > self._applied.get(n, 0):
                self._applied[n] = seq
                core.on_membership(alive, self.now)
                self._flush(n)

    def _deliver(self, src: str, dest: str, msg: dict[str, Any]) -> None:
        if dest in self.clients:
            c = self.clients[dest]
            c.receive(src, msg, self.now)
            self._flush(dest)
            return
        node = self.nodes.get(dest)
        if node is None or node.core is None:
            self.stats["to_dead"] += 1
            return
        node.core.receive(src, msg, self.now)
        self._flush(dest)

    def _flush(self, src: str) -> None:
        ep: NodeCore | ClientCore | None = self.clients.get(src) or self.nodes[src].core
        if ep is None:
            return
        if isinstance(ep, NodeCore):
            for event, _fields in ep.take_notes():
                self.stats[f"note.{event}"] += 1
        for dest, msg in ep.take_outgoing():
            self.stats["sent"] += 1
            if self.trace is not None:
                self.trace.append((self.now, src, dest, msg))
            if not all(h(src, dest, msg) for h in self.hooks):
                self.stats["hooked"] += 1
                continue
            if self.groups and src in self.nodes and dest in self.nodes and not any(
                    src in g and dest in g for g in self.groups):
                self.stats["cut"] += 1
                continue
            if self.drop and self.rng.random() < self.drop:
                self.stats["dropped"] += 1
                continue
            lo, hi = self.delay
            extra = self.slow.get(src, 0.0) + self.slow.get(dest, 0.0)
            self._push(self.now + extra + lo + (hi - lo) * self.rng.random(), "deliver", (src, dest, msg))
            if self.dup and self.rng.random() < self.dup:  # delivered twice, each copy with its own delay
                self.stats["duplicated"] += 1
                self._push(self.now + extra + lo + (hi - lo) * self.rng.random(), "deliver", (src, dest, msg))

    # ----------------------------------------------------------------- inspection

    def holders(self, name: str) -> list[str]:
        """Nodes (up or down) whose storage holds a live copy of ``name``."""
        out = []
        for n, node in sorted(self.nodes.items()):
            meta = node.storage.meta(name)
            if meta is not None and meta.created is not None:
                out.append(n)
        return out

    def log(self, node_id: str, name: str) -> list[list[Any]]:
        return [e.to_wire() for e in self.nodes[node_id].storage.entries(name)]

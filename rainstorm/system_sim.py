"""The whole system in one seeded, deterministic simulation (FoundationDB's way).

Every node runs the real cores of every layer: a SWIM member (:class:`gossip.swim.Swim`) with its
own membership view, a Raft core (:class:`raft.core.RaftCore`) on voters with the controller's state
machine (:class:`rainstorm.controller.Controller`) applied from its own committed log, the worker's
decisions (:class:`rainstorm.worker_core.WorkerCore`) and the stream tasks (:class:`Task`). The
controller's requests are the real commands (:func:`rainstorm.control.command`). Only the I/O is
simulated: one event heap, one ``random.Random(seed)``, every node with its own skewed, drifting
clock, and a network that delays (so reorders), drops and duplicates every message and does not
deliver across a partition, so a partition splits the nodes' gossip views and Raft quorums alike.

Faults: :class:`NodeDown` (SIGKILL of a node, its Redis too unless ``redis_kept``; it restarts
after ``down`` seconds from what it persisted: Raft's storage and, if kept, Redis), :class:`Pause`
(SIGSTOP: nothing on the node runs, messages to it wait, its clock runs on), :class:`RedisLoss`
(the node's Redis restarts empty under a live node) and :class:`Cut` (a partition of ``group`` from
the rest, healed at ``until``).

HyDFS runs twice here. The stream tasks' logs, sink and source are one linearizable
:class:`MemoryLogStore` that every node reaches, even across a partition. Beside them every node runs
the real HyDFS core (:class:`hydfs.node_core.NodeCore`) on its own storage, fed with the live set its
controller committed (``hydfs_view="committed"``, what nodes do: rainstorm/committed_view.py) or with
its own gossip view (``"gossip"``, the wiring before, which a partition turns into lost appends), and
HyDFS clients on the nodes (:class:`HydfsWriter`) append to ``hydfs_files``, fenced or not, on both
sides of a cut. :meth:`SystemSim.hydfs_check` then reads every file back and lists each acknowledged
append that is missing or doubled, and each fenced append ordered after a higher epoch's.

After a run, :meth:`SystemSim.check` lists every violated invariant: the exactly-once log
invariants of the stream simulator, no (task, epoch) ever run by two instances, at most one Raft
leader per term, every voter's applied commands a prefix of one sequence, and (``finished``) the
job ended.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from gossip.config import GossipConfig
from gossip.swim import Swim
from hydfs.client import ClientCore
from hydfs.context import CoreConfig
from hydfs.node_core import NodeCore
from hydfs.storage import MemoryStorage as HydfsStorage
from raft.config import RaftConfig
from raft.core import LEADER, NotLeader, RaftCore
from raft.messages import Entry, Message
from raft.storage import MemoryStorage
from rainstorm.control import command, members_command, submit_commands
from rainstorm.controller import RUNNING, Controller
from rainstorm.stream.channels import Message as TaskMessage
from rainstorm.stream.operators import Operator
from rainstorm.stream.plan import Plan, TaskRef, build_plan
from rainstorm.stream.sim import check_logs
from rainstorm.stream.source import lines_file
from rainstorm.stream.stores import MemoryInboxStore, MemoryLogStore, MemorySource, OutOfOrder
from rainstorm.stream.task import Effect, Send, Task, TaskConfig, complete, execute
from rainstorm.worker_core import Decisions, Key, WorkerCore

REQUEST_TIMEOUT = 1.0     # a control request unanswered this long is sent again (to whoever leads then)
POLL = 0.2                # workers pull the table this often (the real ones long-poll)


@dataclass(frozen=True)
class NodeDown:
    at: float
    node: int
    down: float               # seconds until it restarts
    redis_kept: bool = False  # only the node process died; its Redis lives on


@dataclass(frozen=True)
class Pause:
    at: float
    node: int
    length: float


@dataclass(frozen=True)
class RedisLoss:
    at: float
    node: int                 # its redis-server restarts empty while the node process lives on


@dataclass(frozen=True)
class Cut:
    at: float
    until: float
    group: frozenset[int]     # these nodes cannot talk to the others until ``until``


@dataclass
class HydfsWriter:
    """A HyDFS client on node ``node`` appending ``count`` records to ``file``, one every ``every``
    seconds from ``start``; with ``fence``, each append is conditional on that fence at ``epoch``
    (a zombie and its successor: the lower epoch must be refused once the higher one has written)."""

    node: int
    file: str
    start: float = 6.0       # after the first committed views and HyDFS's settle (CoreConfig.settle)
    every: float = 0.1
    count: int = 100
    fence: str | None = None
    epoch: int = 0


@dataclass
class SystemFaults:
    loss: float = 0.0
    dup: float = 0.0
    delay: tuple[float, float] = (0.0005, 0.005)
    io: tuple[float, float] = (0.0002, 0.003)
    events: list[NodeDown | Pause | Cut | RedisLoss] = field(default_factory=list)


@dataclass(eq=False)
class Inst:
    run: str
    ref: TaskRef
    epoch: int
    task: Task
    node: int
    life: int
    crashed: bool = False


@dataclass(eq=False)
class SimNode:
    idx: int
    id: str
    addr: str
    voter: bool
    skew: float
    drift: float
    inbox: MemoryInboxStore = field(default_factory=MemoryInboxStore)
    storage: MemoryStorage | None = None
    life: int = 0
    up: bool = True
    paused_until: float = 0.0
    swim: Swim | None = None
    raft: RaftCore | None = None
    machine: Controller = field(default_factory=Controller)
    worker: WorkerCore | None = None
    instances: dict[Key, Inst] = field(default_factory=dict)
    hint: str | None = None                                            # who it believes leads
    pending: dict[int, tuple[str, dict[str, Any], float]] = field(default_factory=dict)   # rid -> request
    proposals: dict[int, tuple[int, int, int]] = field(default_factory=dict)   # index -> (term, src node, rid)
    last_poll: float = -1.0
    members_inflight: float = -1.0
    hstore: HydfsStorage = field(default_factory=HydfsStorage)   # its disk: survives a crash
    hydfs: NodeCore | None = None
    view: tuple[str, ...] = ()        # the live set its HyDFS acts on
    view_version: int = -1
    failed_seen: int = -1

    def clock(self, now: float) -> float:
        """This node's own clock: offset and rate differ from the simulation's (and every other node's)."""
        return self.skew + now * (1.0 + self.drift)


@dataclass
class SystemResult:
    finished: bool
    time: float
    output: list[bytes]
    stats: Counter[str]


class SystemSim:
    def __init__(self, stages: Sequence[Operator], lines: Sequence[str], *, nodes: int = 5, voters: int = 3,
                 tasks: int = 2, seed: int = 0, faults: SystemFaults | None = None, config: TaskConfig | None = None,
                 gossip: GossipConfig | None = None, raft: RaftConfig | None = None, limit: int = 64,
                 src: str = "in.txt", dest: str = "out.txt", tick: float = 0.05,
                 writers: Sequence[HydfsWriter] = (), hydfs_view: str = "committed",
                 hydfs: CoreConfig | None = None) -> None:
        self.stages, self.tasks, self.src, self.dest = list(stages), tasks, src, dest
        self.rng = random.Random(seed)
        self.seed = seed
        self.faults = faults or SystemFaults()
        self.task_cfg = config or TaskConfig(batch_lines=16, batch_bytes=96, block=64, batch_entries=4, window=4,
                                             max_outbox=16, resend=0.2, snapshot_every=5)
        self.gossip_cfg = gossip or GossipConfig()      # the real defaults: what nodes run
        self.raft_cfg = raft or RaftConfig()
        self.limit, self.tick_every = limit, tick
        self.logs = MemoryLogStore()
        self.source = MemorySource({src: lines_file(lines)})
        self.now = 0.0
        self.stats: Counter[str] = Counter()
        self._q: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self._rid = 0
        self.cut: tuple[frozenset[int], float] | None = None
        self.plans: dict[str, Plan] = {}
        self.voter_ids = [f"node-{i + 1}" for i in range(voters)]
        self.nodes = [SimNode(i, f"node-{i + 1}", f"10.0.0.{i + 1}:7100", i < voters,
                              skew=self.rng.uniform(0, 100), drift=self.rng.uniform(-1e-4, 1e-4))
                      for i in range(nodes)]
        self.by_addr = {n.addr: n for n in self.nodes}
        self.by_id = {n.id: n for n in self.nodes}
        for n in self.nodes:
            if n.voter:
                n.storage = MemoryStorage()
        # invariants' records
        self.epochs_run: dict[tuple[str, int], tuple[int, int]] = {}     # (task, epoch) -> (node, life)
        self.instances_made = 0
        self.leaders: dict[int, str] = {}                                 # term -> leader
        self.applied: dict[int, tuple[int, str]] = {}                     # index -> (term, digest)
        self.problems: list[str] = []
        self.submitted: dict[str, Any] | None = None
        # HyDFS beside the job: cores on every node (if anyone writes), writers and what they were told
        self.hydfs_view, self.hydfs_cfg = hydfs_view, hydfs or CoreConfig()
        self.writers = list(writers)
        self.hclients: list[ClientCore] = []
        self.hsent: list[dict[int, bytes]] = []            # per writer: op id -> record
        self.acked: list[list[bytes]] = []                  # per writer: records acknowledged, in order
        self.refused: Counter[str] = Counter()
        self.hresults: dict[tuple[int, int], Any] = {}     # (client, op) -> result of a read
        for i, w in enumerate(self.writers):
            self.hclients.append(ClientCore(f"w{i}", replicas=self.hydfs_cfg.replicas, retry=0.5))
            self.hsent.append({})
            self.acked.append([])
            for k in range(w.count):
                self._at(w.start + k * w.every, functools.partial(self._write, i, k))
        self.creating: dict[str, int | None] = {}             # file -> its create's op id (None: done)
        for name in sorted({w.file for w in self.writers}):
            self._at(1.0, functools.partial(self._create, name))
        for n in self.nodes:
            self._boot(n, first=True)
        for f in self.faults.events:
            self._at(f.at, functools.partial(self._fault, f))
        self._at(0.5, self._submit)

    # ------------------------------------------------------------------ plumbing
    def _at(self, t: float, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._q, (t, self._seq, fn))

    def _on(self, n: SimNode, life: int, fn: Callable[[], None]) -> Callable[[], None]:
        """``fn`` runs on node ``n`` in its life ``life`` only: a dead life's timers and messages vanish,
        and a paused node runs them when it wakes."""
        def run() -> None:
            if not n.up or n.life != life:
                return
            if n.paused_until > self.now:
                self._at(n.paused_until, run)
                return
            fn()
        return run

    def _reachable(self, a: SimNode, b: SimNode) -> bool:
        if self.cut is None:
            return True
        group, _ = self.cut
        return (a.idx in group) == (b.idx in group)

    def _send(self, src: SimNode, dst: SimNode, deliver: Callable[[], None]) -> None:
        """One message over the simulated network: lost, duplicated, delayed, or cut off."""
        self.stats["messages"] += 1
        if self.rng.random() < self.faults.loss:
            self.stats["lost"] += 1
            return
        copies = 2 if self.rng.random() < self.faults.dup else 1
        for _ in range(copies):
            t = self.now + self.rng.uniform(*self.faults.delay)

            def land(life: int = dst.life) -> None:
                if not self._reachable(src, dst):   # a partition in force when it arrives drops it
                    self.stats["cut"] += 1
                    return
                self._on(dst, life, deliver)()

            self._at(t, land)

    # ------------------------------------------------------------------ lives
    def _boot(self, n: SimNode, first: bool = False) -> None:
        n.up, n.paused_until = True, 0.0
        life = n.life
        local = n.clock(self.now)
        n.swim = Swim(n.id, n.addr, self.gossip_cfg, random.Random(f"{self.seed}:{n.id}:{life}"), local,
                      incarnation=0)
        if first:
            # as if every node had joined through node-1 already (the gossip simulator's snapshot start)
            n.swim.join([], local)
            for m in self.nodes:
                n.swim.receive(m.addr, {"t": "join_ack", "from": m.id, "inc": 0, "you": 0,
                                        "m": [["alive", x.id, x.addr, 0] for x in self.nodes]}, local)
            n.swim.take_outgoing()
            n.swim.take_events()
        else:
            n.swim.join([m.addr for m in self.nodes if m is not n], local)
        n.machine = Controller()
        n.raft = None
        if n.voter:
            assert n.storage is not None
            restored = n.storage.load()
            n.raft = RaftCore(n.id, self.voter_ids, self.raft_cfg, random.Random(f"raft:{self.seed}:{n.id}:{life}"),
                              local, restored)
            if restored is not None and restored.snapshot is not None:
                n.machine = Controller.from_doc(msgpack.unpackb(restored.snapshot.data, raw=False))
        n.worker = WorkerCore(n.id, f"{n.id}/{life}")
        n.hydfs, n.view, n.view_version, n.failed_seen = None, (), -1, -1
        if self.writers:
            n.hydfs = NodeCore(n.id, n.hstore, self.hydfs_cfg, random.Random(f"hydfs:{self.seed}:{n.id}:{life}"))
        n.instances = {}
        n.hint, n.pending, n.proposals = None, {}, {}
        n.last_poll, n.members_inflight = -1.0, -1.0
        self._at(self.now + self.rng.uniform(0, self.tick_every), self._on(n, life, functools.partial(self._tick, n)))

    def _fault(self, f: NodeDown | Pause | Cut | RedisLoss) -> None:
        self.stats[type(f).__name__] += 1
        if isinstance(f, Cut):
            self.cut = (f.group, f.until)
            self._at(f.until, self._heal)
            return
        n = self.nodes[f.node % len(self.nodes)]
        if isinstance(f, Pause):
            if n.up:
                n.paused_until = max(n.paused_until, self.now + f.length)
            return
        if isinstance(f, RedisLoss):
            n.inbox.lose()      # its instances find out (not owner) and are reported dead
            return
        if not n.up:
            return
        n.up = False
        for inst in n.instances.values():
            inst.crashed = True
        if not f.redis_kept:
            n.inbox.lose()
        n.life += 1
        self._at(self.now + f.down, functools.partial(self._boot, n))

    def _heal(self) -> None:
        if self.cut is not None and self.cut[1] <= self.now:
            self.cut = None

    # ------------------------------------------------------------------ one node's step
    def _tick(self, n: SimNode) -> None:
        local = n.clock(self.now)
        assert n.swim is not None and n.worker is not None
        n.swim.tick(local)
        self._flush_swim(n)
        if n.raft is not None:
            n.raft.tick(local)
            self._raft_ready(n)
            self._leader_duty(n)
        self._worker_step(n)
        if n.hydfs is not None:
            if self.hydfs_view == "gossip":
                self._hydfs_view(n, tuple(sorted(m.node_id for m in n.swim.alive())))
            n.hydfs.tick(local)
            self._hydfs_flush(n)
            for i, c in enumerate(self.hclients):
                if self.writers[i].node == n.idx:
                    c.tick(local)
                    self._client_flush(i)
        for inst in list(n.instances.values()):
            if inst.task.alive:
                inst.task.tick(local)
                self._pump(n, inst)
        self._at(self.now + self.tick_every, self._on(n, n.life, functools.partial(self._tick, n)))

    def _flush_swim(self, n: SimNode) -> None:
        assert n.swim is not None
        for addr, msg in n.swim.take_outgoing():
            dst = self.by_addr.get(addr)
            if dst is not None:
                self._send(n, dst, functools.partial(self._swim_in, dst, n.addr, msg))
        for ev in n.swim.take_events():
            if ev.kind == "self_failed" and n.hydfs is not None:   # others declared us failed: step down
                n.hydfs.on_declared_failed(n.clock(self.now))
                self._hydfs_flush(n)

    def _swim_in(self, n: SimNode, src: str, msg: dict[str, Any]) -> None:
        assert n.swim is not None
        n.swim.receive(src, msg, n.clock(self.now))
        self._flush_swim(n)

    # -- Raft and the controller
    def _raft_in(self, n: SimNode, msg: Message) -> None:
        assert n.raft is not None
        n.raft.step(msg, n.clock(self.now))
        self._raft_ready(n)

    def _raft_ready(self, n: SimNode) -> None:
        r = n.raft
        assert r is not None and n.storage is not None
        while r.has_ready():
            rd = r.ready()
            n.storage.save(rd)                    # durable before any message says so
            for m in rd.messages:
                dst = self.by_id.get(m.dst)
                if dst is not None:
                    self._send(n, dst, functools.partial(self._raft_in_if_voter, dst, m))
            if rd.snapshot is not None:
                n.machine = Controller.from_doc(msgpack.unpackb(rd.snapshot.data, raw=False))
            for e in rd.committed:
                self._apply(n, e)
            r.advance(rd)
        if r.role == LEADER:
            prev = self.leaders.setdefault(r.term, n.id)
            if prev != n.id:
                self.problems.append(f"two leaders in term {r.term}: {prev} and {n.id}")

    def _raft_in_if_voter(self, n: SimNode, m: Message) -> None:
        if n.raft is not None:
            self._raft_in(n, m)

    def _apply(self, n: SimNode, e: Entry) -> None:
        digest = hashlib.blake2b(e.data, digest_size=8).hexdigest()
        seen = self.applied.setdefault(e.index, (e.term, digest))
        if seen != (e.term, digest):
            self.problems.append(f"{n.id} applied {e.index} as ({e.term}, {digest}), another voter {seen}")
        out = None
        if e.data:
            cmd = msgpack.unpackb(e.data, raw=False)
            out = n.machine.apply(cmd, e.index)
        waiting = n.proposals.pop(e.index, None)
        if waiting is not None and waiting[0] == e.term:
            src, rid = waiting[1], waiting[2]
            self._reply(n, self.nodes[src], rid, True, out)

    def _leader_duty(self, n: SimNode) -> None:
        r = n.raft
        assert r is not None and n.swim is not None
        if r.role != LEADER or not r.lease(n.clock(self.now)):
            return
        cmd = members_command([m.node_id for m in n.swim.alive()], n.machine)
        if cmd is not None and self.now - n.members_inflight > REQUEST_TIMEOUT:
            n.members_inflight = self.now
            self._propose(n, cmd, None)

    def _propose(self, n: SimNode, cmd: dict[str, Any], waiter: tuple[int, int] | None) -> bool:
        r = n.raft
        assert r is not None
        try:
            index = r.propose(msgpack.packb(cmd), n.clock(self.now))
        except NotLeader:
            return False
        if waiter is not None:
            n.proposals[index] = (r.term, *waiter)
        self._raft_ready(n)
        return True

    # -- the control front door (what ControlService does on every node)
    def _request(self, n: SimNode, method: str, args: dict[str, Any]) -> None:
        self._rid += 1
        n.pending[self._rid] = (method, args, self.now)
        self._send_request(n, self._rid)

    def _send_request(self, n: SimNode, rid: int) -> None:
        method, args, _ = n.pending[rid]
        n.pending[rid] = (method, args, self.now)
        target = (n.raft.leader_id if n.raft is not None else None) or n.hint
        dst = self.by_id.get(target) if target else None
        if dst is None:
            dst = self.by_id[self.rng.choice(self.voter_ids)]
        self.stats["requests"] += 1
        self._send(n, dst, functools.partial(self._serve, dst, n.idx, rid, method, args))

    def _serve(self, n: SimNode, src: int, rid: int, method: str, args: dict[str, Any]) -> None:
        r = n.raft
        client = self.nodes[src]
        if r is None or r.role != LEADER or not r.lease(n.clock(self.now)):
            self._reply(n, client, rid, False, r.leader_id if r is not None else None)
            return
        if method == "table":
            self._reply(n, client, rid, True, n.machine.table())
            return
        assert n.swim is not None
        cmds = (submit_commands(args, [m.node_id for m in n.swim.alive()], n.machine, self.limit)
                if method == "submit" else [command(method, args, self.limit)])
        for view in cmds[:-1]:
            self._propose(n, view, None)
        if not self._propose(n, cmds[-1], (src, rid)):
            self._reply(n, client, rid, False, None)

    def _reply(self, n: SimNode, dst: SimNode, rid: int, ok: bool, value: Any) -> None:
        self._send(n, dst, functools.partial(self._answer, dst, rid, ok, value))

    def _answer(self, n: SimNode, rid: int, ok: bool, value: Any) -> None:
        req = n.pending.pop(rid, None)
        if req is None:
            return   # a duplicate, or a reply to a previous life's request
        method, args, _ = req
        if not ok:
            n.hint = value if isinstance(value, str) else None
            n.pending[rid] = (method, args, -math.inf)    # again at the next tick, to whoever leads then
            return
        w = n.worker
        assert w is not None
        if method == "hello":
            w.on_hello_acked()
        elif method == "table":
            if self.hydfs_view == "committed" and value["version"] > n.view_version:
                n.view_version = value["version"]     # what CommittedView.learn does on a real node
                failed = value["failed_at"].get(n.id, -1)
                if failed > n.failed_seen and n.hydfs is not None:
                    n.failed_seen = failed
                    n.hydfs.on_declared_failed(n.clock(self.now))
                    self._hydfs_flush(n)
                self._hydfs_view(n, tuple(value["alive"]))
            self._decide(n, w.on_table(value))
        elif method == "report":
            w.on_report_acked(args)
        elif method == "submit":
            self.submitted = value

    def _worker_step(self, n: SimNode) -> None:
        w = n.worker
        assert w is not None
        for rid, (_, _, sent) in list(n.pending.items()):
            if self.now - sent > REQUEST_TIMEOUT:
                self._send_request(n, rid)
        busy = {(m, str(a.get("task")), a.get("epoch"), a.get("status")) for m, a, _ in n.pending.values()}
        if not w.greeted:
            if not any(m == "hello" for m, _, _ in n.pending.values()):
                self._request(n, "hello", w.hello())
            return
        if self.now - n.last_poll >= POLL and not any(m == "table" for m, _, _ in n.pending.values()):
            n.last_poll = self.now
            self._request(n, "table", {})
        for args in w.due_reports():
            if ("report", args["task"], args["epoch"], args["status"]) not in busy:
                self._request(n, "report", args)

    def _submit(self) -> None:
        if self.submitted is not None:
            return
        n = self.rng.choice([x for x in self.nodes if x.up])
        refs = build_plan("job", self.src, self.dest, self.stages, self.tasks).tasks()
        if not any(m == "submit" for m, _, _ in n.pending.values()):
            self._request(n, "submit", {"name": "job", "spec": {"src": self.src, "dest": self.dest},
                                        "tasks": [list(r) for r in refs], "sub": "the-one-submit"})
        self._at(self.now + REQUEST_TIMEOUT, self._submit)

    # -- the worker's instances
    def _plan(self, run: str) -> Plan:
        if run not in self.plans:
            self.plans[run] = build_plan(run, self.src, self.dest, self.stages, self.tasks)
        return self.plans[run]

    def _decide(self, n: SimNode, d: Decisions) -> None:
        w = n.worker
        assert w is not None
        for key in d.stop:
            inst = n.instances.pop(key, None)
            if inst is not None:
                inst.crashed = True     # stopped: its pending effects are orphans
        for x in d.launch:
            if not w.started(x.run, x.ref, x.epoch):
                continue
            name = f"{x.run}:{x.ref[0]}:{x.ref[1]}"
            other = self.epochs_run.get((name, x.epoch))
            if other is not None:    # in another process, or again in this one: both reuse HyDFS keys
                self.problems.append(f"{name} epoch {x.epoch} run twice: node {other} and {(n.idx, n.life)}")
            self.epochs_run[(name, x.epoch)] = (n.idx, n.life)
            inst = Inst(x.run, x.ref, x.epoch, Task(self._plan(x.run), x.ref, x.epoch, self.task_cfg), n.idx, n.life)
            n.instances[(x.run, x.ref)] = inst
            self.stats["launches"] += 1
            inst.task.start(n.clock(self.now))
            self._pump(n, inst)

    def _pump(self, n: SimNode, inst: Inst) -> None:
        if inst.crashed:
            inst.task.take_effects()
            return
        for eff in inst.task.take_effects():
            if isinstance(eff, Send):
                self._route(n, inst, eff)
            else:
                self._at(self.now + self.rng.uniform(*self.faults.io), functools.partial(self._exec, n, inst, eff))
        self._check_end(n, inst)

    def _exec(self, n: SimNode, inst: Inst, eff: Effect) -> None:
        if inst.crashed and self.rng.random() < 0.5:
            return     # the request died with its process; or it was on the wire and lands below
        result = execute(eff, self.logs, n.inbox, self.source)
        if isinstance(result, OutOfOrder):
            self._at(self.now + self.rng.uniform(*self.faults.io), functools.partial(self._exec, n, inst, eff))
            return
        self._at(self.now + self.rng.uniform(*self.faults.io),
                 self._on(n, inst.life, functools.partial(self._done, n, inst, eff, result)))

    def _done(self, n: SimNode, inst: Inst, eff: Effect, result: Any) -> None:
        if inst.crashed:
            return
        complete(inst.task, eff, result)
        self._pump(n, inst)

    def _check_end(self, n: SimNode, inst: Inst) -> None:
        w = n.worker
        assert w is not None
        t = inst.task
        if w.after_step(inst.run, inst.ref, inst.epoch, t.done, t.alive, t.why) == "died":
            inst.crashed = True
            self.stats["died_" + (t.cause.value if t.cause else "unknown")] += 1
            if n.instances.get((inst.run, inst.ref)) is inst:
                del n.instances[(inst.run, inst.ref)]

    def _route(self, n: SimNode, inst: Inst, eff: Send) -> None:
        w = n.worker
        assert w is not None
        a = w.table["jobs"].get(inst.run, {}).get("assign", {}).get(f"{inst.run}:{eff.dest[0]}:{eff.dest[1]}")
        dst = self.by_id.get(a[0]) if a else None
        if dst is None:
            return
        self._send(n, dst, functools.partial(self._task_in, dst, inst.run, eff.dest, eff.msg))

    def _task_in(self, n: SimNode, run: str, dest: TaskRef, msg: TaskMessage) -> None:
        inst = n.instances.get((run, dest))
        if inst is None or inst.crashed or not inst.task.alive:
            return
        inst.task.on_message(msg, n.clock(self.now))
        self._pump(n, inst)

    # -- HyDFS beside the job
    def _hydfs_view(self, n: SimNode, alive: tuple[str, ...]) -> None:
        if n.hydfs is None or alive == n.view:
            return
        n.view = alive
        n.hydfs.on_membership(alive, n.clock(self.now))
        self._hydfs_flush(n)
        for i, c in enumerate(self.hclients):       # a client routes by its node's view
            if self.writers[i].node == n.idx:
                c.on_membership(alive, n.clock(self.now))

    def _hydfs_flush(self, n: SimNode) -> None:
        assert n.hydfs is not None
        for dest, msg in n.hydfs.take_outgoing():
            if dest in self.by_id:
                dst = self.by_id[dest]
                self._send(n, dst, functools.partial(self._hydfs_in, dst, n.id, msg))
            elif dest.startswith("w"):               # a reply to a writer, over the network to its node
                i = int(dest[1:])
                host = self.nodes[self.writers[i].node]
                self._send(n, host, functools.partial(self._client_in, i, n.id, msg))
        n.hydfs.take_notes()

    def _hydfs_in(self, n: SimNode, src: str, msg: dict[str, Any]) -> None:
        if n.hydfs is not None:
            n.hydfs.receive(src, msg, n.clock(self.now))
            self._hydfs_flush(n)

    def _client_in(self, i: int, src: str, msg: dict[str, Any]) -> None:
        host = self.nodes[self.writers[i].node]
        self.hclients[i].receive(src, msg, host.clock(self.now))
        self._client_flush(i)

    def _client_flush(self, i: int) -> None:
        c, host = self.hclients[i], self.nodes[self.writers[i].node]
        for dest, msg in c.take_outgoing():
            dst = self.by_id.get(dest)
            if dst is not None:
                self._send(host, dst, functools.partial(self._hydfs_in, dst, c.client_id, msg))
        for op, res in c.take_results().items():
            if i == 0 and op in self.creating.values():
                name = next(f for f, o in self.creating.items() if o == op)
                self.creating[name] = None if res.ok or res.err == "exists" else -1
                if not (res.ok or res.err == "exists"):
                    self._at(self.now + 0.5, functools.partial(self._create, name))
                continue
            record = self.hsent[i].pop(op, None)
            if record is None:
                self.hresults[(i, op)] = res
                continue
            if res.ok:
                self.acked[i].append(record)
            else:
                self.refused[str(res.err)] += 1

    def _create(self, name: str) -> None:
        """The writers' files exist before they append (writer 0's client creates them, retrying)."""
        if self.creating.get(name, -1) is None:
            return
        c, host = self.hclients[0], self.nodes[self.writers[0].node]
        self.creating[name] = c.create(name, b"", host.clock(self.now))
        self._client_flush(0)

    def busy(self) -> bool:
        """Writers still have appends to make or unanswered."""
        return any(self.now < w.start + w.count * w.every for w in self.writers) or any(self.hsent)

    def _write(self, i: int, k: int) -> None:
        w, c = self.writers[i], self.hclients[i]
        host = self.nodes[w.node]
        record = f"w{i}-{k}\n".encode()
        cond = {"fence": w.fence, "epoch": w.epoch} if w.fence is not None else None
        self.hsent[i][c.append(w.file, record, host.clock(self.now), cond=cond)] = record
        self._client_flush(i)

    def hydfs_read(self, name: str, timeout: float = 30.0) -> list[bytes] | None:
        """The file's records as its primary serves them now (a fresh client on the first node that
        is up), or None if no answer came within ``timeout`` simulated seconds."""
        host = next(n for n in self.nodes if n.up)
        c = ClientCore(f"w{len(self.writers)}", replicas=self.hydfs_cfg.replicas, retry=0.5)
        self.writers.append(HydfsWriter(host.idx, name, count=0))
        self.hclients.append(c)
        self.hsent.append({})
        self.acked.append([])
        c.on_membership(host.view, host.clock(self.now))
        i = len(self.hclients) - 1
        op = c.get(name, host.clock(self.now))
        self._client_flush(i)
        deadline = self.now + timeout
        while (i, op) not in self.hresults and self._q and self.now < deadline:
            t, _, fn = heapq.heappop(self._q)
            self.now = t
            fn()
        res = self.hresults.pop((i, op), None)
        return res.data.splitlines(keepends=True) if res is not None and res.ok else None

    def hydfs_check(self) -> list[str]:
        """Every acknowledged append in its file exactly once; no record twice; per fence, no lower
        epoch's record after a higher epoch's."""
        problems: list[str] = []
        for name in sorted({w.file for w in self.writers if w.count}):
            records = self.hydfs_read(name)
            if records is None:
                problems.append(f"{name}: not readable after the run")
                continue
            seen = Counter(records)
            doubled = sorted(r for r, k in seen.items() if k > 1)
            if doubled:
                problems.append(f"{name}: {len(doubled)} records twice, e.g. {doubled[:3]}")
            for i, w in enumerate(self.writers):
                if w.file != name:
                    continue
                lost = [r for r in self.acked[i] if r not in seen]
                if lost:
                    problems.append(f"{name}: {len(lost)} of writer w{i}'s {len(self.acked[i])} acknowledged "
                                    f"appends lost (node-{w.node + 1}'s side), e.g. {lost[:3]}")
            epoch_of = {f"w{i}-".encode(): w.epoch for i, w in enumerate(self.writers)
                        if w.file == name and w.fence is not None}
            high = -1
            for r in records:
                e = epoch_of.get(r.split(b"-")[0] + b"-")
                if e is None:
                    continue
                if e < high:
                    problems.append(f"{name}: {r!r} (epoch {e}) ordered after an epoch {high} append")
                    break
                high = max(high, e)
        return problems

    # ------------------------------------------------------------------ running and checking
    def run(self, until: float = 120.0, max_events: int = 5_000_000) -> SystemResult:
        events = 0
        while self._q and events < max_events:
            if self._q[0][0] > until:
                self.now = until
                break        # left queued: a later run() goes on from here
            t, _, fn = heapq.heappop(self._q)
            self.now = t
            events += 1
            fn()
            if events % 256 == 0 and self.finished() and not self.busy():
                break
        self.stats["events"] = events
        return SystemResult(self.finished(), self.now, self.output(), self.stats)

    def state(self) -> str | None:
        """The job's state as the most advanced voter applied it."""
        best = max((n for n in self.nodes if n.voter), key=lambda n: n.machine.version)
        run = best.machine.run_of("job")
        return None if run is None else run.state

    def finished(self) -> bool:
        return self.state() not in (None, RUNNING)

    def output(self) -> list[bytes]:
        return self.logs.data(self.dest).splitlines()

    def check(self) -> list[str]:
        problems = list(self.problems)
        if self.submitted is not None:
            problems += check_logs(self._plan(self.submitted["key"]), self.logs)[0]
        return problems

    def describe(self) -> dict[str, Any]:
        """Who leads, who is up, and where each task is (for a failing test's message)."""
        out: dict[str, Any] = {"now": round(self.now, 3), "state": self.state(), "stats": dict(self.stats)}
        for n in self.nodes:
            r = n.raft
            out[n.id] = {"up": n.up, "life": n.life, "role": r.role if r else None, "term": r.term if r else None,
                         "leader": r.leader_id if r else None, "alive": n.machine.alive,
                         "instances": {f"{k[0]}:{k[1]}": (i.epoch, i.task.phase.value) for k, i in n.instances.items()}}
        return out


"""A deterministic, seeded simulation of whole jobs over the in-memory stores.

One event heap ordered by (time, sequence); all randomness from one ``random.Random(seed)``. It plays:
- the driver: performs each effect of each task instance on the stores after a random I/O latency
  and reports the outcome after another one;
- the network between tasks: every message is delayed at random (so reordered), dropped with
  probability ``drop`` and duplicated with probability ``dup``; a message goes to the task's current
  instance, or (``stale_route``) to a still-running zombie of it, as a stale routing table would;
- the leader: gives each new instance the next epoch of its task and a random node, and replaces an
  instance ``detect`` seconds after it died;
- faults: a :class:`Crash` kills a task's instance exactly before or after its n-th effect of a kind
  (log append, publish, apply/ack, accept, send, read); requests it had already sent may still land.
  A :class:`Zombie` stalls an instance at its n-th log append for ``pause`` seconds while a
  replacement starts; then it runs on with its old epoch (a SIGSTOP'd process waking up).
  A :class:`RedisLoss` wipes one node's Redis (marks, inboxes, outbox and state caches, applied
  indexes); a :class:`RedisRollback` restarts it from its state ``back`` seconds ago (AOF everysec
  losing the last writes) while the instances on the node run on; a :class:`NodeCrash` also kills
  every instance on the node. Logs (HyDFS) survive.

After the run, :meth:`JobSim.check` verifies what must hold after ANY run: no commit record of an
epoch lower than a fence before it in any log (a zombie never committed after it was fenced), and
every batch any inbox ever accepted is byte-identical to the one the producer's log holds under that
sequence number.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rainstorm.stream.operators import Operator
from rainstorm.stream.plan import Plan, TaskRef, build_plan
from rainstorm.stream.records import CommitRecord, FenceRecord, decode_record
from rainstorm.stream.source import lines_file
from rainstorm.stream.stores import MemoryInboxStore, MemoryLogStore, MemorySource, OutOfOrder
from rainstorm.stream.task import (
    Accept,
    AppendLog,
    ApplyInbox,
    Effect,
    OpenInbox,
    Phase,
    Publish,
    ReadInbox,
    ReadLog,
    ReadSnapshot,
    ReadSource,
    RemoveFile,
    Send,
    Task,
    TaskConfig,
    TrimLog,
    WriteSnapshot,
    complete,
    execute,
)

POINTS = ("log", "publish", "apply", "accept", "send", "read", "snapshot", "trim", "remove", "readsnap")


@dataclass(frozen=True)
class Crash:
    task: int        # index into plan.tasks() (taken modulo their number)
    point: str       # one of POINTS
    nth: int         # the task's n-th effect of that kind, counted over all its instances (from 1)
    after: bool      # after the effect took place (its outcome is lost), or before it was sent


@dataclass(frozen=True)
class Zombie:
    task: int
    nth: int         # stall at the task's n-th log append (counted over its instances, from 1)
    pause: float     # seconds it stays stalled; a replacement starts meanwhile


@dataclass(frozen=True)
class RedisLoss:
    at: float
    node: int


@dataclass(frozen=True)
class RedisRollback:
    at: float
    node: int
    back: float      # seconds of writes lost


@dataclass(frozen=True)
class NodeCrash:
    at: float
    node: int


@dataclass
class Faults:
    drop: float = 0.0
    dup: float = 0.0
    delay: tuple[float, float] = (0.001, 0.02)
    io: tuple[float, float] = (0.0002, 0.004)
    stale_route: float = 0.2
    events: list[Crash | Zombie | RedisLoss | RedisRollback | NodeCrash] = field(default_factory=list)


@dataclass(eq=False)
class Inst:
    task: Task
    node: int
    crashed: bool = False
    paused_until: float = 0.0

    @property
    def running(self) -> bool:
        return not self.crashed and self.task.alive


@dataclass
class SimResult:
    finished: bool
    time: float
    output: list[bytes]
    dead: list[bytes]
    stats: Counter[str]


def check_logs(plan: Plan, logs: MemoryLogStore) -> tuple[list[str], dict[tuple[str, int, int], bytes]]:
    """The task logs' invariants (no commit record of an epoch below a fence before it; no output
    sequence number assigned twice), and every output batch by (consumer task, producer part, seq).
    The whole-system simulator checks the same."""
    problems: list[str] = []
    produced: dict[tuple[str, int, int], bytes] = {}
    for ref in plan.tasks():
        fence = -1
        for index, data in logs.history(plan.log_name(ref)):
            rec = decode_record(data)
            if isinstance(rec, FenceRecord):
                fence = max(fence, rec.epoch)
                continue
            if not isinstance(rec, CommitRecord):
                continue   # a snapshot record
            if rec.epoch < fence:
                problems.append(f"{ref}: record {index} of epoch {rec.epoch} after fence {fence}")
            for q, seq, payload, _ in rec.outputs:
                key = (plan.task_name((ref[0] + 1, q)), ref[1], seq)
                if key in produced:
                    problems.append(f"{ref}: seq {seq} to {q} assigned twice")
                produced[key] = payload
    return problems, produced


_POINTS: dict[type, str] = {AppendLog: "log", Publish: "publish", ApplyInbox: "apply", Accept: "accept",
                            Send: "send", ReadInbox: "read", ReadSource: "read", ReadLog: "readlog",
                            WriteSnapshot: "snapshot", TrimLog: "trim", RemoveFile: "remove",
                            ReadSnapshot: "readsnap", OpenInbox: "open"}


def _point(eff: Effect) -> str:
    return _POINTS[type(eff)]


class JobSim:
    def __init__(self, stages: Sequence[Operator], lines: Sequence[str], *, tasks: int | Sequence[int] = 2,
                 fuse: bool = False, nodes: int = 3, seed: int = 0, faults: Faults | None = None,
                 config: TaskConfig | None = None, detect: float = 0.2, tick: float = 0.05,
                 src: str = "in.txt", dest: str = "out.txt", logs: MemoryLogStore | None = None) -> None:
        self.plan = build_plan("job", src, dest, stages, tasks, fuse=fuse)
        self.rng = random.Random(seed)
        self.faults = faults or Faults()
        self.cfg = config or TaskConfig(batch_lines=16, batch_bytes=96, block=64, batch_entries=4, window=4,
                                        max_outbox=16, resend=0.2, snapshot_every=5)
        self.detect, self.tick_every = detect, tick
        self.logs = logs or MemoryLogStore()
        self.redis = [MemoryInboxStore() for _ in range(nodes)]
        self.source = MemorySource({src: lines_file(lines)})
        self.refs: list[TaskRef] = self.plan.tasks()
        self.epoch: dict[TaskRef, int] = dict.fromkeys(self.refs, 0)
        self.current: dict[TaskRef, Inst | None] = dict.fromkeys(self.refs)
        self.instances: list[Inst] = []
        self.counts: Counter[tuple[TaskRef, str]] = Counter()
        self.stats: Counter[str] = Counter()
        self.now = 0.0
        self._q: list[tuple[float, int, str, Any]] = []
        self._seq = 0
        self._restarting: set[TaskRef] = set()
        self._crashes: dict[tuple[TaskRef, str, int], bool] = {}
        self._zombies: dict[tuple[TaskRef, int], float] = {}
        self._snaps: list[list[tuple[float, Any]]] | None = None   # per node: (time, store snapshot)
        for f in self.faults.events:
            if isinstance(f, Crash):
                self._crashes.setdefault((self.refs[f.task % len(self.refs)], f.point, f.nth), f.after)
            elif isinstance(f, Zombie):
                self._zombies.setdefault((self.refs[f.task % len(self.refs)], f.nth), f.pause)
            else:
                self._push(f.at, "fault", f)
                if isinstance(f, RedisRollback):
                    self._snaps = [[] for _ in self.redis]
        for ref in self.refs:
            self._launch(ref)
        self._push(self.tick_every, "tick", None)

    # ------------------------------------------------------------------ running

    def run(self, until: float = 120.0, max_events: int = 2_000_000) -> SimResult:
        events = 0
        done = False
        while self._q and events < max_events:
            t, _, kind, payload = heapq.heappop(self._q)
            if t > until:
                break
            self.now = t
            events += 1
            self._event(kind, payload)
            if kind == "tick" and self._all_done():
                done = True
                break
        self.stats["events"] = events
        self.stats["trims"] = sum(c for (_, point), c in self.counts.items() if point == "trim")
        return SimResult(done, self.now, self.output(), self.dead(), self.stats)

    def output(self) -> list[bytes]:
        return self.logs.data(self.plan.dest).splitlines()

    def dead(self) -> list[bytes]:
        return self.logs.data(self.plan.deadletters).splitlines()

    def _all_done(self) -> bool:
        for ref in self.refs:
            inst = self.current[ref]
            if inst is None or not inst.running or not inst.task.done:
                return False
        return True

    # ------------------------------------------------------------------ the leader

    def _launch(self, ref: TaskRef) -> None:
        self._restarting.discard(ref)
        self.epoch[ref] += 1
        inst = Inst(Task(self.plan, ref, self.epoch[ref], self.cfg), self.rng.randrange(len(self.redis)))
        self.current[ref] = inst
        self.instances.append(inst)
        self.stats["launches"] += 1
        inst.task.start(self.now)
        self._pump(inst)

    def _replace_later(self, ref: TaskRef) -> None:
        if ref not in self._restarting:
            self._restarting.add(ref)
            self._push(self.now + self.detect, "launch", ref)

    def _crash(self, inst: Inst, why: str) -> None:
        if inst.crashed:
            return
        inst.crashed = True
        self.stats["crash_" + why] += 1
        if self.current[inst.task.ref] is inst:
            self._replace_later(inst.task.ref)

    def _check_dead(self, inst: Inst) -> None:
        if not inst.task.alive and not inst.crashed:
            inst.crashed = True
            why = inst.task.why.split(":")[0]
            self.stats["died_" + why] += 1
            if self.current[inst.task.ref] is inst:
                self._replace_later(inst.task.ref)

    # ------------------------------------------------------------------ events

    def _push(self, t: float, kind: str, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._q, (t, self._seq, kind, payload))

    def _lat(self, span: tuple[float, float]) -> float:
        return self.rng.uniform(*span)

    def _held(self, inst: Inst, kind: str, payload: Any) -> bool:
        """A stalled (SIGSTOP'd) instance does nothing until it wakes: re-queue its event."""
        if inst.paused_until > self.now:
            self._push(inst.paused_until, kind, payload)
            return True
        return False

    def _event(self, kind: str, payload: Any) -> None:
        if kind == "exec":
            self._exec(*payload)
        elif kind == "done":
            inst, eff, result = payload
            if inst.crashed or self._held(inst, kind, payload):
                return
            complete(inst.task, eff, result)
            self._check_dead(inst)
            self._pump(inst)
        elif kind == "msg":
            self._deliver(*payload)
        elif kind == "tick":
            for inst in self.instances:
                if inst.running and inst.paused_until <= self.now:
                    inst.task.tick(self.now)
                    self._pump(inst)
            self.instances = [i for i in self.instances if not i.crashed]
            if self._snaps is not None:
                for store, snaps in zip(self.redis, self._snaps, strict=True):
                    snaps.append((self.now, store.snapshot()))
                    del snaps[:-60]
            self._push(self.now + self.tick_every, "tick", None)
        elif kind == "launch":
            self._launch(payload)
        elif kind == "fault":
            self.stats[type(payload).__name__] += 1
            node = payload.node % len(self.redis)
            if isinstance(payload, RedisRollback):
                assert self._snaps is not None
                older = [snap for t, snap in self._snaps[node] if t <= self.now - payload.back]
                self.redis[node].restore(older[-1] if older else {})
                return
            self.redis[node].lose()
            if isinstance(payload, NodeCrash):
                for inst in self.instances:
                    if inst.node == payload.node % len(self.redis):
                        self._crash(inst, "node")

    def _exec(self, inst: Inst, eff: Effect, crash_after: bool) -> None:
        if inst.crashed:
            # the request left before the process died: it lands, or it was still in a buffer
            if self.rng.random() < 0.5:
                return
            self.stats["orphan_effects"] += 1
        elif self._held(inst, "exec", (inst, eff, crash_after)):
            return
        result = execute(eff, self.logs, self.redis[inst.node], self.source)
        if isinstance(result, OutOfOrder):   # as the HyDFS client does: the same append again, shortly
            self.stats["out_of_order"] += 1
            self._push(self.now + self._lat(self.faults.io), "exec", (inst, eff, crash_after))
            return
        if crash_after:
            self._crash(inst, "after_" + _point(eff))
            return
        self._push(self.now + self._lat(self.faults.io), "done", (inst, eff, result))

    def _pump(self, inst: Inst) -> None:
        if inst.crashed:
            inst.task.take_effects()
            return
        ref = inst.task.ref
        for eff in inst.task.take_effects():
            point = _point(eff)
            self.counts[(ref, point)] += 1
            n = self.counts[(ref, point)]
            after = self._crashes.pop((ref, point, n), None)
            if after is False:
                self._crash(inst, "before_" + point)
                return
            if point == "log" and (ref, self.counts[(ref, "log")]) in self._zombies:
                pause = self._zombies.pop((ref, n))
                inst.paused_until = self.now + pause
                self.stats["zombies"] += 1
                if self.current[ref] is inst:
                    self.current[ref] = None
                    self._replace_later(ref)
            if isinstance(eff, Send):
                self._send(eff)
                if after:
                    self._crash(inst, "after_send")
                    return
                continue
            self._push(self.now + self._lat(self.faults.io), "exec", (inst, eff, bool(after)))
            if after:
                return   # the instance dies when that effect takes place; it emits nothing after it

    def _send(self, eff: Send) -> None:
        f = self.faults
        if self.rng.random() < f.drop:
            self.stats["dropped"] += 1
            return
        copies = 2 if self.rng.random() < f.dup else 1
        for _ in range(copies):
            self._push(self.now + self._lat(f.delay), "msg", (eff.dest, eff.msg))
        self.stats["sent"] += 1

    def _deliver(self, dest: TaskRef, msg: Any) -> None:
        cur = self.current.get(dest)
        zombies = [i for i in self.instances if i.task.ref == dest and i is not cur and i.running]
        target = cur
        if zombies and (cur is None or self.rng.random() < self.faults.stale_route):
            target = self.rng.choice(zombies)
            self.stats["to_zombie"] += 1
        if target is None or not target.running or target.paused_until > self.now:
            self.stats["undeliverable"] += 1
            return
        target.task.on_message(msg, self.now)
        self._check_dead(target)
        self._pump(target)

    # ------------------------------------------------------------------ invariants

    def check(self) -> list[str]:
        """Violations of the invariants that hold after any run (empty = fine)."""
        problems, produced = check_logs(self.plan, self.logs)
        for store in self.redis:
            for task, channel, seq, payload in store.history:
                if produced.get((task, channel, seq)) != payload:
                    problems.append(f"{task} accepted channel {channel} seq {seq} unlike the producer's log")
        return problems

    def phases(self) -> dict[TaskRef, str]:
        """Where each task's current instance is (for diagnostics)."""
        out = {}
        for ref, inst in self.current.items():
            if inst is None:
                out[ref] = "none"
            else:
                t = inst.task
                out[ref] = (f"{t.phase.value} main={t._main} fin={t.finished} done={t.done} "
                            f"out={[(c.last, c.committed, c.peer_epoch) for c in t.out]} in={t.committed}")
                if t.phase is Phase.DEAD:
                    out[ref] += " " + t.why
        return out

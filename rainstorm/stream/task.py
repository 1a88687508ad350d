"""The per-task state machine: fence, rebuild, open, then process -> commit -> apply -> deliver.

Sans-IO: a :class:`Task` never touches a store or a socket. It emits *effects* (``take_effects()``):
log appends and reads (HyDFS), inbox operations (the node's Redis), source reads, publishes, and
messages to other tasks. The driver performs each one and reports the outcome with the matching
``on_*`` method (:func:`execute` + :func:`complete` do both for synchronous stores; the asyncio worker
does the same with awaits). Time comes in through ``tick(now)`` and ``on_message(msg, now)``.

Life of an instance (task = physical stage s, partition p; the leader gives each instance an epoch):

1. FENCING: append ``FenceRecord(epoch)`` to the task log, conditional on the epoch. From then on no
   older instance can append to the log (HyDFS checks the fence with the append, in log order).
2. REBUILDING: read the log; if it holds a SNAPSHOT record, read the last one's file (the whole
   state as of an index) and replay only the commit records above that index, else replay them all:
   channel marks, source offset, aggregate state, outbox (outputs above the receivers' logged
   committed marks), unpublished sink/dead-letter lines.
3. OPENING: take the inbox at this epoch with the committed marks (accepted := max(accepted, committed)).
4. RUNNING, three lanes:
   - main: read a batch (inbox entries or source lines) -> run the fused operators -> append ONE
     commit record (the commit point) -> next batch. Up to ``inflight`` commits are appended before
     the first is acknowledged; each carries ``after`` = the previous append's seq, so HyDFS orders
     them as emitted, and acknowledgements are applied in memory (marks, outputs into the outbox with
     their sequence numbers) in log order. What the next batch reads from (inbox marks, source
     offset, output seqs) is what the commits in flight have taken, not what is acknowledged.
   - apply: the Redis cache step for each commit (applied index, state, outbox, XACK), in order.
   - publish: sink lines / dead letters of each commit to the destination / dead-letter file, keyed
     (task, log index) for idempotency and conditional on the epoch, sink lines in commit order
     (``after``); the next commit logs ``pub``, the index below which all are done.
   Deliveries of committed batches flow as receivers answer; every delivery is answered with
   (epoch, accepted, committed).
   - snapshot: every ``snapshot_every`` commits (or ``snapshot_bytes`` of records), once the commits
     in flight are acknowledged, the state as of the applied index is copied (encoded at once) and
     written to its own file; then a SNAPSHOT record naming it is appended (fenced like a commit),
     then the log is trimmed below the snapshot's index + 1, then the previous snapshot file is
     removed. A crash between any two steps leaves a log that rebuilds: the last snapshot record in
     the log always names a file that is there (a file is removed only after a trim dropped every
     record naming it, and a zombie's trim is fenced).

Why it is exactly-once (per channel; the source offset and the publish keys are the same argument):
the producer's log fixes seq -> payload (seqs are assigned at commit, contiguously, and a new instance
continues from its log; a zombie cannot commit after the fence, so it can only ever send batches that
are in the log). The receiver's inbox for a channel holds exactly seqs committed+1..accepted (accept
only accepted+1; open drops what is committed), and each commit record consumes a contiguous run
after the committed mark and logs the new mark. So every batch is consumed by exactly one commit
record of the receiver's log, and a rebuilt receiver continues from the mark in its log. Outputs are
never recomputed after a failure: the outbox is rebuilt from the log, so re-sent batches (and an
AggregateByKey's running values in them) are byte-identical.
"""

from __future__ import annotations

import enum
import functools
import math
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rainstorm.stream.chain import BatchResult, Chain, dead_lines
from rainstorm.stream.channels import Answer, Deliver, Message, OutChannel, Query
from rainstorm.stream.latency import Latency
from rainstorm.stream.plan import Plan, TaskRef
from rainstorm.stream.records import (
    EMPTY_BATCH,
    CommitRecord,
    FenceRecord,
    Output,
    OutState,
    RecordError,
    SnapshotRecord,
    TaskState,
    decode_batch,
    decode_record,
    decode_state,
    encode_record,
    encode_state,
)
from rainstorm.stream.source import Lines, Stripe
from rainstorm.stream.stores import (
    REFUSALS,
    Applied,
    Exists,
    Fenced,
    InboxEntry,
    InboxStore,
    LogStore,
    Missing,
    NotOwner,
    OutOfOrder,
    SourceReader,
)


@dataclass(frozen=True, slots=True)
class TaskConfig:
    """How a task batches and paces. A source batch closes when it holds ``batch_lines`` lines or
    ``batch_bytes`` of the file, or (paced) when its oldest line has waited ``linger`` seconds
    (Kafka's ``batch.size`` / ``linger.ms``): big batches when there is a backlog, small and quick
    ones when lines trickle in. Up to ``inflight`` commits are appended before the first is
    acknowledged (HyDFS keeps them in order), so processing overlaps replication."""

    batch_lines: int = 32768     # source lines per commit at most
    batch_bytes: int = 1 << 20   # source bytes per read (one commit) at most
    batch_entries: int = 64      # inbox entries (batches) per read (one commit)
    linger: float = 0.005        # paced source: the longest a read line waits for its batch to fill
    inflight: int = 4            # commits appended and not yet acknowledged
    window: int = 16             # batches sent past a receiver's committed mark
    max_outbox: int = 64         # unconfirmed batches on a channel before the task stops reading
    max_queue: int = 8           # commits waiting to be applied / published before it stops reading
    resend: float = 0.5          # seconds without progress before re-sending / re-asking
    rate: float | None = None    # paced source: lines per second per source task arrive (None: all there)
    follow: bool = False         # source: at the end of the file, wait for appended lines (until stopped)
    follow_poll: float = 0.05    # following and caught up: ask the reader again after this long, not at once
    block: int = 1 << 20         # source file blocks: task p of N reads blocks p, p+N, ... (same for all tasks)
    snapshot_every: int = 1000   # commits between snapshots (0: never); a rebuild replays at most about this many
    snapshot_bytes: int = 64 << 20   # ... or this many bytes of commit records, whichever comes first
    snapshot_age: float = 60.0   # ... or, once anything was committed, this many seconds after the last one


# --------------------------------------------------------------------------- effects


@dataclass(frozen=True, slots=True)
class AppendLog:
    """A log append, fenced at ``epoch``, keyed (client, seq); ``after`` > 0: it must land right
    after the append keyed (client, after), so pipelined commits keep their order in the log."""

    op: int
    name: str
    data: bytes
    fence: str
    epoch: int
    client: str
    seq: int
    after: int = 0


@dataclass(frozen=True, slots=True)
class ReadLog:
    op: int
    name: str


@dataclass(frozen=True, slots=True)
class OpenInbox:
    op: int
    task: str
    epoch: int
    marks: dict[int, int]


@dataclass(frozen=True, slots=True)
class ReadInbox:
    op: int
    task: str
    epoch: int
    limit: int


@dataclass(frozen=True, slots=True)
class Accept:
    op: int
    task: str
    epoch: int
    channel: int
    seq: int
    payload: bytes
    end: bool
    floor: int


@dataclass(frozen=True, slots=True)
class ApplyInbox:
    op: int
    task: str
    epoch: int
    update: Applied


@dataclass(frozen=True, slots=True)
class ReadSource:
    """Whole lines of the source from byte ``pos``, in the blocks of ``stripe``, about ``max_bytes``."""

    op: int
    name: str
    pos: int
    stripe: Stripe
    max_bytes: int


@dataclass(frozen=True, slots=True)
class Publish:
    """Append logged lines to the destination or dead-letter file (a LogStore append); ``after``: the
    destination lines of the task's previous commit with any, so they land in commit order."""

    op: int
    name: str
    data: bytes
    fence: str
    epoch: int
    client: str
    seq: int
    after: int = 0


@dataclass(frozen=True, slots=True)
class WriteSnapshot:
    """Write a snapshot file (a whole new file; one that exists already holds the same state)."""

    op: int
    name: str
    data: bytes


@dataclass(frozen=True, slots=True)
class ReadSnapshot:
    op: int
    name: str


@dataclass(frozen=True, slots=True)
class TrimLog:
    """Drop the log's entries below ``below``: fenced and keyed like a log append."""

    op: int
    name: str
    below: int
    fence: str
    epoch: int
    client: str
    seq: int


@dataclass(frozen=True, slots=True)
class RemoveFile:
    """Remove a snapshot file no record names any more (best effort: a failure costs only space)."""

    op: int
    name: str


@dataclass(frozen=True, slots=True)
class Send:
    """A message for the current instance of task ``dest`` (fire and forget; loss is tolerated)."""

    dest: TaskRef
    msg: Message


Effect = (AppendLog | ReadLog | OpenInbox | ReadInbox | Accept | ApplyInbox | ReadSource | Publish | WriteSnapshot
          | ReadSnapshot | TrimLog | RemoveFile | Send)


@dataclass(slots=True)
class _Commit:
    """A commit record appended and not yet acknowledged (commits are applied in log order)."""

    op: int
    rec: CommitRecord
    acks: list[str]
    index: int | None = None
    arrivals: tuple[float, float, int] | None = None   # paced source: first / last line arrival, lines
    size: int = 0


@dataclass(slots=True)
class _Pub:
    """A commit's sink and dead-letter lines, on their way to the destination files."""

    index: int
    sink: bytes
    dead: bytes
    ops: set[int]
    sent: bool = False
    arrivals: tuple[float, float, int] | None = None


class Phase(enum.Enum):
    NEW = "new"
    FENCING = "fencing"
    REBUILDING = "rebuilding"
    OPENING = "opening"
    RUNNING = "running"
    DEAD = "dead"


class Death(enum.Enum):
    """Why an instance ended (typed, for drivers; ``Task.why`` says it for people). Every one of them
    is reported, and the task runs again at a new epoch unless a newer instance already replaced it."""
    FENCED = "fenced"          # a newer epoch fenced the log: this instance is a zombie
    NOT_OWNER = "not_owner"    # the inbox store is owned by a newer instance, lost its data, or failed
    REPLAY = "replay"          # the log does not replay (a record it cannot decode)
    GAP = "gap"                # the inbox skipped a sequence number
    NO_FENCE = "no_fence"      # its own fence is missing from the log it read
    NO_SNAPSHOT = "no_snapshot"  # the snapshot file its log names is not there, or its next one's name is taken


# --------------------------------------------------------------------------- the task


class Task:
    """One task instance (physical stage, partition) at one epoch.

    Driver contract: call ``start(now)``; then repeatedly take ``take_effects()``, perform each (Send:
    route to the task's current instance; others: on the stores, see :func:`execute`) and report its
    outcome with the matching ``on_*`` method (:func:`complete`); feed other tasks' messages to
    ``on_message`` and call ``tick(now)`` every few hundred ms. An effect whose outcome is unknown (a
    timeout) must be retried as is (same idempotency key) until it succeeds or fails for good, never
    dropped. ``phase is Phase.DEAD`` (``why`` says why) means: stop this instance; the leader starts
    the next epoch. ``done`` means the task has nothing left to do for this job.
    """

    def __init__(self, plan: Plan, ref: TaskRef, epoch: int, config: TaskConfig | None = None) -> None:
        self.plan, self.ref, self.epoch = plan, ref, epoch
        self.cfg = config or TaskConfig()
        self.stage, self.part = ref
        if not (0 <= self.stage < len(plan.phys) and 0 <= self.part < plan.phys[self.stage].tasks):
            raise ValueError(f"no task {ref} in this plan")
        self.name = plan.task_name(ref)
        self.log = plan.log_name(ref)
        self.client = f"{self.name}#{epoch}"      # log appends' idempotency key: (client, seq)
        self.is_source = self.stage == 0
        self.is_sink = plan.is_sink(self.stage)
        self.chain = Chain(plan, self.stage)
        self.phase = Phase.NEW
        self.why = ""                               # why it stopped (DEAD), for people
        self.cause: Death | None = None             # why it stopped, for code
        self.now = 0.0
        self.stats: Counter[str] = Counter()
        n_in = 0 if self.is_source else plan.phys[self.stage - 1].tasks
        # receiver side, per input channel (= producer partition)
        self.committed = [0] * n_in
        self.ended = [False] * n_in
        self.accepted = [0] * n_in
        self.producer_epoch = [-1] * n_in
        # producer side
        self.out = [OutChannel(q) for q in range(self.chain.parts)]
        self._acks_logged = [0] * self.chain.parts
        # what commits in flight have taken already (the committed marks above move at acknowledgement)
        self._taken = [0] * n_in
        self._ended_taken = [False] * n_in
        self._seq_taken = [0] * self.chain.parts
        # source
        self.stripe = Stripe(self.part, plan.phys[0].tasks, self.cfg.block)
        self.next_pos = 0                           # committed: where a replacement resumes reading
        self.eof = False
        self._read_pos = 0                          # where the next read starts
        self._eof_taken = False
        self._t0 = 0.0                              # paced: line k (from 0) arrives at t0 + (k + 1) / rate
        self._lines_taken = 0
        self._line_bytes = 100.0                    # average line size seen, to size paced reads
        self.wake_at = math.inf                     # the driver should tick us by then (paced source)
        self._poll_at = 0.0                         # following and caught up: the next read not before this
        self.latency = Latency()                    # arrival -> durable in the sink, per line (paced, fused)
        self.started_at = 0.0
        self.first_commit_at: float | None = None   # recovery: when this instance first committed
        # log / lanes
        self.applied = 0                            # last log index applied in memory
        self.pub = 0                                # highest log index whose lines are published
        self._main = "idle"                         # idle | reading
        self._inflight: deque[_Commit] = deque()
        self._backlog = True                        # the last read was full: more is waiting (pipeline)
        self._apply_q: deque[Applied] = deque()
        self._apply_op: int | None = None
        self._pub_q: deque[_Pub] = deque()
        self._pubs: dict[int, _Pub] = {}            # publish op -> its commit's lines
        self._sink_at: list[int] = []               # rebuild: log indexes of the commits with sink lines
        self._out_prev = 0                          # the last commit whose sink lines were sent to publish
        self._sink_pub = 0                          # the last commit <= pub with sink lines
        self._ops: dict[int, tuple[str, int]] = {}  # op id -> (kind, detail)
        self._next_op = 0
        self._log_seq = 0
        self._prev_seq = 0                          # the last fence / commit / snapshot append: commits follow it
        self._effects: list[Effect] = []
        # snapshots: "" | want (drain, then copy) | writing | recording | trimming
        self._snap = ""
        self._snap_state: TaskState | None = None   # the one being taken
        self._snap_file = ""                        # the file the log's last snapshot record names
        self._new_snap_file = ""
        self._since_commits = 0
        self._since_bytes = 0
        self._snap_at = 0.0                         # when the last snapshot was taken (or the instance started)
        self._removing = 0                          # old snapshot files being removed
        self._snaps_taken = 0                       # names alternate: <log>.snap.<epoch>.<0|1>
        self._replay: list[tuple[int, Any]] = []    # rebuild: the decoded log, while its snapshot is read

    # ------------------------------------------------------------------ driver interface

    def take_effects(self) -> list[Effect]:
        out, self._effects = self._effects, []
        return out

    @property
    def alive(self) -> bool:
        return self.phase is not Phase.DEAD

    @property
    def finished(self) -> bool:
        """All input consumed and committed (source: end of file; others: every channel ended)."""
        return self.eof if self.is_source else all(self.ended)

    @property
    def done(self) -> bool:
        """Finished, every output committed by its receiver, every line published: nothing left to do."""
        return (self.phase is Phase.RUNNING and self.finished and self._main == "idle" and not self._inflight
                and not self._apply_q and self._apply_op is None and not self._pub_q and not self._snap
                and not self._removing
                and all(ch.ended and not ch.pending() for ch in self.out))

    def start(self, now: float = 0.0) -> None:
        """Step 1: the fence record, conditional on our epoch."""
        assert self.phase is Phase.NEW
        self.now = self.started_at = self._snap_at = now
        self.phase = Phase.FENCING
        self._append(encode_record(FenceRecord(self.epoch)), "fence")

    def tick(self, now: float) -> None:
        self.now = now
        if self.phase is not Phase.RUNNING:
            return
        for ch in self.out:
            if ch.peer_epoch < 0:
                self._pump(ch)
            elif ch.stalled(now, self.cfg.resend) and not self._pump(ch):
                self._query(ch)  # everything sent is accepted but not committed: refresh the marks
        self._kick()

    def on_message(self, msg: Message, now: float) -> None:
        self.now = now
        if self.phase is not Phase.RUNNING:
            self.stats["msg_not_ready"] += 1  # not answered: the sender asks again
            return
        if isinstance(msg, Deliver):
            self._on_deliver(msg)
        elif isinstance(msg, Answer):
            self._on_answer(msg)
        else:
            self._on_query(msg)

    # completions ---------------------------------------------------------

    def on_failed(self, op: int, why: str, cause: Death) -> None:
        """An effect failed in a way that ends this instance: fenced (replaced), inbox not owned / lost."""
        if self._ops.pop(op, None) is not None and self.alive:
            self._die(why, cause)

    def on_log_appended(self, op: int, index: int) -> None:
        kind = self._done(op)
        if kind == "fence":
            self.phase = Phase.REBUILDING
            self._emit(ReadLog(self._op("readlog"), self.log))
        elif kind == "commit":
            for c in self._inflight:
                if c.op == op:
                    c.index = index
            while self._inflight and self._inflight[0].index is not None:
                self._committed(self._inflight.popleft())
        elif kind == "snapshot":
            assert self._snap_state is not None
            self._snap = "trimming"
            self._log_seq += 1
            self._emit(TrimLog(self._op("trim"), self.log, self._snap_state.index + 1, self.name, self.epoch,
                               self.client, self._log_seq))
        elif kind == "trim":
            if self._snap_file:
                self._removing += 1
                self._emit(RemoveFile(self._op("remove"), self._snap_file))
            self._snap_file, self._snap, self._snap_state = self._new_snap_file, "", None
            self.stats["snapshots"] += 1
            self._kick()

    def on_snapshot_written(self, op: int) -> None:
        if self._done(op) != "snapwrite":
            return
        assert self._snap_state is not None
        self._snap = "recording"
        self._append(encode_record(SnapshotRecord(self.epoch, self._new_snap_file, self._snap_state.index)),
                     "snapshot")

    def on_snapshot_read(self, op: int, data: bytes) -> None:
        if self._done(op) != "snapread":
            return
        try:
            self._finish_rebuild(decode_state(data))
        except (RecordError, ValueError, IndexError, KeyError) as exc:
            self._die(f"snapshot {self._snap_file} does not restore: {exc}", Death.REPLAY)

    def on_removed(self, op: int) -> None:
        if self._done(op) == "remove":
            self._removing -= 1

    def on_log_read(self, op: int, entries: list[tuple[int, bytes]]) -> None:
        if self._done(op) != "readlog":
            return
        try:
            self._rebuild(entries)
        except (RecordError, ValueError, IndexError, KeyError) as exc:
            self._die(f"log {self.log} does not replay: {exc}", Death.REPLAY)

    def on_inbox_opened(self, op: int, accepted: Mapping[int, int]) -> None:
        if self._done(op) != "open":
            return
        for c in range(len(self.accepted)):
            self.accepted[c] = max(accepted.get(c, 0), self.committed[c])
        self.phase = Phase.RUNNING
        self._t0 = self.now
        for c in range(len(self.accepted)):
            self._answer(c)   # a new instance: its producers go on at once, not at their next resend
        for ch in self.out:
            self._pump(ch)
        self._pump_publish()
        self._kick()

    def on_source_read(self, op: int, chunk: Lines) -> None:
        if self._done(op) != "source":
            return
        eof = chunk.eof and not self.cfg.follow   # following: the end of the file is only "nothing yet"
        limit = self.cfg.batch_lines
        if self.cfg.rate:
            limit = min(limit, self._available())
        if len(chunk.lines) > limit:
            chunk, eof = chunk.cut(limit), False
        self._main = "idle"
        n = len(chunk.lines)
        # a whole file is all there; a followed one has more waiting if this read was full
        self._backlog = not self.cfg.follow or n >= self.cfg.batch_lines or \
            chunk.next - chunk.base >= self.cfg.batch_bytes // 2
        if not chunk.lines and not eof:
            self._read_pos = max(self._read_pos, chunk.next)   # skipped bytes without lines of ours
            # nothing yet: ask again after follow_poll. Asking at once spun the instance's loop (the
            # reader answers "nothing" without I/O, its answer wakes the loop, which ticks and asks):
            # a caught-up --follow source cost a whole core (bench/follow.py)
            self._poll_at = self.now + self.cfg.follow_poll
            self.wake_at = self._poll_at
            return
        if n:
            self._line_bytes = 0.8 * self._line_bytes + 0.2 * ((chunk.next - chunk.base) / n)
        arrivals = None
        if self.cfg.rate:
            k, r = self._lines_taken, self.cfg.rate
            arrivals = (self._t0 + (k + 1) / r, self._t0 + (k + n) / r, n)
            self._lines_taken += n
        res = self.chain.run_source(self.plan.src, chunk)
        self.stats["in_tuples"] += n
        self._read_pos, self._eof_taken = chunk.next, eof
        self._commit_batch(res, [], (chunk.next, eof), [], eof, arrivals)

    def on_inbox_read(self, op: int, entries: list[InboxEntry]) -> None:
        if self._done(op) != "inbox":
            return
        self._backlog = len(entries) >= self.cfg.batch_entries
        if not entries:
            self._main = "idle"
            return
        acks: list[str] = []
        marks: dict[int, int] = {}
        ends: set[int] = set()
        batch: list[Any] = []
        bad: list[Any] = []
        for e in entries:
            acks.append(e.id)
            c = e.channel
            expect = marks.get(c, self._taken[c])
            if e.seq <= expect:
                self.stats["stale_entries"] += 1   # committed before a crash, not acked yet
                continue
            if e.seq != expect + 1:
                self._die(f"inbox gap on channel {c}: seq {e.seq} after {expect}", Death.GAP)
                return
            marks[c] = e.seq
            if e.end:
                ends.add(c)
            try:
                batch.extend(decode_batch(e.payload))
            except RecordError as exc:
                self.stats["bad_batches"] += 1   # cannot come from a producer's log; kept visible, not fatal
                bad.append((f"channel {c} seq {e.seq}", self.chain.ops[0][0] if self.chain.ops else -1,
                            None, None, f"malformed batch: {exc}"))
        if not marks:
            self._apply_q.append(Applied(self.applied, acks))
            self._pump_apply()
            self._main = "idle"
            self._kick()
            return
        res = self.chain.run(batch)
        self.stats["in_tuples"] += len(batch)
        res.dead.extend(bad)
        inputs = [(c, m, c in ends) for c, m in sorted(marks.items())]
        all_ended = all(self._ended_taken[c] or c in ends for c in range(len(self.ended)))
        self._commit_batch(res, inputs, None, acks, all_ended)

    def on_accepted(self, op: int, accepted: int) -> None:
        c = self._ops.get(op, ("", -1))[1]
        if self._done(op) != "accept":
            return
        self.accepted[c] = accepted    # the store's word, even if lower than before (a rolled-back Redis)
        self._answer(c)
        self._kick()

    def on_applied(self, op: int) -> None:
        if self._done(op) != "apply":
            return
        self._apply_op = None
        self._pump_apply()
        self._kick()

    def on_published(self, op: int, index: int) -> None:
        if self._done(op) != "publish":
            return
        item = self._pubs.pop(op)
        item.ops.discard(op)
        if not item.ops and item.arrivals is not None:
            first, last, n = item.arrivals
            self.latency.add(self.now - last, self.now - first, n)
        while self._pub_q and self._pub_q[0].sent and not self._pub_q[0].ops:
            done = self._pub_q.popleft()
            self.pub = done.index
            if done.sink:
                self._sink_pub = done.index
        self._pump_publish()
        self._kick()

    # ------------------------------------------------------------------ internals: bookkeeping

    def _op(self, kind: str, detail: int = 0) -> int:
        self._next_op += 1
        self._ops[self._next_op] = (kind, detail)
        return self._next_op

    def _done(self, op: int) -> str:
        """The kind of a finished op, or '' if unknown or this instance is dead."""
        kind = self._ops.pop(op, ("", 0))[0]
        return kind if self.alive else ""

    def _emit(self, eff: Effect) -> None:
        self._effects.append(eff)

    def _die(self, why: str, cause: Death) -> None:
        self.phase = Phase.DEAD
        self.why, self.cause = why, cause
        self._effects.clear()
        self._ops.clear()

    def _append(self, data: bytes, kind: str) -> int:
        self._log_seq += 1
        op = self._op(kind)
        after = self._prev_seq if kind == "commit" else 0   # pipelined commits land in order
        self._prev_seq = self._log_seq
        self._emit(AppendLog(op, self.log, data, self.name, self.epoch, self.client, self._log_seq, after))
        return op

    # ------------------------------------------------------------------ rebuild

    def _rebuild(self, entries: list[tuple[int, bytes]]) -> None:
        """Check the fences, then restore from the last snapshot (read its file first) or replay all."""
        recs = [(index, decode_record(data)) for index, data in entries]
        fence, snap = -1, None
        for _, rec in recs:
            if isinstance(rec, FenceRecord):
                if rec.epoch > self.epoch:
                    self._die(f"replaced by epoch {rec.epoch}", Death.FENCED)
                    return
                fence = max(fence, rec.epoch)
            elif isinstance(rec, SnapshotRecord):
                snap = rec
        if fence != self.epoch:
            self._die(f"own fence (epoch {self.epoch}) missing from the log read", Death.NO_FENCE)
            return
        self._replay = recs
        if snap is None:
            self._finish_rebuild(None)
            return
        self._snap_file = snap.file
        self._emit(ReadSnapshot(self._op("snapread"), snap.file))

    def _finish_rebuild(self, snap: TaskState | None) -> None:
        recs, self._replay = self._replay, []
        base = 0
        if snap is not None:
            self._restore(snap)
            base = snap.index
            self.stats["snapshot_index"] = base
        fence, replayed = -1, 0
        for index, rec in recs:
            if isinstance(rec, FenceRecord):
                fence = max(fence, rec.epoch)
                continue
            if isinstance(rec, SnapshotRecord) or index <= base:
                continue
            if rec.epoch < fence:
                self.stats["stale_records"] += 1   # a lower epoch after a fence: HyDFS must never allow it
                continue
            self._apply_record(index, rec, live=False)
            replayed += 1
        self._pub_q = deque(x for x in self._pub_q if x.index > self.pub)
        # destination lines land in commit order (a key's running values never go back): the first
        # publish follows the last commit with sink lines that is known published
        self._out_prev = self._sink_pub = max((i for i in self._sink_at if i <= self.pub), default=0)
        self._sink_at = []
        self._taken, self._ended_taken = list(self.committed), list(self.ended)
        self._seq_taken = [ch.last for ch in self.out]
        self._read_pos, self._eof_taken = self.next_pos, self.eof
        self.stats["rebuilt_records"] = len(recs)    # log entries read
        self.stats["replayed_records"] = replayed   # commit records applied on top of the snapshot
        # The records replayed are the log's since its last snapshot: they count toward the next one, and
        # a replacement snapshots at its first chance instead of a whole snapshot_age after its start
        # (the soak saw a replaced task's log reach two intervals' worth before its first trim).
        self._since_commits = replayed
        if replayed:
            self._snap_at = self.now - self.cfg.snapshot_age
        self.phase = Phase.OPENING
        marks = {c: m for c, m in enumerate(self.committed)}
        self._emit(OpenInbox(self._op("open"), self.name, self.epoch, marks))

    # ------------------------------------------------------------------ snapshots

    def _capture(self) -> TaskState:
        """The state as of the applied index (no commit in flight: the chain's state is the applied one)."""
        return TaskState(
            self.applied, list(self.committed), list(self.ended),
            (self.next_pos, self.eof) if self.is_source else None,
            [(stage, list(st.items())) for stage, st in self.chain.state.items() if st],
            [OutState(ch.last, ch.ended, ch.committed, [(q, *ch.batches[q]) for q in sorted(ch.batches)])
             for ch in self.out],
            self.pub, self._sink_pub, [(x.index, x.sink, x.dead) for x in self._pub_q if x.index > self.pub])

    def _restore(self, st: TaskState) -> None:
        if len(st.committed) != len(self.committed) or len(st.ended) != len(self.ended) or \
                len(st.out) != len(self.out) or (st.source is None) == self.is_source:
            raise ValueError("snapshot does not fit this task's plan")
        self.committed, self.ended = list(st.committed), list(st.ended)
        if st.source is not None:
            self.next_pos, self.eof = st.source
        for stage, changes in st.state:
            target = self.chain.state[stage]
            for g, v in changes:
                target[g] = v
        for q, (ch, o) in enumerate(zip(self.out, st.out, strict=True)):
            if o.committed > o.last or [b[0] for b in o.batches] != list(range(o.committed + 1, o.last + 1)):
                raise ValueError(f"snapshot outbox of channel {q} is not the batches above its committed mark")
            ch.last, ch.ended, ch.committed = o.last, o.ended, o.committed
            ch.sent = o.committed
            ch.batches = {seq: (payload, end) for seq, payload, end in o.batches}
            self._acks_logged[q] = o.committed
        self.pub = st.pub
        if st.sink_at:
            self._sink_at.append(st.sink_at)
        self._pub_q = deque(_Pub(i, sink, dead, set()) for i, sink, dead in st.pending)
        self.applied = st.index

    def _snapshot_due(self) -> bool:
        """Every ``snapshot_every`` commits or ``snapshot_bytes`` of records, and at least every
        ``snapshot_age`` seconds while commits come: a slow task's log stays as short as a busy one's."""
        every, size, age = self.cfg.snapshot_every, self.cfg.snapshot_bytes, self.cfg.snapshot_age
        if not every or not self._since_commits:
            return False
        return (self._since_commits >= every or (size > 0 and self._since_bytes >= size)
                or (age > 0 and self.now - self._snap_at >= age))

    def _take_snapshot(self) -> None:
        st = self._capture()
        self._snap_state, self._snap = st, "writing"
        self._since_commits = self._since_bytes = 0
        self._snap_at = self.now
        # two names per instance, alternating: the previous one's file is removed before its name is
        # used again, so a long run leaves no trail of file names (HyDFS keeps a removed name's metadata)
        self._new_snap_file = f"{self.log}.snap.{self.epoch}.{self._snaps_taken % 2}"
        self._snaps_taken += 1
        self._emit(WriteSnapshot(self._op("snapwrite"), self._new_snap_file, encode_state(st)))

    def _apply_record(self, index: int, rec: CommitRecord, live: bool,
                      arrivals: tuple[float, float, int] | None = None) -> None:
        """What a committed record means for the in-memory task: the SAME code for the live commit and
        the replay, so a rebuilt instance is the instance that crashed."""
        for c, mark, end in rec.inputs:
            if mark < self.committed[c]:
                raise ValueError(f"record {index}: channel {c} mark goes back ({mark} < {self.committed[c]})")
            self.committed[c] = mark
            self.ended[c] = self.ended[c] or end
        if rec.source is not None:
            self.next_pos, self.eof = rec.source
        for q, seq, payload, end in rec.outputs:
            self.out[q].add(seq, payload, end)
        if not live:
            for q, mark in rec.acks:
                self.out[q].trim(mark)
                self._acks_logged[q] = max(self._acks_logged[q], mark)
            for stage, changes in rec.state:
                st = self.chain.state[stage]
                for g, v in changes:
                    st[g] = v
            self.pub = max(self.pub, rec.pub)
        if rec.sink and not live:
            self._sink_at.append(index)
        if (rec.sink or rec.dead) and index > self.pub:
            self._pub_q.append(_Pub(index, rec.sink, rec.dead, set(), arrivals=arrivals))
        self.applied = index

    # ------------------------------------------------------------------ main lane

    def _blocked(self) -> bool:
        if (len(self._inflight) >= self.cfg.inflight or len(self._apply_q) >= self.cfg.max_queue
                or len(self._pub_q) >= self.cfg.max_queue):
            return True
        return any(len(ch.batches) >= self.cfg.max_outbox for ch in self.out)

    def _available(self) -> int:
        """Paced source: lines that have arrived and are not taken yet."""
        assert self.cfg.rate
        return int((self.now - self._t0) * self.cfg.rate) - self._lines_taken

    def _kick(self) -> None:
        """Start reading the next batch if a commit slot is free (this overlaps the commits in flight)."""
        self.wake_at = math.inf   # set again below only while a paced batch waits to fill
        if self.phase is not Phase.RUNNING or self._main != "idle":
            return
        if self._snap == "want":
            if self._inflight or self._removing:
                return    # let the pipeline drain (a snapshot is of the applied state), and the name free
            self._take_snapshot()
        if self._blocked():
            return
        if self.is_source and self.cfg.rate:
            self._backlog = self._available() >= self.cfg.batch_lines
        if self._inflight and not self._backlog:
            # lines or entries trickle in: one commit at a time, and the next batch grows while it
            # replicates (commits per second adapt to their cost); a backlog pipelines up to `inflight`
            return
        if self.is_source:
            if self._eof_taken:
                return
            if self.now < self._poll_at:
                self.wake_at = self._poll_at
                return
            # about the bytes of batch_lines lines (the reader splits what it reads into lines: reading a
            # MiB to keep a few lines made each commit cost the whole window, found by profiling)
            limit = min(self.cfg.batch_bytes, int(self.cfg.batch_lines * self._line_bytes * 1.25) + 256)
            if self.cfg.rate:
                rate, avail = self.cfg.rate, self._available()
                oldest = self._t0 + (self._lines_taken + 1) / rate   # when the oldest waiting line arrived
                full = self._t0 + (self._lines_taken + self.cfg.batch_lines) / rate
                if avail < 1:
                    self.wake_at = oldest
                    return
                if avail < self.cfg.batch_lines and self.now < oldest + self.cfg.linger:
                    self.wake_at = min(oldest + self.cfg.linger, full)   # close on time or on size
                    return
                limit = min(limit, int(avail * self._line_bytes * 1.25) + 256)
            self._main = "reading"
            self._emit(ReadSource(self._op("source"), self.plan.src, self._read_pos, self.stripe, limit))
        else:
            if all(self._ended_taken):
                return
            self._main = "reading"
            self._emit(ReadInbox(self._op("inbox"), self.name, self.epoch, self.cfg.batch_entries))

    def _commit_batch(self, res: BatchResult, inputs: list[tuple[int, int, bool]], source: tuple[int, bool] | None,
                      acks: list[str], end: bool, arrivals: tuple[float, float, int] | None = None) -> None:
        outputs: list[Output] = []
        for q in range(len(self.out)):
            payload = res.outputs.get(q)
            if payload is not None or end:
                self._seq_taken[q] += 1
                outputs.append((q, self._seq_taken[q], EMPTY_BATCH if payload is None else payload, end))
        ack_marks = []
        for q, ch in enumerate(self.out):
            if ch.committed > self._acks_logged[q]:
                ack_marks.append((q, ch.committed))
                self._acks_logged[q] = ch.committed
        rec = CommitRecord(self.epoch, inputs, source, outputs, res.sink, dead_lines(res.dead), res.state,
                           ack_marks, self.pub)
        for c, mark, ended in inputs:
            self._taken[c] = mark
            self._ended_taken[c] = self._ended_taken[c] or ended
        sunk = res.sink.count(b"\n")
        if arrivals is not None:   # latency is measured for the lines that produced output
            arrivals = (arrivals[0], arrivals[1], sunk) if sunk else None
        # counters for `rainstorm status` (this instance's work; a replacement starts from 0)
        self.stats["out_tuples"] += sum(res.counts.values()) + sunk
        self.stats["dead_letters"] += len(res.dead)
        data = encode_record(rec)
        self._inflight.append(_Commit(self._append(data, "commit"), rec, acks, arrivals=arrivals, size=len(data)))
        self._main = "idle"
        self.stats["commits"] += 1
        self._kick()

    def _committed(self, c: _Commit) -> None:
        assert c.index is not None
        rec, index = c.rec, c.index
        if self.first_commit_at is None:
            self.first_commit_at = self.now
        self._apply_record(index, rec, live=True, arrivals=c.arrivals)
        self._since_commits += 1
        self._since_bytes += c.size
        if not self._snap and self._snapshot_due():
            self._snap = "want"
        self._apply_q.append(Applied(index, c.acks))
        self._pump_apply()
        self._pump_publish()
        for ch, _, _ in rec.inputs:
            self._answer(ch)
        for q, _, _, _ in rec.outputs:
            self._pump(self.out[q])
        self._kick()

    # ------------------------------------------------------------------ apply and publish lanes

    def _pump_apply(self) -> None:
        if self._apply_op is not None or not self._apply_q or self.phase is not Phase.RUNNING:
            return
        upd = self._apply_q.popleft()
        while self._apply_q:   # several waiting commits: one Redis step
            nxt = self._apply_q.popleft()
            upd = Applied(max(upd.index, nxt.index), upd.acks + nxt.acks)
        self._apply_op = self._op("apply")
        self._emit(ApplyInbox(self._apply_op, self.name, self.epoch, upd))

    def _pump_publish(self) -> None:
        """Publish the lines of up to ``inflight`` commits at once; ``pub`` follows the ones done in a row."""
        if self.phase is not Phase.RUNNING:
            return
        for k, item in enumerate(self._pub_q):
            if k >= self.cfg.inflight:
                break
            if item.sent:
                continue
            item.sent = True
            for name, data, kind in ((self.plan.dest, item.sink, "out"), (self.plan.deadletters, item.dead, "dead")):
                if data:
                    op = self._op("publish")
                    item.ops.add(op)
                    self._pubs[op] = item
                    after = 0
                    if kind == "out":   # sink lines in commit order; dead letters in any order
                        after, self._out_prev = self._out_prev, item.index
                    self._emit(Publish(op, name, data, self.name, self.epoch, f"{self.name}:{kind}", item.index,
                                       after))

    # ------------------------------------------------------------------ channels

    def _producer(self, c: int) -> TaskRef:
        return (self.stage - 1, c)

    def _answer(self, c: int, sure: bool = False) -> None:
        """Our marks for channel ``c``. ``sure``: report only what the log vouches for (accepted =
        committed), so a producer that asks after a stall re-sends past the committed mark and the
        store itself answers the duplicates: the in-memory accepted mark may be ahead of a Redis that
        restarted from an older AOF."""
        acc = self.committed[c] if sure else max(self.accepted[c], self.committed[c])
        self._emit(Send(self._producer(c), Answer(self.ref, self._producer(c), self.epoch, acc, self.committed[c])))

    def _valid_from_producer(self, src: TaskRef, dst: TaskRef) -> bool:
        ok = dst == self.ref and src[0] == self.stage - 1 and src[1] < len(self.committed)
        if not ok:
            self.stats["misrouted"] += 1
        return ok

    def _on_deliver(self, m: Deliver) -> None:
        if not self._valid_from_producer(m.src, m.dst):
            return
        c = m.src[1]
        if m.epoch < self.producer_epoch[c]:
            self.stats["stale_producer"] += 1   # a replaced producer instance: rejected
            self._answer(c)
            return
        self.producer_epoch[c] = m.epoch
        if m.seq <= self.committed[c]:
            # committed (that is in our log): a duplicate for sure. Between committed and accepted the
            # store decides: after a Redis rollback it may no longer hold what we last heard it accept.
            self.stats["duplicates"] += 1
            self._answer(c)
            return
        self._emit(Accept(self._op("accept", c), self.name, self.epoch, c, m.seq, m.payload, m.end, self.committed[c]))

    def _on_query(self, m: Query) -> None:
        if not self._valid_from_producer(m.src, m.dst):
            return
        c = m.src[1]
        if m.epoch >= self.producer_epoch[c]:
            self.producer_epoch[c] = m.epoch
            self._answer(c, sure=True)

    def _on_answer(self, m: Answer) -> None:
        if m.dst != self.ref or m.src[0] != self.stage + 1 or m.src[1] >= len(self.out):
            self.stats["misrouted"] += 1
            return
        ch = self.out[m.src[1]]
        if ch.on_answer(m.epoch, m.accepted, m.committed, self.now):
            self._pump(ch)
            self._kick()

    def _query(self, ch: OutChannel) -> None:
        ch.asked_at = self.now
        dest = (self.stage + 1, ch.part)
        self._emit(Send(dest, Query(self.ref, dest, self.epoch)))

    def _pump(self, ch: OutChannel) -> bool:
        """Send what the window allows; Query a receiver we have not heard from. True if data went out."""
        if self.phase is not Phase.RUNNING:
            return False
        if ch.peer_epoch < 0:
            if ch.pending() and self.now - ch.asked_at >= self.cfg.resend:
                self._query(ch)
            return False
        dest = (self.stage + 1, ch.part)
        sent = False
        for seq, payload, end in ch.take_window(self.cfg.window):
            self._emit(Send(dest, Deliver(self.ref, dest, self.epoch, seq, payload, end)))
            sent = True
        return sent


# --------------------------------------------------------------------------- running effects on sync stores


def store_call(eff: Effect, logs: Any, inbox: Any, source: Any) -> Callable[[], Any]:
    """The store call that performs ``eff`` (not a Send). One table for both drivers: the simulator
    calls it on synchronous stores, the worker awaits it on asynchronous ones (same method names)."""
    if isinstance(eff, AppendLog | Publish):
        return functools.partial(logs.append, eff.name, eff.data, fence=eff.fence, epoch=eff.epoch, client=eff.client,
                                 seq=eff.seq, after=eff.after)
    if isinstance(eff, ReadLog):
        return functools.partial(logs.entries, eff.name)
    if isinstance(eff, OpenInbox):
        return functools.partial(inbox.open, eff.task, eff.epoch, eff.marks)
    if isinstance(eff, ReadInbox):
        return functools.partial(inbox.read, eff.task, eff.epoch, eff.limit)
    if isinstance(eff, Accept):
        return functools.partial(inbox.accept, eff.task, eff.epoch, eff.channel, eff.seq, eff.payload, eff.end,
                                 eff.floor)
    if isinstance(eff, ApplyInbox):
        return functools.partial(inbox.apply, eff.task, eff.epoch, eff.update)
    if isinstance(eff, ReadSource):
        return functools.partial(source.read, eff.name, eff.pos, eff.stripe, eff.max_bytes, final=True)
    if isinstance(eff, WriteSnapshot):
        return functools.partial(logs.put, eff.name, eff.data)
    if isinstance(eff, ReadSnapshot):
        return functools.partial(logs.get, eff.name)
    if isinstance(eff, TrimLog):
        return functools.partial(logs.trim, eff.name, eff.below, fence=eff.fence, epoch=eff.epoch, client=eff.client,
                                 seq=eff.seq)
    if isinstance(eff, RemoveFile):
        return functools.partial(logs.remove, eff.name)
    raise TypeError(f"not a store effect: {eff!r}")


def execute(eff: Effect, logs: LogStore, inbox: InboxStore, source: SourceReader) -> Any:
    """Perform one effect on synchronous stores; the result, or the Fenced / NotOwner raised."""
    try:
        return store_call(eff, logs, inbox, source)()
    except REFUSALS as exc:
        return exc


def complete(task: Task, eff: Effect, result: Any) -> None:
    """Report an effect's outcome (from :func:`execute` or an async twin) to the task."""
    if isinstance(eff, Send):
        raise TypeError("a Send has no outcome")
    if isinstance(result, OutOfOrder):
        raise TypeError("an out-of-order append is retried by the driver, not completed")
    if isinstance(result, Fenced):
        task.on_failed(eff.op, f"fenced: {result}", Death.FENCED)
    elif isinstance(result, NotOwner):
        task.on_failed(eff.op, f"inbox lost: {result}", Death.NOT_OWNER)
    elif isinstance(result, Missing):
        task.on_failed(eff.op, f"snapshot file missing: {result}", Death.NO_SNAPSHOT)
    elif isinstance(result, Exists):
        task.on_failed(eff.op, f"snapshot file name taken: {result}", Death.NO_SNAPSHOT)
    elif isinstance(eff, AppendLog | TrimLog):
        task.on_log_appended(eff.op, result)
    elif isinstance(eff, Publish):
        task.on_published(eff.op, result)
    elif isinstance(eff, ReadLog):
        task.on_log_read(eff.op, result)
    elif isinstance(eff, OpenInbox):
        task.on_inbox_opened(eff.op, result)
    elif isinstance(eff, ReadInbox):
        task.on_inbox_read(eff.op, result)
    elif isinstance(eff, Accept):
        task.on_accepted(eff.op, result)
    elif isinstance(eff, ApplyInbox):
        task.on_applied(eff.op)
    elif isinstance(eff, ReadSource):
        task.on_source_read(eff.op, result)
    elif isinstance(eff, WriteSnapshot):
        task.on_snapshot_written(eff.op)
    elif isinstance(eff, ReadSnapshot):
        task.on_snapshot_read(eff.op, result)
    elif isinstance(eff, RemoveFile):
        task.on_removed(eff.op)

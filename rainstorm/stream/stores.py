"""What the task state machine needs from the outside, as protocols, plus in-memory implementations.

The task never calls these itself (it is sans-IO: it emits effects, see ``task.py``); the driver (the
asyncio worker, or ``sim.py``) performs each effect on a store and reports the result back. The
protocols are written synchronously; the asyncio worker's HyDFS/Redis adapters have the same methods
as coroutines (``AsyncLogStore`` / ``AsyncInboxStore``).

- :class:`LogStore` is HyDFS: task logs, the destination file and the dead-letter file. ``append``
  carries an idempotency key ``(client, seq)`` (a retry returns the original index; HyDFS derives that
  table from its entries) and a fence precondition ``(fence, epoch)``: refused with :class:`Fenced` if
  a higher epoch was recorded for that fence key in that file; on success the epoch is recorded.
  The idempotency key is checked first, as HyDFS's primary does.
- :class:`InboxStore` is one node's Redis: per task, the channel marks (the dedup state), the inbox
  stream, and the applied-index/state/outbox cache. Every call names the owner epoch; a call from
  an older epoch, or for a task this store no longer knows (Redis lost its data), raises
  :class:`NotOwner` and the instance must stop: Redis losing state is a node loss for the task.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from rainstorm.stream.source import Lines, Stripe, read_lines


class Fenced(Exception):
    """A conditional append was refused: a newer instance of the writer recorded a higher epoch."""


class OutOfOrder(Exception):
    """An ordered append arrived before the append it must follow: try it again shortly (the HyDFS
    client does that by itself; the simulator's driver re-queues the effect)."""


class NotOwner(Exception):
    """The inbox store is owned by a newer instance of the task, or lost the task's data."""


class Missing(Exception):
    """A file the task needs is not there (a snapshot file its log names)."""


class Exists(Exception):
    """A snapshot file's name is taken: what it holds cannot be trusted to be this snapshot."""


# what a store call answers by raising, and the task takes as its result (task.complete): one list for
# every driver, so a new answer is not caught by one and missed by another
REFUSALS: tuple[type[Exception], ...] = (Fenced, NotOwner, OutOfOrder, Missing, Exists)


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """One accepted batch in a task's inbox stream (Redis: a stream entry id and its fields)."""

    id: str
    channel: int
    seq: int
    payload: bytes
    end: bool


@dataclass(slots=True)
class Applied:
    """What a commit changes in the node's Redis once its record is in the log: the inbox entries it
    consumed are acknowledged and deleted (XACK + XDEL). ``index``: the commit's log index (the last
    one, when several commits are applied in one step). Redis holds no copy of the task's state,
    outbox or applied index: nothing ever read them (a rebuild reads the log and its snapshot), and
    writing them cost Redis CPU and memory on every commit (docs/performance.md)."""

    index: int
    acks: list[str] = field(default_factory=list)


class LogStore(Protocol):
    def append(self, name: str, data: bytes, *, fence: str, epoch: int, client: str, seq: int,
               after: int = 0) -> int:
        """Append one entry (creating the file if needed); its index. Raises Fenced, and OutOfOrder
        if ``after`` > 0 and the entry keyed (client, after) is not in the file yet."""
        ...

    def entries(self, name: str) -> list[tuple[int, bytes]]:
        """All acknowledged entries as (index, data) that a trim left; [] for a missing file."""
        ...

    def trim(self, name: str, below: int, *, fence: str, epoch: int, client: str, seq: int) -> int:
        """Drop every entry below index ``below``; fenced and keyed like ``append`` (it is ordered
        with the appends). Returns the trim's own index."""
        ...

    def put(self, name: str, data: bytes) -> None:
        """Create a whole file (a snapshot); raises Exists if the name is taken."""
        ...

    def get(self, name: str) -> bytes:
        """A whole file; raises Missing if there is none."""
        ...

    def remove(self, name: str) -> None:
        """Remove a file; a missing one is fine."""
        ...


class InboxStore(Protocol):
    def open(self, task: str, epoch: int, marks: Mapping[int, int]) -> dict[int, int]:
        """Take the task's inbox at ``epoch`` (refuse an older epoch: NotOwner). ``marks`` are the
        committed marks from the log: every channel's accepted mark becomes at least its committed
        mark, entries at or below it are dropped, surviving entries above it are kept (re-read first).
        Returns the accepted marks."""
        ...

    def accept(self, task: str, epoch: int, channel: int, seq: int, payload: bytes, end: bool, floor: int) -> int:
        """Atomically: ``accepted = max(accepted, floor)``; if ``seq == accepted + 1`` add the entry and
        advance. Returns the accepted mark (unchanged for a duplicate or a gap)."""
        ...

    def read(self, task: str, epoch: int, limit: int) -> list[InboxEntry]:
        """Up to ``limit`` entries not yet read by this owner, oldest first (after ``open``: the pending
        ones first, like XREADGROUP from id 0 then ``>``)."""
        ...

    def apply(self, task: str, epoch: int, update: Applied) -> None:
        """Apply one commit's cache changes and ack its entries, atomically."""
        ...


class AsyncLogStore(Protocol):
    async def append(self, name: str, data: bytes, *, fence: str, epoch: int, client: str, seq: int,
                     after: int = 0) -> int: ...

    async def entries(self, name: str) -> list[tuple[int, bytes]]: ...

    async def trim(self, name: str, below: int, *, fence: str, epoch: int, client: str, seq: int) -> int: ...

    async def put(self, name: str, data: bytes) -> None: ...

    async def get(self, name: str) -> bytes: ...

    async def remove(self, name: str) -> None: ...


class AsyncInboxStore(Protocol):
    async def open(self, task: str, epoch: int, marks: Mapping[int, int]) -> dict[int, int]: ...

    async def accept(self, task: str, epoch: int, channel: int, seq: int, payload: bytes, end: bool,
                     floor: int) -> int: ...

    async def read(self, task: str, epoch: int, limit: int) -> list[InboxEntry]: ...

    async def apply(self, task: str, epoch: int, update: Applied) -> None: ...


class SourceReader(Protocol):
    def read(self, name: str, pos: int, stripe: Stripe, max_bytes: int, final: bool) -> Lines:
        """Whole lines of ``stripe`` from byte ``pos`` (see ``source.py``)."""
        ...


# --------------------------------------------------------------------------- in-memory implementations


@dataclass
class MemFile:
    entries: list[tuple[int, bytes]] = field(default_factory=list)
    dedup: dict[tuple[str, int], int] = field(default_factory=dict)
    fences: dict[str, int] = field(default_factory=dict)
    epochs: list[tuple[str, int]] = field(default_factory=list)   # (fence, epoch) per entry, for checks
    last: int = 0                                                  # the last index (trims take one too)
    gone: list[tuple[int, bytes]] = field(default_factory=list)    # trimmed entries, for the checks only


class MemoryLogStore:
    """HyDFS files as the stream layer sees them: idempotent, fenced appends and trims; whole-file reads."""

    def __init__(self) -> None:
        self.files: dict[str, MemFile] = {}
        self.blobs: dict[str, bytes] = {}
        self.names: set[str] = set()        # every file name ever put (the checks count them)
        self.fenced = 0

    def _admit(self, name: str, fence: str, epoch: int, client: str, seq: int,
               after: int) -> tuple[MemFile, int | None]:
        """The conditions of an append or trim, in HyDFS's order: the key, the order, the fence."""
        f = self.files.setdefault(name, MemFile())
        idx = f.dedup.get((client, seq))
        if idx is not None:
            return f, idx
        if after and (client, after) not in f.dedup:
            raise OutOfOrder(f"{name}: ({client}, {seq}) before ({client}, {after})")
        if epoch < f.fences.get(fence, -1):
            self.fenced += 1
            raise Fenced(f"{name}: epoch {epoch} < {f.fences[fence]} recorded for {fence}")
        f.fences[fence] = epoch
        f.last += 1
        f.dedup[(client, seq)] = f.last
        f.epochs.append((fence, epoch))
        return f, None

    def append(self, name: str, data: bytes, *, fence: str, epoch: int, client: str, seq: int,
               after: int = 0) -> int:
        f, idx = self._admit(name, fence, epoch, client, seq, after)
        if idx is not None:
            return idx
        f.entries.append((f.last, bytes(data)))
        return f.last

    def trim(self, name: str, below: int, *, fence: str, epoch: int, client: str, seq: int) -> int:
        f, idx = self._admit(name, fence, epoch, client, seq, 0)
        if idx is not None:
            return idx
        k = 0
        while k < len(f.entries) and f.entries[k][0] < below:
            k += 1
        f.gone.extend(f.entries[:k])
        del f.entries[:k]
        return f.last

    def entries(self, name: str) -> list[tuple[int, bytes]]:
        f = self.files.get(name)
        return list(f.entries) if f else []

    def history(self, name: str) -> list[tuple[int, bytes]]:
        """Every entry ever appended, trimmed ones included (for the simulators' checks)."""
        f = self.files.get(name)
        return sorted(f.gone + f.entries) if f else []

    def put(self, name: str, data: bytes) -> None:
        if name in self.blobs:
            raise Exists(name)
        self.blobs[name] = bytes(data)
        self.names.add(name)

    def get(self, name: str) -> bytes:
        if name not in self.blobs:
            raise Missing(name)
        return self.blobs[name]

    def remove(self, name: str) -> None:
        self.blobs.pop(name, None)

    def data(self, name: str) -> bytes:
        return b"".join(d for _, d in self.entries(name))


@dataclass
class _TaskInbox:
    owner: int
    accepted: dict[int, int] = field(default_factory=dict)
    entries: list[InboxEntry] = field(default_factory=list)   # accepted, not acked
    cursor: int = 0                                           # entries[:cursor] were read by the owner
    applied: int = 0
    next_id: int = 0


class MemoryInboxStore:
    """One node's Redis for the stream layer. ``lose()`` is Redis restarting without its data."""

    def __init__(self) -> None:
        self.tasks: dict[str, _TaskInbox] = {}
        self.history: list[tuple[str, int, int, bytes]] = []   # every accepted (task, channel, seq, payload)

    def lose(self) -> None:
        self.tasks.clear()

    def snapshot(self) -> dict[str, _TaskInbox]:
        """A copy of the data as it is now (what an AOF fsynced now would bring back)."""
        return {k: _TaskInbox(t.owner, dict(t.accepted), list(t.entries), t.cursor, t.applied, t.next_id)
                for k, t in self.tasks.items()}

    def restore(self, snap: dict[str, _TaskInbox]) -> None:
        """Redis restarted from an older AOF: the last writes are gone (``history`` is not data: kept).
        Entry ids keep growing, as Redis stream ids would with the clock."""
        ids = {k: t.next_id for k, t in self.tasks.items()}
        self.tasks = self.snapshot_of(snap)
        for k, t in self.tasks.items():
            t.next_id = max(t.next_id, ids.get(k, 0))

    @staticmethod
    def snapshot_of(snap: dict[str, _TaskInbox]) -> dict[str, _TaskInbox]:
        m = MemoryInboxStore()
        m.tasks = snap
        return m.snapshot()

    def _own(self, task: str, epoch: int) -> _TaskInbox:
        t = self.tasks.get(task)
        if t is None or t.owner != epoch:
            raise NotOwner(f"{task}: inbox not held at epoch {epoch}")
        return t

    def open(self, task: str, epoch: int, marks: Mapping[int, int]) -> dict[int, int]:
        t = self.tasks.get(task)
        if t is not None and t.owner > epoch:
            raise NotOwner(f"{task}: inbox held at epoch {t.owner} > {epoch}")
        if t is None:
            t = self.tasks[task] = _TaskInbox(epoch)
        t.owner = epoch
        for c, m in marks.items():
            t.accepted[c] = max(t.accepted.get(c, 0), m)
        t.entries = [e for e in t.entries if e.seq > marks.get(e.channel, 0)]
        t.cursor = 0
        return dict(t.accepted)

    def accept(self, task: str, epoch: int, channel: int, seq: int, payload: bytes, end: bool, floor: int) -> int:
        t = self._own(task, epoch)
        acc = max(t.accepted.get(channel, 0), floor)
        if seq == acc + 1:
            t.next_id += 1
            t.entries.append(InboxEntry(f"{t.next_id}-0", channel, seq, payload, end))
            acc = seq
            self.history.append((task, channel, seq, payload))
        t.accepted[channel] = acc
        return acc

    def read(self, task: str, epoch: int, limit: int) -> list[InboxEntry]:
        t = self._own(task, epoch)
        out = t.entries[t.cursor:t.cursor + limit]
        t.cursor += len(out)
        return out

    def apply(self, task: str, epoch: int, update: Applied) -> None:
        t = self._own(task, epoch)
        if update.acks:
            gone = set(update.acks)
            read_gone = sum(1 for e in t.entries[:t.cursor] if e.id in gone)
            t.entries = [e for e in t.entries if e.id not in gone]
            t.cursor -= read_gone
        t.applied = max(t.applied, update.index)


class MemorySource:
    """Source files held whole in memory (the simulator's), read through the same scan as HyDFS ones."""

    def __init__(self, files: Mapping[str, bytes] | None = None) -> None:
        self.files: dict[str, bytes] = dict(files or {})

    def read(self, name: str, pos: int, stripe: Stripe, max_bytes: int, final: bool) -> Lines:
        return read_lines(self.files[name], stripe, pos, max_bytes, final)

"""Task log records and tuple batches: msgpack, versioned, validated before any field is used.

A task's log (one HyDFS file per task) is the truth; each append entry holds exactly one record:

``[2, FENCE, epoch]``
    written first by every new task instance (a conditional append at its epoch). Records of lower
    epochs can no longer land after it: HyDFS checks the fence in the same step as the append.
``[2, COMMIT, epoch, inputs, source, outputs, sink, dead, state, acks, pub]``
    one processed batch; the append is the commit point and the entry's log index is the batch's id.

    - ``inputs``  ``[[channel, mark, end], ...]``: the input channels this batch advanced, the
      sequence number reached (the receiver's *committed* mark) and whether the channel ended;
    - ``source``  ``[next_pos, eof]`` or nil: for a source task, the byte offset it reads on from
      (version 1 logged a line number here: its logs are refused, not misread);
    - ``outputs`` ``[[partition, seq, payload, end], ...]``: at most one batch per output channel,
      its sequence number (assigned here, contiguous per channel) and the encoded tuples;
    - ``sink``    bytes: the exact lines to append to the destination (a sink task), or empty;
    - ``dead``    bytes: the exact dead-letter lines to append to the dead-letter file, or empty;
    - ``state``   ``[[stage, [[group, value], ...]], ...]``: new values of the groups this batch changed;
    - ``acks``    ``[[partition, committed], ...]``: receivers' committed marks known at commit time
      (a rebuild drops outbox batches at or below them);
    - ``pub``     the highest log index whose sink/dead lines are known appended (a rebuild republishes
      only what follows).

``[2, SNAPSHOT, epoch, file, index]``
    the task's whole state as of log index ``index`` is in the HyDFS file ``file`` (a
    :class:`TaskState`). A rebuild starts from the last snapshot record: it reads the file and
    replays only the commit records above ``index``. Once the record is in the log, the task trims
    the log below ``index + 1`` (HyDFS drops those entries), so a log holds one snapshot's worth of
    records at most and a rebuild's cost follows the snapshot interval, not the task's age.

A snapshot file holds ``[2, STATE, index, committed, ended, source, state, out, pub, sink_at, pending]``:
the receiver marks and ended flags per input channel, the source offset, every group of every
stateful stage, per output channel ``[last, ended, committed, [[seq, payload, end], ...]]`` (the
outbox above the receiver's committed mark), the published index, the last commit at or below it with
sink lines (publishes are ordered after it), and the sink / dead-letter lines of the commits above
``pub`` as ``[[index, sink, dead], ...]``.

A tuple batch (a channel payload, one inbox stream entry) is ``[[id, key, value], ...]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

from rainstorm.stream.operators import Tup, freeze

VERSION = 2
FENCE, COMMIT, SNAPSHOT, STATE = 0, 1, 2, 3
MAX_INT = (1 << 63) - 1
MAX_ID = 4096

Output = tuple[int, int, bytes, bool]        # (partition, seq, payload, end)
InputMark = tuple[int, int, bool]            # (channel, mark, end)
StateChanges = list[tuple[int, list[tuple[Any, Any]]]]


class RecordError(ValueError):
    """A log record or tuple batch that is not exactly what this version writes."""


@dataclass(frozen=True, slots=True)
class FenceRecord:
    epoch: int


@dataclass(slots=True)
class CommitRecord:
    epoch: int
    inputs: list[InputMark] = field(default_factory=list)
    source: tuple[int, bool] | None = None
    outputs: list[Output] = field(default_factory=list)
    sink: bytes = b""
    dead: bytes = b""
    state: StateChanges = field(default_factory=list)
    acks: list[tuple[int, int]] = field(default_factory=list)
    pub: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    """The task's state as of log ``index`` is in HyDFS file ``file``."""

    epoch: int
    file: str
    index: int


@dataclass(slots=True)
class OutState:
    """One output channel in a snapshot: its last seq, whether it ended, the receiver's committed mark
    and the outbox above it."""

    last: int
    ended: bool
    committed: int
    batches: list[tuple[int, bytes, bool]]


@dataclass(slots=True)
class TaskState:
    """A task's state as of log index ``index`` (the content of a snapshot file)."""

    index: int
    committed: list[int]
    ended: list[bool]
    source: tuple[int, bool] | None
    state: StateChanges
    out: list[OutState]
    pub: int
    sink_at: int
    pending: list[tuple[int, bytes, bytes]]


Record = FenceRecord | CommitRecord | SnapshotRecord

_packer = msgpack.Packer(autoreset=True)


def encode_record(rec: Record) -> bytes:
    if isinstance(rec, FenceRecord):
        return _packer.pack([VERSION, FENCE, rec.epoch])
    if isinstance(rec, SnapshotRecord):
        return _packer.pack([VERSION, SNAPSHOT, rec.epoch, rec.file, rec.index])
    return _packer.pack([VERSION, COMMIT, rec.epoch, rec.inputs, rec.source, rec.outputs, rec.sink, rec.dead,
                         rec.state, rec.acks, rec.pub])


def _nat(v: Any, what: str) -> int:
    if type(v) is int and 0 <= v <= MAX_INT:
        return v
    raise RecordError(f"{what}: expected a non-negative int, got {type(v).__name__}")


def _bool(v: Any, what: str) -> bool:
    if type(v) is bool:
        return v
    raise RecordError(f"{what}: expected a bool, got {type(v).__name__}")


def _bytes(v: Any, what: str) -> bytes:
    if type(v) is bytes:
        return v
    raise RecordError(f"{what}: expected bytes, got {type(v).__name__}")


def _list(v: Any, what: str, n: int | None = None) -> list[Any]:
    if type(v) is not list or (n is not None and len(v) != n):
        raise RecordError(f"{what}: expected a list" + (f" of {n}" if n is not None else ""))
    return v


def decode_record(data: bytes) -> Record:
    """The record in one log entry. Raises RecordError for anything malformed or of another version."""
    try:
        v = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:
        raise RecordError(f"not msgpack: {type(exc).__name__}") from None
    if type(v) is not list or len(v) < 3:
        raise RecordError("record: expected [version, type, epoch, ...]")
    if v[0] != VERSION or type(v[0]) is not int:
        raise RecordError(f"record version {v[0]!r:.20} is not supported (this build reads {VERSION})")
    kind, epoch = v[1], _nat(v[2], "epoch")
    if kind == FENCE and type(kind) is int:
        if len(v) != 3:
            raise RecordError("fence record: expected 3 fields")
        return FenceRecord(epoch)
    if kind == SNAPSHOT and type(kind) is int:
        if len(v) != 5 or type(v[3]) is not str:
            raise RecordError("snapshot record: expected [version, type, epoch, file, index]")
        return SnapshotRecord(epoch, v[3], _nat(v[4], "snapshot index"))
    if kind != COMMIT or type(kind) is not int:
        raise RecordError(f"record type {kind!r:.20} is not supported")
    if len(v) != 11:
        raise RecordError("commit record: expected 11 fields")
    _, _, _, inputs, source, outputs, sink, dead, state, acks, pub = v
    rec = CommitRecord(epoch)
    for x in _list(inputs, "inputs"):
        x = _list(x, "input", 3)
        rec.inputs.append((_nat(x[0], "input channel"), _nat(x[1], "input mark"), _bool(x[2], "input end")))
    if source is not None:
        s = _list(source, "source", 2)
        rec.source = (_nat(s[0], "source offset"), _bool(s[1], "source eof"))
    for x in _list(outputs, "outputs"):
        x = _list(x, "output", 4)
        rec.outputs.append((_nat(x[0], "output partition"), _nat(x[1], "output seq"), _bytes(x[2], "payload"),
                            _bool(x[3], "output end")))
    rec.sink = _bytes(sink, "sink")
    rec.dead = _bytes(dead, "dead")
    rec.state = _state(state)
    for x in _list(acks, "acks"):
        x = _list(x, "ack", 2)
        rec.acks.append((_nat(x[0], "ack partition"), _nat(x[1], "ack mark")))
    rec.pub = _nat(pub, "pub")
    return rec


def _state(v: Any) -> StateChanges:
    out: StateChanges = []
    for x in _list(v, "state"):
        x = _list(x, "state stage", 2)
        changes = []
        for pair in _list(x[1], "state changes"):
            pair = _list(pair, "state change", 2)
            changes.append((freeze(pair[0]), pair[1]))
        out.append((_nat(x[0], "state stage"), changes))
    return out


def encode_state(st: TaskState) -> bytes:
    return _packer.pack([VERSION, STATE, st.index, st.committed, st.ended, st.source, st.state,
                         [[o.last, o.ended, o.committed, o.batches] for o in st.out], st.pub, st.sink_at,
                         st.pending])


def decode_state(data: bytes) -> TaskState:
    """A snapshot file's content. Raises RecordError for anything malformed or of another version."""
    try:
        v = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:
        raise RecordError(f"snapshot is not msgpack: {type(exc).__name__}") from None
    if type(v) is not list or len(v) != 11 or v[0] != VERSION or v[1] != STATE:
        raise RecordError("snapshot: expected [version, STATE, index, ...] of this version")
    _, _, index, committed, ended, source, state, out, pub, sink_at, pending = v
    src = None
    if source is not None:
        s = _list(source, "snapshot source", 2)
        src = (_nat(s[0], "source offset"), _bool(s[1], "source eof"))
    chans = []
    for o in _list(out, "snapshot outputs"):
        o = _list(o, "snapshot output", 4)
        batches = []
        for b in _list(o[3], "outbox"):
            b = _list(b, "outbox batch", 3)
            batches.append((_nat(b[0], "outbox seq"), _bytes(b[1], "outbox payload"), _bool(b[2], "outbox end")))
        chans.append(OutState(_nat(o[0], "last"), _bool(o[1], "ended"), _nat(o[2], "committed"), batches))
    pend = []
    for x in _list(pending, "pending"):
        x = _list(x, "pending commit", 3)
        pend.append((_nat(x[0], "pending index"), _bytes(x[1], "pending sink"), _bytes(x[2], "pending dead")))
    return TaskState(_nat(index, "snapshot index"), [_nat(c, "committed") for c in _list(committed, "committed")],
                     [_bool(e, "ended") for e in _list(ended, "ended")], src, _state(state), chans,
                     _nat(pub, "pub"), _nat(sink_at, "sink_at"), pend)


# --------------------------------------------------------------------------- tuple batches

EMPTY_BATCH = _packer.pack([])


def encode_batch(tuples: list[Tup]) -> bytes:
    """One payload for a channel. Raises (TypeError / ValueError / OverflowError) if a tuple is not
    msgpack-able; :func:`split_encodable` then finds the culprits."""
    return _packer.pack(tuples)


def split_encodable(tuples: list[Tup]) -> tuple[list[Tup], list[tuple[Tup, str]]]:
    """The slow path after :func:`encode_batch` failed: (encodable tuples, [(bad tuple, why)])."""
    good: list[Tup] = []
    bad: list[tuple[Tup, str]] = []
    for t in tuples:
        try:
            _packer.pack(t)
            good.append(t)
        except Exception as exc:
            bad.append((t, f"output cannot be encoded: {type(exc).__name__}: {exc}"))
    return good, bad


def decode_batch(data: bytes) -> list[list[Any]]:
    """A payload from another task, validated: a list of ``[id: str, key, value]``."""
    try:
        v = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:
        raise RecordError(f"batch is not msgpack: {type(exc).__name__}") from None
    if type(v) is not list:
        raise RecordError("batch: expected a list of tuples")
    for t in v:
        if type(t) is not list or len(t) != 3 or type(t[0]) is not str or len(t[0]) > MAX_ID:
            raise RecordError("batch: expected [id, key, value] tuples with a str id")
    return v

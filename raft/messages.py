"""The records Raft exchanges and stores: one generic :class:`Message` (like etcd's ``raftpb.Message``),
log :class:`Entry`, :class:`Snapshot` and :class:`HardState`.

One message shape for every type keeps serialization to a single pair of functions: :meth:`Message.to_wire`
gives plain lists msgpack packs as is, and :func:`from_wire` checks every field of what came off the
network, raising :class:`MalformedMessage` (never anything else) so a bad peer cannot crash a node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

MAX_INT = (1 << 63) - 1
MAX_ID = 256  # longest node id accepted from the wire


class MsgType(StrEnum):
    PRE_VOTE = "prevote"        # "would you vote for me at term+1?"; changes no one's term
    PRE_VOTE_RESP = "prevote_resp"
    VOTE = "vote"
    VOTE_RESP = "vote_resp"
    APPEND = "app"              # entries after (log_index, log_term), and the leader's commit; also the heartbeat
    APPEND_RESP = "app_resp"    # log_index: the follower's matching index, or the rejected one (reject=True)
    SNAPSHOT = "snap"           # install ``snapshot``; answered with APPEND_RESP


_TYPES = {t.value: t for t in MsgType}


class MalformedMessage(ValueError):
    """Wire data that is not a well-formed message; the receiver drops it and counts it."""


@dataclass(frozen=True, slots=True)
class Entry:
    index: int
    term: int
    data: bytes  # b"": the no-op a new leader appends to commit its predecessors' entries (§5.4.2)


@dataclass(frozen=True, slots=True)
class Snapshot:
    index: int   # last log index the state machine state covers
    term: int    # that entry's term, so the log after it can still be checked
    data: bytes


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any message that depends on it is sent."""

    term: int = 0
    vote: str | None = None
    commit: int = 0


@dataclass(slots=True)
class Message:
    type: MsgType
    src: str
    dst: str
    term: int
    log_index: int = 0
    log_term: int = 0
    entries: list[Entry] = field(default_factory=list)
    commit: int = 0
    reject: bool = False
    hint: int = 0  # a rejecting follower's conflict hint: the leader retries after it (fast backoff)
    snapshot: Snapshot | None = None

    def to_wire(self) -> list[Any]:
        snap = self.snapshot
        return [self.type.value, self.src, self.dst, self.term, self.log_index, self.log_term,
                [[e.index, e.term, e.data] for e in self.entries], self.commit, self.reject, self.hint,
                None if snap is None else [snap.index, snap.term, snap.data]]


def _nat(x: Any, what: str) -> int:
    if type(x) is not int or not 0 <= x <= MAX_INT:  # type(): a bool is an int too
        raise MalformedMessage(f"{what}: not a natural number")
    return x


def _id(x: Any, what: str) -> str:
    if not isinstance(x, str) or not 0 < len(x) <= MAX_ID:
        raise MalformedMessage(f"{what}: not a node id")
    return x


def _triple(x: Any, what: str) -> tuple[int, int, bytes]:
    if not isinstance(x, list | tuple) or len(x) != 3 or not isinstance(x[2], bytes):
        raise MalformedMessage(f"{what}: not [index, term, bytes]")
    return _nat(x[0], what), _nat(x[1], what), x[2]


def from_wire(obj: Any) -> Message:
    """The message ``obj`` (from :meth:`Message.to_wire`, through msgpack) encodes, or :class:`MalformedMessage`.

    Beyond types it checks what the core relies on: entries are consecutive from ``log_index + 1`` with
    terms that never decrease nor exceed the message's term, and a SNAPSHOT carries a snapshot."""
    if not isinstance(obj, list | tuple) or len(obj) != 11:
        raise MalformedMessage("not an 11-field list")
    kind, src, dst, term, log_index, log_term, raw_entries, commit, reject, hint, raw_snap = obj
    mtype = _TYPES.get(kind) if isinstance(kind, str) else None
    if mtype is None:
        raise MalformedMessage(f"unknown type {kind!r}"[:80])
    if type(reject) is not bool:
        raise MalformedMessage("reject: not a bool")
    term = _nat(term, "term")
    log_index = _nat(log_index, "log_index")
    if not isinstance(raw_entries, list | tuple):
        raise MalformedMessage("entries: not a list")
    entries: list[Entry] = []
    prev_term = 0
    for k, raw in enumerate(raw_entries):
        index, eterm, data = _triple(raw, "entry")
        if index != log_index + 1 + k or eterm < prev_term or eterm > term:
            raise MalformedMessage("entries: not consecutive, or terms out of order")
        prev_term = eterm
        entries.append(Entry(index, eterm, data))
    snapshot = None if raw_snap is None else Snapshot(*_triple(raw_snap, "snapshot"))
    if mtype is MsgType.SNAPSHOT and snapshot is None:
        raise MalformedMessage("snapshot message without a snapshot")
    return Message(mtype, _id(src, "src"), _id(dst, "dst"), term, log_index, _nat(log_term, "log_term"), entries,
                   _nat(commit, "commit"), reject, _nat(hint, "hint"), snapshot)

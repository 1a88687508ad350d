"""Message schemas: every dict that crosses the wire is checked here before any field is used.

A message is a plain dict with a type in ``"t"`` and only msgpack-able values. :func:`parse`
returns a new dict whose fields are checked and converted (entries become :class:`Entry`,
pairs become tuples) or ``None`` for anything malformed; callers count and drop ``None``.
Unknown extra fields are ignored so a newer peer can add fields.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hydfs.entries import MAX_ID, MAX_INT, Entry, valid_runs

Msg = dict[str, Any]
Check = Callable[[Any], Any]

MAX_NAME = 1024
MAX_LIST = 100_000
MAX_ISR = 64


class Bad(ValueError):
    pass


# Error codes a reply can carry (``err``); clients switch on them.
EXISTS = "exists"            # create of a live file
NOT_FOUND = "not_found"      # no live file of that name
NOT_PRIMARY = "not_primary"  # ask ``primary`` instead (retry)
BUSY = "busy"                # the primary's queue is full (retry later)
FENCED = "fenced"            # fence precondition: a higher epoch is recorded for the key
LEN_MISMATCH = "len_mismatch"  # expect_len precondition failed; ``last`` says the actual length
DELETED = "deleted"          # the file was removed while the request waited
NOT_READY = "not_ready"      # a replica read from a copy no primary has confirmed since restart
IO_ERROR = "io_error"        # the node could not write (full disk, failing disk); ``primary`` says which
OUT_OF_ORDER = "out_of_order"  # ``after`` precondition: the writer's previous append is not ordered yet (retry)
TRIMMED = "trimmed"          # the append's (client id, seq) is at or below its client's trimmed floor: it was
#                              ordered once and a trim dropped it, so it is not appended again
TRIM_RANGE = "trim_range"    # a trim below an index past the marker's own (``last`` says the file's length)


def _int(v: Any) -> int:
    if type(v) is int and 0 <= v <= MAX_INT:
        return v
    raise Bad("int")


def _pos(v: Any) -> int:
    if type(v) is int and 1 <= v <= MAX_INT:
        return v
    raise Bad("pos")


def _bool(v: Any) -> bool:
    if type(v) is bool:
        return v
    raise Bad("bool")


def _str(v: Any) -> str:
    if isinstance(v, str) and len(v) <= MAX_ID:
        return v
    raise Bad("str")


def _name(v: Any) -> str:
    if isinstance(v, str) and 0 < len(v) <= MAX_NAME and "\0" not in v:
        return v
    raise Bad("name")


def _bytes(v: Any) -> bytes:
    if isinstance(v, bytes):
        return v
    raise Bad("bytes")


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return (_int(v[0]), _int(v[1]))
    raise Bad("pair")


def _opt(check: Check) -> Check:
    def inner(v: Any) -> Any:
        return None if v is None else check(v)

    return inner


def _ids(v: Any) -> tuple[str, ...]:
    if isinstance(v, (list, tuple)) and len(v) <= MAX_ISR:
        out = tuple(_str(x) for x in v)
        if len(set(out)) == len(out):
            return out
    raise Bad("ids")


def _pairs(v: Any) -> list[tuple[int, int]]:
    if isinstance(v, (list, tuple)) and len(v) <= MAX_LIST:
        return [_pair(x) for x in v]
    raise Bad("pairs")


def _entries(v: Any) -> list[Entry]:
    if isinstance(v, (list, tuple)) and len(v) <= MAX_LIST:
        try:
            return [Entry.from_wire(x) for x in v]
        except ValueError as exc:
            raise Bad("entry") from exc
    raise Bad("entries")


def _read_items(v: Any) -> list[tuple[int, bytes]]:
    if isinstance(v, (list, tuple)) and len(v) <= MAX_LIST:
        out = []
        for x in v:
            if not isinstance(x, (list, tuple)) or len(x) != 2:
                raise Bad("item")
            out.append((_int(x[0]), _bytes(x[1])))
        return out
    raise Bad("items")


# Preconditions an append may carry; values are checkers. Extend here and in hydfs.conditions.
COND_FIELDS: dict[str, Check] = {"fence": _str, "epoch": _int, "expect_len": _int, "after": _pos}


def _cond(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict) or not v:
        raise Bad("cond")
    out: dict[str, Any] = {}
    for k, x in v.items():
        check = COND_FIELDS.get(k) if isinstance(k, str) else None
        if check is None:
            raise Bad("cond key")
        out[k] = check(x)
    if ("fence" in out) != ("epoch" in out):
        raise Bad("cond fence")
    return out


_REPORT: dict[str, Check] = {
    "created": _opt(_int), "deleted": _opt(_pair), "last": _int, "last_term": _int, "runs": _pairs,
    "ver": _opt(_pair), "isr": _ids, "trusted": _bool, "first": _opt(_pos),
}

SCHEMAS: dict[str, dict[str, Check]] = {
    # node -> node
    "prepare": {"f": _name, "term": _int},
    "prepared": {"f": _name, "term": _int, "ok": _bool, "promised": _int, **_REPORT},
    "fetch": {"f": _name, "term": _int, "start": _int, "stop": _int},
    "fetched": {"f": _name, "term": _int, "ok": _bool, "start": _int, "entries": _entries},
    "append": {"f": _name, "term": _int, "created": _int, "prev": _int, "prev_term": _int,
               "entries": _entries, "commit": _int, "top": _int,
               "base": _opt(_pairs)},  # install: drop every entry, the log ends at prev with these terms
    "append_ack": {"f": _name, "term": _int, "ok": _bool, "promised": _int, "match": _int, "last": _int,
                   "runs": _opt(_pairs), "ver": _opt(_pair), "trusted": _bool, "io": _opt(_bool),
                   "first": _opt(_pos)},
    "set_isr": {"f": _name, "term": _int, "ver": _pair, "isr": _ids, "created": _opt(_int),
                "commit": _int},
    "isr_ack": {"f": _name, "term": _int, "ok": _bool, "promised": _int, "ver": _pair, "trusted": _bool},
    "delete": {"f": _name, "term": _int, "at": _pair},
    "delete_ack": {"f": _name, "term": _int, "ok": _bool, "promised": _int},
    "offer": {"f": _name, "promised": _int, "last": _int, "last_term": _int, "trusted": _bool},
    "release": {"f": _name, "term": _int, "ver": _opt(_pair), "isr": _ids},
    # client -> node
    "c_create": {"rid": _int, "f": _name, "client": _str, "seq": _int, "data": _bytes},
    "c_append": {"rid": _int, "f": _name, "client": _str, "seq": _int, "data": _bytes,
                 "cond": _opt(_cond)},
    "c_trim": {"rid": _int, "f": _name, "client": _str, "seq": _int, "below": _pos, "cond": _opt(_cond)},
    "c_get": {"rid": _int, "f": _name, "start": _int, "limit": _int, "replica_ok": _bool},
    "c_read": {"rid": _int, "f": _name, "off": _int, "len": _int, "replica_ok": _bool},  # committed bytes
    "c_merge": {"rid": _int, "f": _name},
    "c_rm": {"rid": _int, "f": _name},
    "c_ls": {"rid": _int, "f": _name},
    "c_store": {"rid": _int},
    # node -> client
    "reply": {"rid": _int, "ok": _bool, "err": _opt(_str)},
}

# Optional fields of a reply, checked when present.
REPLY_FIELDS: dict[str, Check] = {
    "index": _int, "commit": _int, "entries": _read_items, "primary": _opt(_str), "replicas": _ids,
    "isr": _ids, "term": _int, "last": _int, "files": lambda v: [_name(x) for x in _list(v)],
    "checked": _int, "data": _bytes, "size": _int, "first": _pos,
}

CLIENT_TYPES = frozenset(t for t in SCHEMAS if t.startswith("c_"))


def _list(v: Any) -> list[Any]:
    if isinstance(v, (list, tuple)) and len(v) <= MAX_LIST:
        return list(v)
    raise Bad("list")


def parse(msg: object) -> Msg | None:
    """The checked, converted message, or None if it is not exactly one of :data:`SCHEMAS`."""
    if not isinstance(msg, dict):
        return None
    kind = msg.get("t")
    schema = SCHEMAS.get(kind) if isinstance(kind, str) else None
    if schema is None:
        return None
    out: Msg = {"t": kind}
    try:
        for key, check in schema.items():
            out[key] = check(msg.get(key))
        if kind == "reply":
            for key, check in REPLY_FIELDS.items():
                if key in msg:
                    out[key] = check(msg[key])
        if out.get("runs") is not None:
            out["runs"] = valid_runs(out["runs"], out["last"])
        if out.get("base") is not None:
            out["base"] = valid_runs(out["base"], out["prev"])
    except ValueError:  # Bad, or bad runs
        return None
    return out


def reply(rid: int, err: str | None = None, **fields: Any) -> Msg:
    return {"t": "reply", "rid": rid, "ok": err is None, "err": err, **fields}


def entries_wire(entries: list[Entry]) -> list[list[Any]]:
    return [e.to_wire() for e in entries]


def pair(v: tuple[int, int] | None) -> list[int] | None:
    return [v[0], v[1]] if v is not None else None


def runs_wire(runs: list[tuple[int, int]]) -> list[list[int]]:
    return [[a, b] for a, b in runs]

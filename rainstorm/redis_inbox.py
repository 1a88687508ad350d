"""A task's inbox, marks and cache in its node's Redis: the :class:`AsyncInboxStore` the worker uses.

Keys, for task ``T`` (``<job>:<stage>:<index>``), all documented in docs/redis-keys.md:

- ``rs:T:owner``   the epoch of the instance that owns these keys (every script checks it first)
- ``rs:T:marks``   hash channel -> accepted mark (the dedup state)
- ``rs:T:in``      the inbox stream (fields ``c`` channel, ``s`` seq, ``p`` payload, ``e`` end), read
  through consumer group ``g`` by consumer ``T``; acked entries are deleted, never trimmed

Each operation is one server-side script, so "accept only accepted + 1, XADD, advance" and "ack the
entries a commit consumed" are atomic. The task's state and outbox live in its log and snapshots
only (earlier versions also kept ``applied``, ``state`` and ``out:P`` keys here; cleanup still
removes them). A missing owner key means Redis lost the task
(restart without data): that is a node loss for the task, reported as :class:`NotOwner`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis.asyncio as aredis
from redis.exceptions import ResponseError

from rainstorm.stream.stores import Applied, InboxEntry, NotOwner

GROUP = "g"

_OWNER_CHECK = """
local owner = redis.call('GET', KEYS[1])
if owner ~= ARGV[1] then return redis.error_reply('NOTOWNER ' .. tostring(owner)) end
"""

_OPEN = """
local owner = redis.call('GET', KEYS[1])
if owner and tonumber(owner) > tonumber(ARGV[1]) then return redis.error_reply('NOTOWNER ' .. owner) end
redis.call('SET', KEYS[1], ARGV[1])
local marks = {}
for i = 2, #ARGV, 2 do
  local c, m = ARGV[i], tonumber(ARGV[i + 1])
  marks[c] = m
  local acc = tonumber(redis.call('HGET', KEYS[2], c) or '0')
  redis.call('HSET', KEYS[2], c, math.max(acc, m))
end
if redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[3], 'g', '0', 'MKSTREAM')
else
  local ok = pcall(redis.call, 'XGROUP', 'CREATE', KEYS[3], 'g', '0')
end
local stale = {}
for _, e in ipairs(redis.call('XRANGE', KEYS[3], '-', '+')) do
  local f = {}
  for j = 1, #e[2], 2 do f[e[2][j]] = e[2][j + 1] end
  if tonumber(f['s']) <= (marks[f['c']] or 0) then table.insert(stale, e[1]) end
end
for i = 1, #stale, 500 do
  local chunk = {unpack(stale, i, math.min(i + 499, #stale))}
  redis.call('XACK', KEYS[3], 'g', unpack(chunk))
  redis.call('XDEL', KEYS[3], unpack(chunk))
end
return redis.call('HGETALL', KEYS[2])
"""

_ACCEPT = _OWNER_CHECK + """
local c, seq, floor = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[6])
local acc = tonumber(redis.call('HGET', KEYS[2], c) or '0')
if floor > acc then acc = floor end
if seq == acc + 1 and (tonumber(ARGV[7]) == 0 or redis.call('XLEN', KEYS[3]) < tonumber(ARGV[7])) then
  redis.call('XADD', KEYS[3], '*', 'c', c, 's', seq, 'p', ARGV[4], 'e', ARGV[5])
  acc = seq
end
redis.call('HSET', KEYS[2], c, acc)
return acc
"""

_READ = _OWNER_CHECK + """
return redis.call('XREADGROUP', 'GROUP', 'g', ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[2], ARGV[4])
"""

_APPLY = _OWNER_CHECK + """
local n = #ARGV - 1
if n > 0 then
  local ids = {unpack(ARGV, 2)}
  redis.call('XACK', KEYS[2], 'g', unpack(ids))
  redis.call('XDEL', KEYS[2], unpack(ids))
end
return 1
"""


# Delete a task's keys unless a newer instance owns them (ARGV[1]: the lowest epoch to keep; '' none):
# an old node's cleanup never takes the keys of an instance that moved back here meanwhile.
_FORGET = """
local owner = redis.call('GET', KEYS[1])
if ARGV[1] ~= '' and owner and tonumber(owner) >= tonumber(ARGV[1]) then return -1 end
return redis.call('DEL', unpack(KEYS))
"""

_SUFFIXES = ("owner", "marks", "in", "applied", "state")   # the last two: earlier versions' caches


def glob_escape(text: str) -> str:
    """``text`` as a literal in a SCAN pattern: job names are the user's and may hold ``*?[]\\``."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def task_of_key(key: str) -> str | None:
    """The task whose key this is (``rs:<task>:<suffix>`` or ``rs:<task>:out:<partition>``), else None."""
    if not key.startswith("rs:"):
        return None
    base, sep, last = key[3:].rpartition(":")
    if not sep:
        return None
    if last.isdigit() and base.endswith(":out"):
        return base[:-4] or None
    return base if last in _SUFFIXES and base else None


def keys(task: str) -> dict[str, str]:
    base = f"rs:{task}"
    return {"owner": f"{base}:owner", "marks": f"{base}:marks", "in": f"{base}:in",
            "applied": f"{base}:applied", "state": f"{base}:state", "out": f"{base}:out:"}


def _not_owner(exc: ResponseError, task: str, epoch: int) -> NotOwner | ResponseError:
    if str(exc).startswith("NOTOWNER"):
        return NotOwner(f"{task}: inbox not held at epoch {epoch} ({exc})")
    return exc


class RedisInboxStore:
    """``max_len`` bounds each inbox (0: unbounded): a full inbox accepts nothing, so the producer
    keeps the batch in its outbox and retries, and a slow stage slows its upstream (backpressure)."""

    def __init__(self, client: aredis.Redis, max_len: int = 0) -> None:
        self.r = client
        self.max_len = max_len
        self._open = self.r.register_script(_OPEN)
        self._accept = self.r.register_script(_ACCEPT)
        self._read = self.r.register_script(_READ)
        self._apply = self.r.register_script(_APPLY)
        self._forget = self.r.register_script(_FORGET)
        self._cursor: dict[str, str] = {}  # per task: pending ids re-read first after open, then ">"

    async def open(self, task: str, epoch: int, marks: Mapping[int, int]) -> dict[int, int]:
        k = keys(task)
        argv: list[Any] = [epoch]
        for c, m in marks.items():
            argv += [c, m]
        try:
            flat = await self._open(keys=[k["owner"], k["marks"], k["in"]], args=argv)
        except ResponseError as exc:
            raise _not_owner(exc, task, epoch) from None
        self._cursor[task] = "0"
        return {int(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}

    async def accept(self, task: str, epoch: int, channel: int, seq: int, payload: bytes, end: bool,
                     floor: int) -> int:
        k = keys(task)
        try:
            return int(await self._accept(keys=[k["owner"], k["marks"], k["in"]],
                                          args=[epoch, channel, seq, payload, int(end), floor, self.max_len]))
        except ResponseError as exc:
            raise _not_owner(exc, task, epoch) from None

    async def read(self, task: str, epoch: int, limit: int) -> list[InboxEntry]:
        """Pending entries (read by an earlier instance, never acked) first, then new ones."""
        out: list[InboxEntry] = []
        while len(out) < limit:
            cursor = self._cursor.get(task, ">")
            items = await self._xread(task, epoch, limit - len(out), cursor)
            out += [e for _, e in items if e is not None]
            if cursor == ">":
                break
            self._cursor[task] = items[-1][0] if items else ">"
        return out

    async def _xread(self, task: str, epoch: int, count: int, cursor: str) -> list[tuple[str, InboxEntry | None]]:
        k = keys(task)
        try:
            res = await self._read(keys=[k["owner"], k["in"]], args=[epoch, task, count, cursor])
        except ResponseError as exc:
            raise _not_owner(exc, task, epoch) from None
        out: list[tuple[str, InboxEntry | None]] = []
        for eid, fields in res[0][1] if res else []:
            if not fields:  # a pending id whose entry was deleted
                out.append((eid.decode(), None))
                continue
            f = {fields[i]: fields[i + 1] for i in range(0, len(fields), 2)}
            out.append((eid.decode(), InboxEntry(eid.decode(), int(f[b"c"]), int(f[b"s"]), f[b"p"], f[b"e"] == b"1")))
        return out

    async def apply(self, task: str, epoch: int, update: Applied) -> None:
        k = keys(task)
        try:
            await self._apply(keys=[k["owner"], k["in"]], args=[epoch, *update.acks])
        except ResponseError as exc:
            raise _not_owner(exc, task, epoch) from None

    async def forget(self, task: str, keep_from: int | None = None) -> bool:
        """Delete every key of ``task`` (inbox, marks, caches, outboxes), unless an instance of epoch
        ``keep_from`` or later owns them. True if they are gone."""
        k = keys(task)
        outs = [x async for x in self.r.scan_iter(match=glob_escape(k["out"]) + "*")]
        names = [k["owner"], *(k[n] for n in _SUFFIXES if n != "owner"), *outs]
        if int(await self._forget(keys=names, args=["" if keep_from is None else keep_from])) < 0:
            return False
        self._cursor.pop(task, None)
        return True

    async def tasks_with_keys(self, run: str | None = None) -> set[str]:
        """Tasks (of ``run``, or of every run) that have keys in this Redis."""
        match = f"rs:{glob_escape(run)}:*" if run is not None else "rs:*"
        out = set()
        async for key in self.r.scan_iter(match=match, count=1000):
            task = task_of_key(key.decode() if isinstance(key, bytes) else str(key))
            if task is not None and (run is None or task.rsplit(":", 2)[0] == run):
                out.add(task)
        return out

"""The asyncio edge of a HyDFS node: moves :class:`hydfs.node_core.NodeCore` messages over RPC.

* node -> node: batches (``hydfs.msgs``), one ordered sender per destination; what the receiver has
  to say to the sender right away (acks) comes back in the RPC's answer, saving a round trip. A
  failed send drops the batch, which the core treats like network loss (it retries by itself).
* client -> node: ``hydfs.client`` hands a client's message to the core and long-polls that
  client's mailbox, so replies the core sends later (after replication) still reach it.
Membership comes in only through :class:`gossip.types.MembershipView`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gossip.types import MemberEvent, MembershipView
from hydfs.context import CoreConfig
from hydfs.disk import DiskStorage
from hydfs.messages import IO_ERROR
from hydfs.node_core import NodeCore
from net.rpc import RemoteError, RpcClient, RpcServer

log = logging.getLogger(__name__)


@dataclass
class ServerConfig:
    tick: float = 0.02            # how often the core's timers run
    poll_max: float = 10.0        # longest a client's long poll may wait
    mailbox_idle: float = 60.0    # a client silent this long loses its undelivered replies
    fsync: str = "interval"       # "always": an append is acknowledged once on disk at every in-sync
    #                               replica; "interval": once in their OS page cache, on disk within
    #                               fsync_interval (metadata is always on disk before anyone hears of it)
    fsync_interval: float = 1.0   # how often written logs are fdatasynced in "interval" mode (as Redis everysec)
    send_bytes: int = 2 << 20     # entry data per node-to-node RPC
    send_inflight: int = 4        # RPCs to one node unanswered at a time
    lag_timeout: float = CoreConfig.lag_timeout  # an in-sync replica behind and not advancing this
    #                               long (alive but mute or stuck) leaves the file's in-sync set

    def check(self) -> str | None:
        """What is wrong with these settings, if anything (one line)."""
        if self.fsync not in FSYNC_MODES:
            return f"fsync must be one of {', '.join(FSYNC_MODES)}, not {self.fsync!r}"
        if (self.fsync_interval <= 0 or self.tick <= 0 or self.send_bytes <= 0 or self.send_inflight < 1
                or self.lag_timeout <= 0):
            return "fsync_interval, tick, send_bytes, send_inflight and lag_timeout must be positive"
        return None


FSYNC_MODES = ("always", "interval")
DISK_FAILING_FOR = 30.0  # seconds after the last write error during which a node's disk shows "failing"


def _data_size(msg: dict[str, Any]) -> int:
    """Bytes of entry data a protocol message carries (appends and fetch answers)."""
    entries = msg.get("entries")
    if not isinstance(entries, list):
        return 0
    return sum(len(e[4]) for e in entries if isinstance(e, list) and len(e) > 4 and isinstance(e[4], bytes))


def _says_io_error(msg: dict[str, Any]) -> bool:
    """A node's "I could not write" (to a primary or a client): it depends on no unsynced write."""
    return msg.get("io") is True or msg.get("err") == IO_ERROR


def _fdatasync_all(fds: list[int]) -> None:
    failed: OSError | None = None
    for fd in fds:
        try:
            os.fdatasync(fd)
        except OSError as exc:
            failed = exc
        finally:
            os.close(fd)
    if failed is not None:
        raise failed


class _Poll:
    """One waiting long poll: the request id it waits for (None: anything) and what it was handed."""

    __slots__ = ("event", "msgs", "rid")

    def __init__(self, rid: Any) -> None:
        self.rid = rid
        self.msgs: list[dict[str, Any]] = []
        self.event = asyncio.Event()


class _Mailbox:
    """A client's replies on their way out. Several requests of one client may long-poll at once (an
    ``asyncio.gather`` of two appends), so a reply goes to the poll of the request that carries its
    rid: a poll woken for another's reply would return empty and leave its own, coming a moment
    later, without a poll until the client's retry. A reply no open poll asked for waits in ``msgs``
    and leaves with the next poll that returns."""

    def __init__(self) -> None:
        self.msgs: list[dict[str, Any]] = []
        self.polls: list[_Poll] = []
        self.used = time.monotonic()

    def put(self, msg: dict[str, Any]) -> None:
        rid = msg.get("rid")
        mine = [p for p in self.polls if p.rid is None or p.rid == rid]
        if not mine:
            self.msgs.append(msg)
            return
        newest = mine[-1]  # a retry's poll (same rid) is the one the client most likely still reads
        newest.msgs.append(msg)
        for p in mine:     # older polls of the same request: the newer one answers for them
            p.event.set()

    async def poll(self, rid: Any, wait: float) -> list[dict[str, Any]]:
        """Wait up to ``wait`` seconds for a reply with ``rid`` (None: any); return it with every reply
        that is waiting for no open poll."""
        if wait > 0 and not any(rid is None or m.get("rid") == rid for m in self.msgs):
            p = _Poll(rid)
            self.polls.append(p)
            try:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(p.event.wait(), wait)
            finally:
                self.polls.remove(p)
                self.msgs[:0] = p.msgs  # returned below, or kept for the next poll if we are cancelled
        out, self.msgs = self.msgs, []
        return out


class HydfsServer:
    def __init__(self, node_id: str, data_dir: Path, rpc: RpcServer, client: RpcClient,
                 membership: MembershipView, core_config: CoreConfig | None = None,
                 config: ServerConfig | None = None) -> None:
        self.node_id = node_id
        self.cfg = config or ServerConfig()
        problem = self.cfg.check()
        if problem:
            raise ValueError(problem)
        self.storage = DiskStorage(data_dir / "hydfs", fsync_data=self.cfg.fsync == "always")
        core_config = replace(core_config or CoreConfig(), lag_timeout=self.cfg.lag_timeout)
        self.core = NodeCore(node_id, self.storage, core_config)
        self.rpc_client = client
        self.membership = membership
        self.addrs: dict[str, str] = {}
        self._queues: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._senders: dict[str, asyncio.Task[None]] = {}
        self._wakers: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self._mail: dict[str, _Mailbox] = {}
        self._task: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._io_seen = 0                       # io errors counted when last looked at
        self._io_last: float | None = None      # when the last one happened (monotonic)
        rpc.register("hydfs.msgs", self._on_msgs)
        rpc.register("hydfs.client", self._on_client)
        rpc.register("hydfs.info", self._on_info)
        membership.subscribe(self._on_event)

    @staticmethod
    def clock() -> float:
        return time.monotonic()

    async def start(self) -> None:
        if self.storage.recovered_bytes:
            log.warning("cut torn tails at start-up", extra={"bytes": self.storage.recovered_bytes})
        self._refresh_view()
        self._task = asyncio.create_task(self._ticker())
        if self.cfg.fsync == "interval":
            self._flusher = asyncio.create_task(self._flush_logs())

    async def close(self) -> None:
        tasks = [t for t in [self._task, self._flusher, *self._senders.values()] if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self.storage.close()

    # -- membership -------------------------------------------------------------------------------
    def _refresh_view(self) -> None:
        alive = self.membership.alive()
        self.addrs = {m.node_id: m.addr for m in alive}
        self.core.on_membership(list(self.addrs), self.clock())
        self._flush()

    def _on_event(self, ev: MemberEvent) -> None:
        if ev.kind == "self_failed":
            self.core.on_declared_failed(self.clock())
        self._refresh_view()

    # -- the core's clock and output --------------------------------------------------------------
    async def _ticker(self) -> None:
        last_view: frozenset[str] = frozenset()
        while True:
            await asyncio.sleep(self.cfg.tick)
            view = frozenset(m.node_id for m in self.membership.alive())
            if view != last_view:  # suspect->alive and the like change no event but may change addresses
                last_view = view
                self._refresh_view()
            self.core.tick(self.clock())
            self._flush()
            self._reap_mailboxes()

    async def _flush_logs(self) -> None:
        """``fsync = "interval"``: fdatasync the logs written lately, off the event loop."""
        while True:
            await asyncio.sleep(self.cfg.fsync_interval)
            fds = self.storage.take_unsynced()
            if fds:
                try:
                    await asyncio.to_thread(_fdatasync_all, fds)
                except OSError as exc:
                    log.error("hydfs fdatasync failed", extra={"error": exc.strerror or str(exc)})

    def _flush(self, reply_to: str | None = None) -> list[dict[str, Any]]:
        """Send what the core has to say, after making what it wrote durable. Messages for ``reply_to``
        (the node whose batch we are handling) are returned instead: they ride on the RPC's answer."""
        back: list[dict[str, Any]] = []
        out = self.core.take_outgoing()
        while out:
            try:
                self.storage.sync()  # persist, then send: nobody hears of a write a crash could undo
            except OSError as exc:  # full or failing disk: say nothing (as if lost); the protocol retries
                kept = [(d, m) for d, m in out if _says_io_error(m)]
                log.error("hydfs sync failed; messages dropped", extra={"error": exc.strerror or str(exc),
                                                                        "messages": len(out) - len(kept)})
                self.core.stats["io_error"] += 1
                out = kept  # "I could not write" promises nothing: it still goes out
            for dest, msg in out:
                if dest == self.node_id:
                    self.core.receive(self.node_id, msg, self.clock())
                elif dest == reply_to:
                    back.append(msg)
                elif dest in self.addrs:
                    self._queues[dest].append(msg)
                    self._wakers[dest].set()
                    if dest not in self._senders or self._senders[dest].done():
                        self._senders[dest] = asyncio.create_task(self._sender(dest))
                else:
                    box = self._mail.get(dest)
                    if box is None:
                        box = self._mail[dest] = _Mailbox()
                    box.put(msg)
            out = self.core.take_outgoing()
        for event, fields in self.core.take_notes():
            log.log(logging.ERROR if event.endswith("error") else logging.INFO, "hydfs %s", event, extra=fields)
        if self.core.stats["io_error"] != self._io_seen:
            self._io_seen, self._io_last = self.core.stats["io_error"], self.clock()
        return back

    async def _sender(self, dest: str) -> None:
        """Ship ``dest``'s queue in order, in batches of about ``send_bytes`` of entry data, with up to
        ``send_inflight`` batches unanswered: a replica being filled receives the next batch while it
        writes the last one, and acks ride back on the answers."""
        inflight: set[asyncio.Task[None]] = set()
        while True:
            queue = self._queues[dest]
            if not queue:
                self._wakers[dest].clear()
                try:
                    await asyncio.wait_for(self._wakers[dest].wait(), 30)
                except TimeoutError:
                    if not inflight:
                        return
                continue
            if len(inflight) >= self.cfg.send_inflight:
                await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                continue
            addr = self.addrs.get(dest)
            if addr is None:
                queue.clear()  # not alive any more: as if lost
                continue
            size, k = 0, 0
            while k < len(queue) and (k == 0 or size < self.cfg.send_bytes):
                size += _data_size(queue[k])
                k += 1
            batch = queue[:k]
            del queue[:k]
            t = asyncio.create_task(self._call(dest, addr, batch))
            inflight.add(t)
            t.add_done_callback(inflight.discard)

    async def _call(self, dest: str, addr: str, batch: list[dict[str, Any]]) -> None:
        try:
            answers = await self.rpc_client.call(addr, "hydfs.msgs", {"src": self.node_id, "ms": batch}, timeout=5.0)
        except Exception as exc:  # Unreachable, RpcError, ...: the protocol resends what matters
            log.debug("send to %s failed: %s", dest, exc)
            await asyncio.sleep(0.05)
            return
        if isinstance(answers, list) and answers:
            now = self.clock()
            for m in answers:
                self.core.receive(dest, m, now)
            self._flush()

    # -- RPC handlers ---------------------------------------------------------------------------
    async def _on_msgs(self, a: dict[str, Any]) -> list[dict[str, Any]]:
        src, msgs = a.get("src"), a.get("ms")
        if not isinstance(src, str) or not isinstance(msgs, list):
            self.core.stats["malformed"] += 1
            return []
        now = self.clock()
        for m in msgs:
            self.core.receive(src, m, now)
        return self._flush(reply_to=src if src in self.addrs else None)

    async def _on_client(self, a: dict[str, Any]) -> list[dict[str, Any]]:
        src, msg, wait = a.get("src"), a.get("m"), a.get("wait", 0)
        if not isinstance(src, str) or not src or src in self.addrs:
            raise RemoteError("bad client id")
        if not isinstance(wait, (int, float)):
            raise RemoteError("bad wait")
        box = self._mail.get(src)
        if box is None:
            box = self._mail[src] = _Mailbox()
        box.used = self.clock()
        if msg is not None:
            self.core.receive(src, msg, self.clock())
            self._flush()
        rid = msg.get("rid") if isinstance(msg, dict) else None
        out = await box.poll(rid, min(float(wait), self.cfg.poll_max))
        box.used = self.clock()
        return out

    def local_range(self, name: str, offset: int, length: int) -> tuple[bytes, int] | None:
        """A ranged read of this node's own copy, in-process: see ``NodeCore.local_range``."""
        return self.core.local_range(name, offset, length)

    async def _on_info(self, _a: dict[str, Any]) -> dict[str, Any]:
        return self.core.describe()

    def health(self) -> dict[str, Any]:
        """For ``node.info`` and ``rainstorm cluster status``: is this node's disk taking writes?"""
        recent = self._io_last is not None and self.clock() - self._io_last < DISK_FAILING_FOR
        return {"files": len(self.storage.names()), "io_errors": self._io_seen,
                "disk": "failing" if recent else "ok", "open_logs": self.storage.open_files(),
                # the recent entries' data kept in memory: it fills up to its bound, then stays
                "tail_cache_mb": round(self.storage.tail_size / 2**20, 2),
                "tail_cache_max_mb": round(self.storage.tail_bytes / 2**20, 2)}

    def _reap_mailboxes(self) -> None:
        now = self.clock()
        for cid in [c for c, b in self._mail.items() if now - b.used > self.cfg.mailbox_idle]:
            del self._mail[cid]

"""``hydfs.Client``: the asyncio client the CLI and the stream layer use.

It drives the sans-IO :class:`hydfs.client.ClientCore` (request ids, retries with the same
(client id, seq), redirects to the primary, read-your-own-appends) over RPC, and keeps the
optional byte-bounded LRU cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from typing import Any, BinaryIO

from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_fixed

from hydfs.cache import FileCache
from hydfs.client import ClientCore, Result
from hydfs.names import check_name
from net.rpc import RpcClient, RpcError, Unreachable

CHUNK = 1 << 20  # bytes per entry of a streamed upload: the replication batch size
CLEANUP_TIMEOUT = 5.0  # how long a failed upload tries to remove what it wrote


class HydfsError(Exception):
    """An operation failed for a reason the user can act on (the message says which); ``code`` is the
    protocol's error code (``exists``, ``not_found``, ``fenced``, ...) for callers that branch on it."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


ERRORS = {
    "exists": "{name} already exists in HyDFS",
    "not_found": "no such HyDFS file: {name}",
    "fenced": "append to {name} refused: a newer writer epoch is recorded (this writer was replaced)",
    "len_mismatch": "append to {name} refused: the file changed length",
    "deleted": "{name} was removed",
    "not_ready": "that replica's copy of {name} is not confirmed by the primary yet (it restarted or lags)",
    "io_error": "HyDFS could not write {name}: the disk of {node} is full or failing",
    "out_of_order": "append to {name} refused for {timeout:g}s: the append it must follow (cond 'after') "
                    "never landed",
    "trimmed": "append to {name} refused: its (client id, seq) was trimmed from the file (it landed before)",
    "trim_range": "trim of {name} refused: it may only drop entries below its own marker",
}


class Client:
    def __init__(self, rpc: RpcClient, seeds: list[str], client_id: str | None = None,
                 cache_bytes: int = 0, timeout: float = 30.0, poll: float = 2.0) -> None:
        self.rpc = rpc
        self.seeds = list(seeds)
        self.core = ClientCore(client_id or f"client-{uuid.uuid4().hex[:12]}", retry=0.5)
        self.cache = FileCache(cache_bytes)
        self.timeout = timeout
        self.poll = poll
        self.addrs: dict[str, str] = {}
        self._view_at = -1e9
        self._results: dict[int, Result] = {}
        self._inflight: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()

    @staticmethod
    def clock() -> float:
        return time.monotonic()

    # -- membership -------------------------------------------------------------------------------
    async def refresh(self) -> None:
        """Learn the live nodes (id -> address) from the first seed or known node that answers."""
        errors = []
        for addr in [*self.seeds, *self.addrs.values()]:
            try:
                rows = await self.rpc.call(addr, "node.members", timeout=2.0)
            except (Unreachable, RpcError) as exc:
                errors.append(str(exc))
                continue
            self.addrs = {r["id"]: r["address"] for r in rows if r["state"] in ("alive", "suspect")}
            self.core.on_membership(list(self.addrs), self.clock())
            self._view_at = self.clock()
            return
        raise HydfsError("no node answered: " + "; ".join(errors))

    # -- the driver -------------------------------------------------------------------------------
    async def _exchange(self, dest: str, msg: dict[str, Any] | None) -> None:
        addr = self.addrs.get(dest)
        if addr is None:
            return  # unknown node: the core retries elsewhere after a refresh
        try:
            replies = await self.rpc.call(addr, "hydfs.client", {"src": self.core.client_id, "m": msg,
                                                                  "wait": self.poll}, timeout=self.poll + 5)
        except (Unreachable, RpcError):
            return  # lost: the core retries with the same (client id, seq)
        now = self.clock()
        for r in replies or []:
            self.core.receive(dest, r, now)
        self._wake.set()

    def _pump(self) -> None:
        for dest, msg in self.core.take_outgoing():
            t = asyncio.create_task(self._exchange(dest, msg))
            self._inflight.add(t)
            t.add_done_callback(self._inflight.discard)
        self._results.update(self.core.take_results())

    async def _run(self, op_id: int, name: str) -> Result:
        deadline = self.clock() + self.timeout
        while True:
            self._pump()
            if op_id in self._results:
                return self._results.pop(op_id)
            now = self.clock()
            if now > deadline:
                if self.core.cancel(op_id) == "out_of_order":
                    raise HydfsError(ERRORS["out_of_order"].format(name=name, timeout=self.timeout), "out_of_order")
                raise HydfsError(f"{name}: no answer from HyDFS within {self.timeout:g}s")
            if now - self._view_at > 1.0:
                with contextlib.suppress(HydfsError):
                    await self.refresh()
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.05)
            self.core.tick(self.clock())

    async def _op(self, name: str, start: Any) -> Result:
        check_name(name)
        if not self.addrs:
            await self.refresh()
        res = await self._run(start(self.clock()), name)
        if not res.ok:
            text = ERRORS.get(res.err or "", "{name}: " + str(res.err))
            raise HydfsError(text.format(name=name, node=res.reply.get("primary") or "a node", timeout=self.timeout),
                             res.err)
        return res

    # -- operations -------------------------------------------------------------------------------
    async def create(self, name: str, data: bytes) -> int:
        res = await self._op(name, lambda now: self.core.create(name, data, now))
        self.cache.appended(name, res.index or 0)
        return res.index or 0

    async def create_from(self, name: str, f: BinaryIO, chunk: int = CHUNK,
                          progress: Callable[[int], None] | None = None) -> int:
        """Create NAME from a file object, one entry per ``chunk`` bytes, so no message and no batch
        of re-replication ever holds more than about a chunk. Later chunks are appended on condition
        that the file still has exactly the entries this upload wrote (no other writer interleaves).
        A file larger than one chunk is visible while it uploads; if the upload fails part way, the
        partial file is removed before the error is raised."""
        data = f.read(chunk)
        await self.create(name, data)
        if progress:
            progress(len(data))
        entries = 1
        try:
            while data := f.read(chunk):
                await self.append(name, data, cond={"expect_len": entries})
                entries += 1
                if progress:
                    progress(len(data))
        except BaseException:
            with contextlib.suppress(HydfsError, Unreachable, RpcError, TimeoutError):
                await asyncio.wait_for(self.rm(name), CLEANUP_TIMEOUT)  # best effort: the error matters more
            raise
        return entries

    async def append_from(self, name: str, f: BinaryIO, chunk: int = CHUNK,
                          progress: Callable[[int], None] | None = None) -> int:
        """Append a file object's bytes in ``chunk``-sized entries; returns the last entry's index."""
        index = 0
        while data := f.read(chunk):
            index = await self.append(name, data)
            if progress:
                progress(len(data))
        return index

    async def append(self, name: str, data: bytes, cond: dict[str, Any] | None = None,
                     key: tuple[str, int] | None = None) -> int:
        """Returns the entry's index. ``cond``: ``{"fence": k, "epoch": e}`` (refused if a higher epoch is
        recorded for k), ``{"expect_len": n}``, ``{"after": n}`` (lands only after the entry keyed
        (key's client id, n): a writer may pipeline appends and they still land in seq order; until that
        entry is ordered this call keeps asking, and raises ``out_of_order`` at the timeout)."""
        res = await self._op(name, lambda now: self.core.append(name, data, now, cond, key))
        self.cache.appended(name, res.index or 0)
        self.cache.invalidate(name)
        return res.index or 0

    async def trim(self, name: str, below: int, cond: dict[str, Any] | None = None,
                   key: tuple[str, int] | None = None) -> int:
        """Drop every entry of NAME below index ``below`` on every replica (log compaction); returns the
        file's first index once the trim is acknowledged (``below``, or more after an earlier trim).
        Indexes never change. The trim is a marker entry (empty data) ordered with the appends at the
        index after the file's last: ``cond`` and ``key`` work exactly as for :meth:`append` (a fenced,
        idempotent trim). ``below`` past the marker's own index raises ``trim_range``; a trim below an
        earlier one drops nothing. See docs/hydfs.md, "Trim"."""
        if below < 1:
            raise ValueError("below must be at least 1")
        res = await self._op(name, lambda now: self.core.trim(name, below, now, cond, key))
        self.cache.invalidate(name)
        return int(res.reply.get("first", 1))

    async def get(self, name: str) -> bytes:
        cached = self.cache.get(name)
        if cached is not None:
            return cached[1]
        res = await self._op(name, lambda now: self.core.get(name, now))
        data = res.data
        self.cache.put(name, res.index or 0, data)
        return data

    async def get_to(self, name: str, f: BinaryIO, replica: str | None = None,
                     progress: Callable[[int], None] | None = None) -> int:
        """Write NAME's committed bytes to ``f`` page by page (about 1 MiB each), so memory stays
        bounded whatever the size; returns the bytes written. ``f`` must be seekable if this client
        appended to NAME (a copy staler than our own appends makes the read start over)."""
        written = 0

        def sink(page: list[tuple[int, bytes]], start_over: bool) -> None:
            nonlocal written
            if start_over:
                f.seek(0)
                f.truncate()
                written = 0
            for _, data in page:
                f.write(data)
                written += len(data)
                if progress:
                    progress(len(data))

        if replica is not None:
            def attempt(now: float) -> int:
                sink([], True)  # a retry after "not ready" starts from the first byte again
                return self.core.get(name, now, replica=replica, sink=sink)

            await self._from_replica(replica, name, attempt)
        else:
            await self._op(name, lambda now: self.core.get(name, now, sink=sink))
        return written

    async def read_range(self, name: str, offset: int, length: int, replica: str | None = None) -> tuple[bytes, int]:
        """The committed bytes of NAME in [offset, offset + length) and its committed size in bytes
        (``read_range(name, 0, 0)`` is the size). Fewer bytes at the end of the data, and at most one
        reply's worth (4 MiB): callers loop. The nodes find the offset by bisection over the entries'
        sizes, so a page of a large file costs its bytes, not a scan. Served by the primary, or by
        ``replica`` if the primary confirmed it in sync; never older than this client's own appends."""
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        if replica is not None:
            res = await self._from_replica(replica, name,
                                           lambda now: self.core.read(name, offset, length, now, replica))
        else:
            res = await self._op(name, lambda now: self.core.read(name, offset, length, now))
        return res.reply["data"], res.reply["size"]

    async def get_entries(self, name: str) -> list[tuple[int, bytes]]:
        """Committed entries as (index, data): how the stream layer reads logs. After a trim, only the
        retained ones (index >= the file's first); a trim marker is an entry of empty data."""
        return (await self._op(name, lambda now: self.core.get(name, now))).entries

    async def getfromreplica(self, node_id: str, name: str) -> bytes:
        return (await self._from_replica(node_id, name, lambda now: self.core.get(name, now, replica=node_id))).data

    async def _from_replica(self, node_id: str, name: str, start: Callable[[float], int]) -> Result:
        if not self.addrs:
            await self.refresh()
        if node_id not in self.addrs:
            raise HydfsError(f"{node_id} is not a live node")
        # a replica that just (re)joined vouches for its copy only once a primary confirmed it
        result: Result = await AsyncRetrying(
            retry=retry_if_exception(lambda e: isinstance(e, HydfsError) and e.code == "not_ready"),
            wait=wait_fixed(0.25), stop=stop_after_delay(self.timeout), reraise=True)(self._op, name, start)
        return result

    async def merge(self, name: str) -> dict[str, Any]:
        return (await self._op(name, lambda now: self.core.merge(name, now))).reply

    async def ls(self, name: str) -> dict[str, Any]:
        return (await self._op(name, lambda now: self.core.ls(name, now))).reply

    async def rm(self, name: str) -> None:
        await self._op(name, lambda now: self.core.rm(name, now))
        self.cache.invalidate(name)

    async def store(self, node_id: str) -> list[str]:
        """Files held on one node."""
        if not self.addrs:
            await self.refresh()
        addr = self.addrs.get(node_id)
        if addr is None:
            raise HydfsError(f"{node_id} is not a live node")
        try:
            replies = await self.rpc.call(addr, "hydfs.client", {
                "src": self.core.client_id, "m": {"t": "c_store", "rid": 0}, "wait": 2.0}, timeout=8)
        except (Unreachable, RpcError) as exc:
            raise HydfsError(f"{node_id}: {exc}") from None
        files = None
        for r in replies:
            if isinstance(r, dict) and r.get("rid") == 0 and isinstance(r.get("files"), list):
                files = [str(f) for f in r["files"]]
            else:  # a late answer to another operation of ours shares the mailbox
                self.core.receive(node_id, r, self.clock())
        if files is not None:
            return files
        raise HydfsError(f"{node_id} did not list its files")

    async def close(self) -> None:
        for t in list(self._inflight):
            t.cancel()

"""Request/response over TCP with authenticated length-prefixed frames.

One connection per peer address, multiplexed by request id, so a slow call never blocks another.
A request is ``{"i": id, "m": method, "a": args}``; the answer ``{"i": id, "r": result}`` or
``{"i": id, "e": message}``. Bad frames are counted and end that connection only.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from gossip.wire import LENGTH, MAX_FRAME, FrameError, FrameStats, decode, encode

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
log = logging.getLogger(__name__)


class RpcError(Exception):
    """The remote handler failed; the message is the remote's one-line reason."""


class Unreachable(ConnectionError):
    """No answer from that address (refused, reset or timed out)."""


class RemoteError(Exception):
    """Raise in a handler to send a clean one-line error to the caller."""


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"bad address {addr!r}: expected HOST:PORT")
    return host, int(port)


async def read_frame(reader: asyncio.StreamReader, key: bytes) -> Any:
    head = await reader.readexactly(LENGTH.size)
    (n,) = LENGTH.unpack(head)
    if n > MAX_FRAME:
        raise FrameError("size")
    return decode(key, await reader.readexactly(n))


def write_frame(writer: asyncio.StreamWriter, key: bytes, obj: Any) -> None:
    data = encode(key, obj)
    writer.write(LENGTH.pack(len(data)) + data)


class RpcServer:
    def __init__(self, key: bytes, stats: FrameStats | None = None) -> None:
        self.key = key
        self.stats = stats if stats is not None else FrameStats()
        self.handlers: dict[str, Handler] = {}
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    def register(self, method: str, handler: Handler) -> None:
        self.handlers[method] = handler

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port, limit=2**20)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._conns):
                w.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    msg = await read_frame(reader, self.key)
                except FrameError as exc:
                    self.stats[exc.reason] += 1
                    return
                if not (isinstance(msg, dict) and isinstance(msg.get("i"), int)
                        and isinstance(msg.get("m"), str) and isinstance(msg.get("a", {}), dict)):
                    self.stats["schema"] += 1
                    return
                t = asyncio.create_task(self._dispatch(msg, writer))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            return
        finally:
            self._conns.discard(writer)
            writer.close()

    async def _dispatch(self, msg: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        handler = self.handlers.get(msg["m"])
        reply: dict[str, Any] = {"i": msg["i"]}
        if handler is None:
            reply["e"] = f"unknown method {msg['m']!r}"
        else:
            try:
                reply["r"] = await handler(msg.get("a", {}))
            except RemoteError as exc:
                reply["e"] = str(exc)
            except Exception as exc:
                log.exception("handler %s failed", msg["m"])
                reply["e"] = f"{type(exc).__name__}: {exc}"
        if writer.is_closing():
            return
        try:
            write_frame(writer, self.key, reply)
            await writer.drain()
        except (ConnectionError, OSError):
            pass


class _Conn:
    def __init__(self, key: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.key = key
        self.reader = reader
        self.writer = writer
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.closed = False
        self.task = asyncio.create_task(self._read_loop())

    async def _read_loop(self) -> None:
        try:
            while True:
                msg = await read_frame(self.reader, self.key)
                if not isinstance(msg, dict):
                    continue
                fut = self.pending.pop(msg.get("i", -1), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except (asyncio.IncompleteReadError, ConnectionError, OSError, FrameError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        self.closed = True
        self.writer.close()
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(Unreachable("connection closed"))
        self.pending.clear()


class RpcClient:
    def __init__(self, key: bytes, connect_timeout: float = 2.0) -> None:
        self.key = key
        self.connect_timeout = connect_timeout
        self._conns: dict[str, _Conn] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._ids = itertools.count(1)

    async def _conn(self, addr: str) -> _Conn:
        conn = self._conns.get(addr)
        if conn is not None and not conn.closed:
            return conn
        lock = self._locks.setdefault(addr, asyncio.Lock())
        async with lock:
            conn = self._conns.get(addr)
            if conn is not None and not conn.closed:
                return conn
            host, port = split_addr(addr)
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port, limit=2**20), self.connect_timeout)
            except (TimeoutError, OSError) as exc:
                raise Unreachable(f"{addr}: {exc or 'connect timed out'}") from None
            conn = _Conn(self.key, reader, writer)
            self._conns[addr] = conn
            return conn

    async def call(self, addr: str, method: str, args: dict[str, Any] | None = None,
                   timeout: float = 10.0) -> Any:
        conn = await self._conn(addr)
        rid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        conn.pending[rid] = fut
        try:
            write_frame(conn.writer, self.key, {"i": rid, "m": method, "a": args or {}})
            await conn.writer.drain()
            reply = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            conn.pending.pop(rid, None)
            raise Unreachable(f"{addr}: {method} timed out after {timeout:g}s") from None
        except (ConnectionError, OSError) as exc:
            conn.close()
            raise Unreachable(f"{addr}: {exc}") from None
        if "e" in reply:
            raise RpcError(str(reply["e"]))
        return reply.get("r")

    async def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
            conn.task.cancel()
        self._conns.clear()

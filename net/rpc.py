"""Request/response over TCP with per-connection session keys and AES-GMAC tagged frames.

One connection per peer address, multiplexed by request id, so a slow call never blocks another.
A request is ``{"i": id, "m": method, "a": args}``; the answer ``{"i": id, "r": result}`` or
``{"i": id, "e": message, "c": code}`` (the typed code optional). Bad frames are counted (``hello``,
``size``, ``mac``, ``body``, ``schema``) and end that connection only. A connection must deliver an
authenticated frame within ``HELLO_TIMEOUT`` (a hello alone proves nothing), and a server holds at
most ``MAX_CONNS``.

The framing is :mod:`net.session`: both sides send a hello with a fresh nonce, derive one key
per direction from the cluster key and both nonces, and tag every frame with AES-GMAC over the
length prefix and body under a per-direction frame counter. A peer without the cluster key cannot
produce one accepted frame, and a frame replayed from another connection, or dropped, duplicated or
reordered within one, fails its tag. Frames are not encrypted.

Copies are kept out of the data path: a body is packed into a reused packer buffer and written in
chunks only while the socket takes them, so asyncio's write buffer (which in 3.11 copies and
re-copies as it drains) holds at most one partly sent chunk; a received frame lands directly in one
buffer (:class:`net.session.FrameReader`) and is verified and unpacked in place. Flow control:
a sender waits while more than one chunk is queued on the connection, and a server whose replies
are not being read stops reading requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from net.session import RETAIN, SMALL, Buffer, BufferPool, FrameReader, Session, hello
from net.wire import FrameError, FrameStats

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
log = logging.getLogger(__name__)

CHUNK = 1024 * 1024  # largest piece handed to the transport at once: what it may have to copy
HELLO_TIMEOUT = 10.0  # a connection without an authenticated frame by then is dropped and counted
MAX_CONNS = 1024  # connections a server holds at once; more are closed at once and counted ("conns")


class RpcError(Exception):
    """The remote handler failed; the message is the remote's one-line reason, ``code`` its typed
    reason when the handler gave one (callers branch on the code, never on the text)."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class Unreachable(ConnectionError):
    """No answer from that address (refused, reset or timed out)."""


class RemoteError(Exception):
    """Raise in a handler to send a clean one-line error (and an optional typed ``code``) to the caller."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"bad address {addr!r}: expected HOST:PORT")
    return host, int(port)


class _Packers:
    """Packers whose buffers are reused: ``msgpack.packb`` of 20 MB grows a fresh 40 MB buffer each time."""

    def __init__(self, keep: int = 1) -> None:
        self.keep = keep
        self._free: list[msgpack.Packer] = []

    def take(self) -> msgpack.Packer:
        return self._free.pop() if self._free else msgpack.Packer(use_bin_type=True, autoreset=False)

    def give(self, packer: msgpack.Packer, size: int) -> None:
        try:
            packer.reset()
        except BufferError:  # a view of its buffer is still alive somewhere: let it go with the packer
            return
        if size <= RETAIN and len(self._free) < self.keep:
            self._free.append(packer)


class _Endpoint(asyncio.BufferedProtocol):
    """One end of a connection: the hello, the frame reader and the paced, flow-controlled writer."""

    client = False

    def __init__(self, key: bytes, stats: FrameStats, pool: BufferPool, packers: _Packers) -> None:
        self.key = key
        self.stats = stats
        self.packers = packers
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._hello, self._nonce = hello()
        self.reader = FrameReader(self._on_hello, self._on_message, pool)
        self._out: deque[tuple[Buffer, Callable[[], None] | None]] = deque()
        self._queued = 0  # bytes in _out
        self._transport_full = False  # the transport holds unsent bytes: wait for resume_writing
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._blocked = 0  # senders waiting for room in _out

    # -- asyncio callbacks ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # pause as soon as the transport has to buffer anything: we keep the rest in _out, uncopied
        transport.set_write_buffer_limits(high=0)
        transport.write(self._hello)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.reader.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        try:
            self.reader.buffer_updated(nbytes)
        except FrameError as exc:
            self._bad(exc.reason)

    def eof_received(self) -> bool | None:
        try:
            self.reader.at_eof()
        except FrameError as exc:
            self.stats[exc.reason] += 1
        return None  # close our side too

    def pause_writing(self) -> None:
        self._transport_full = True

    def resume_writing(self) -> None:
        self._transport_full = False
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        while self._out:
            _, done = self._out.popleft()
            if done is not None:
                done()
        self._queued = 0
        self._wake(ConnectionResetError("connection lost"))

    # -- reading --------------------------------------------------------------------------------
    def _on_hello(self, nonce: bytes) -> Session:
        if self.client:
            return Session(self.key, self._nonce, nonce, client=True)
        return Session(self.key, nonce, self._nonce, client=False)

    def _on_message(self, msg: Any) -> None:
        raise NotImplementedError

    def _bad(self, reason: str) -> None:
        self.stats[reason] += 1
        self.abort()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # -- writing --------------------------------------------------------------------------------
    async def send(self, obj: Any) -> None:
        """Frame and queue ``obj``; first waits while the connection has a chunk or more queued."""
        if self._queued >= CHUNK:
            self._blocked += 1
            self._backlog()
            try:
                while self._queued >= CHUNK and not self.closed:
                    fut = asyncio.get_running_loop().create_future()
                    self._waiters.append(fut)
                    await fut
            finally:
                self._blocked -= 1
                self._backlog()
        if self.closed or self.transport is None or self.transport.is_closing() or self.reader.session is None:
            raise ConnectionResetError("connection closed")
        session = self.reader.session
        packer = self.packers.take()
        body: memoryview | None = None
        try:
            packer.pack(obj)
            body = packer.getbuffer()
            parts = session.seal(body)
        except BaseException:
            if body is not None:
                body.release()
            self.packers.give(packer, 0)
            raise
        size = len(body)
        if size <= SMALL:  # seal joined it: the packer is free again
            body.release()
            self.packers.give(packer, size)
            self._push(parts[0], None)
            return
        loop = asyncio.get_running_loop()

        def done() -> None:  # the last byte is with the transport; slices may live until this callback ends
            assert body is not None
            body.release()
            loop.call_soon(self.packers.give, packer, size)

        self._push(parts[0], None)
        self._push(parts[1], None)
        self._push(parts[2], done)

    def _backlog(self) -> None:
        """Called when senders start or stop waiting for room (the server throttles reading on it)."""

    def _push(self, data: Buffer, done: Callable[[], None] | None) -> None:
        if not self._out and not self._transport_full and len(data) <= CHUNK and self.transport is not None:
            self.transport.write(data)  # the common case: straight to the socket
            if done is not None:
                done()
            return
        self._out.append((data, done))
        self._queued += len(data)
        self._flush()

    def _flush(self) -> None:
        """Hand queued bytes to the transport a chunk at a time, only while it has nothing buffered."""
        transport = self.transport
        while self._out and not self._transport_full and transport is not None and not transport.is_closing():
            data, done = self._out[0]
            if len(data) > CHUNK:
                view = data if isinstance(data, memoryview) else memoryview(data)
                self._out[0] = (view[CHUNK:], done)
                data, done = view[:CHUNK], None
            else:
                self._out.popleft()
            self._queued -= len(data)
            transport.write(data)  # sent now, or the unsent part copied into the transport's buffer
            if done is not None:
                done()
        if self._queued < CHUNK:
            self._wake(None)

    def _wake(self, exc: Exception | None) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                if exc is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(exc)


class _ServerConn(_Endpoint):
    def __init__(self, owner: RpcServer) -> None:
        super().__init__(owner.key, owner.stats, owner._pool, owner._packers)
        self.owner = owner
        self._auth_timer: asyncio.TimerHandle | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if len(self.owner._conns) >= MAX_CONNS:
            assert isinstance(transport, asyncio.Transport)
            self.stats["conns"] += 1
            self.closed = True
            transport.abort()
            return
        super().connection_made(transport)
        self.owner._conns.add(self)
        self._auth_timer = asyncio.get_running_loop().call_later(HELLO_TIMEOUT, self._not_authenticated)

    def _not_authenticated(self) -> None:
        """Anyone can send a hello; only the first authenticated frame proves the peer has the key."""
        if not self.closed:
            self._bad("hello")

    def _on_message(self, msg: Any) -> None:
        if self._auth_timer is not None:  # the first frame passed its tag
            self._auth_timer.cancel()
            self._auth_timer = None
        if not (isinstance(msg, dict) and isinstance(msg.get("i"), int)
                and isinstance(msg.get("m"), str) and isinstance(msg.get("a", {}), dict)):
            raise FrameError("schema")
        t = asyncio.get_running_loop().create_task(self._dispatch(msg))
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    def _backlog(self) -> None:
        """Replies that cannot even be queued mean a client that does not read them: read no more requests."""
        t = self.transport
        on = self._blocked == 0
        if t is None or self.closed or t.is_closing() or t.is_reading() == on:
            return
        if on:
            t.resume_reading()
        else:
            t.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._auth_timer is not None:
            self._auth_timer.cancel()
        self.owner._conns.discard(self)
        super().connection_lost(exc)

    async def _dispatch(self, msg: dict[str, Any]) -> None:
        handler = self.owner.handlers.get(msg["m"])
        reply: dict[str, Any] = {"i": msg["i"]}
        if handler is None:
            reply["e"] = f"unknown method {msg['m']!r}"
        else:
            try:
                reply["r"] = await handler(msg.get("a", {}))
            except RemoteError as exc:
                reply["e"] = str(exc)
                if exc.code:
                    reply["c"] = exc.code
            except Exception as exc:
                log.exception("handler %s failed", msg["m"])
                reply["e"] = f"{type(exc).__name__}: {exc}"
        if self.closed:
            return
        try:
            await self.send(reply)
        except ConnectionError:
            pass
        except (TypeError, ValueError, OverflowError) as exc:  # the result does not pack or is too large
            log.error("handler %s: cannot send its result: %s", msg["m"], exc)
            with contextlib.suppress(ConnectionError):
                await self.send({"i": msg["i"], "e": f"unsendable result: {exc}"})


class RpcServer:
    def __init__(self, key: bytes, stats: FrameStats | None = None) -> None:
        self.key = key
        self.stats = stats if stats is not None else FrameStats()
        self.handlers: dict[str, Handler] = {}
        self._server: asyncio.Server | None = None
        self._conns: set[_ServerConn] = set()
        self._pool = BufferPool()
        self._packers = _Packers()

    def register(self, method: str, handler: Handler) -> None:
        self.handlers[method] = handler

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _ServerConn(self), host, port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for conn in list(self._conns):
                if conn.transport is not None:
                    conn.transport.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()


class _ClientConn(_Endpoint):
    client = True

    def __init__(self, owner: RpcClient) -> None:
        super().__init__(owner.key, owner.stats, owner._pool, owner._packers)
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def _on_hello(self, nonce: bytes) -> Session:
        session = super()._on_hello(nonce)
        if not self.ready.done():
            self.ready.set_result(None)
        return session

    def _on_message(self, msg: Any) -> None:
        if not (isinstance(msg, dict) and isinstance(msg.get("i"), int)):
            raise FrameError("schema")
        fut = self.pending.pop(msg["i"], None)
        if fut is not None and not fut.done():
            fut.set_result(msg)  # an unknown id is a late answer to a call that timed out

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.ready.done():
            self.ready.set_exception(Unreachable("connection closed during the handshake"))
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(Unreachable("connection closed"))
        self.pending.clear()

    def close(self) -> None:
        self.closed = True
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(Unreachable("connection closed"))
        self.pending.clear()
        if self.transport is not None:
            self.transport.close()


class RpcClient:
    def __init__(self, key: bytes, connect_timeout: float = 2.0, stats: FrameStats | None = None) -> None:
        self.key = key
        self.connect_timeout = connect_timeout
        self.stats = stats if stats is not None else FrameStats()  # bad frames from servers
        self._conns: dict[str, _ClientConn] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._ids = itertools.count(1)
        self._pool = BufferPool()
        self._packers = _Packers()

    async def _conn(self, addr: str) -> _ClientConn:
        conn = self._conns.get(addr)
        if conn is not None and not conn.closed:
            return conn
        lock = self._locks.setdefault(addr, asyncio.Lock())
        async with lock:
            conn = self._conns.get(addr)
            if conn is not None and not conn.closed:
                return conn
            host, port = split_addr(addr)
            loop = asyncio.get_running_loop()
            conn = None
            try:
                async with asyncio.timeout(self.connect_timeout):
                    _, conn = await loop.create_connection(lambda: _ClientConn(self), host, port)
                    await conn.ready
            except (TimeoutError, OSError) as exc:
                if conn is not None:
                    conn.close()
                raise Unreachable(f"{addr}: {exc or 'connect timed out'}") from None
            self._conns[addr] = conn
            return conn

    async def call(self, addr: str, method: str, args: dict[str, Any] | None = None,
                   timeout: float = 10.0) -> Any:
        conn = await self._conn(addr)
        rid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        conn.pending[rid] = fut
        try:
            async with asyncio.timeout(timeout):  # sending counts: a peer that stops reading times out too
                await conn.send({"i": rid, "m": method, "a": args or {}})
                reply = await fut
        except TimeoutError:
            conn.pending.pop(rid, None)
            raise Unreachable(f"{addr}: {method} timed out after {timeout:g}s") from None
        except ConnectionError as exc:
            conn.pending.pop(rid, None)
            conn.close()
            raise Unreachable(f"{addr}: {exc}") from None
        except BaseException:
            conn.pending.pop(rid, None)
            raise
        if "e" in reply:
            raise RpcError(str(reply["e"]), str(reply.get("c") or ""))
        return reply.get("r")

    async def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

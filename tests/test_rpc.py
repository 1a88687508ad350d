"""The TCP RPC over real sockets: calls, multiplexing, large payloads, and every way a frame is refused."""

import asyncio
import contextlib
import mmap
import os
import time
from typing import Any

import msgpack
import pytest

import net.rpc as rpc
import net.session as session
from net.rpc import RemoteError, RpcClient, RpcError, RpcServer, Unreachable
from net.session import HELLO_LEN, TAG_LEN, Session, hello, parse_hello
from net.wire import LENGTH, MAX_FRAME, derive_key

KEY = derive_key("k")
MB = 1024 * 1024


async def _server() -> tuple[RpcServer, str]:
    srv = RpcServer(KEY)

    async def echo(a: dict[str, Any]) -> Any:
        await asyncio.sleep(a.get("delay", 0))
        return a.get("v")

    async def bad(a: dict[str, Any]) -> Any:
        raise RemoteError("no such file: x")

    async def blob(a: dict[str, Any]) -> bytes:
        return os.urandom(a["n"])

    srv.register("echo", echo)
    srv.register("bad", bad)
    srv.register("blob", blob)
    await srv.start("127.0.0.1", 0)
    assert srv._server is not None
    port = srv._server.sockets[0].getsockname()[1]
    return srv, f"127.0.0.1:{port}"


def _addr(server: asyncio.Server) -> str:
    return f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


class Raw:
    """A hand-driven client connection: the handshake done right, then whatever bytes a test wants."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hello_msg: bytes,
                 sess: Session) -> None:
        self.reader, self.writer, self.hello, self.session = reader, writer, hello_msg, sess

    @classmethod
    async def open(cls, addr: str, key: bytes = KEY) -> "Raw":
        host, port = rpc.split_addr(addr)
        reader, writer = await asyncio.open_connection(host, port)
        msg, nonce = hello()
        writer.write(msg)
        peer = parse_hello(await reader.readexactly(HELLO_LEN))
        return cls(reader, writer, msg, Session(key, nonce, peer, client=True))

    def request(self, rid: int, method: str = "echo", args: dict[str, Any] | None = None) -> bytes:
        return self.session.frame({"i": rid, "m": method, "a": args if args is not None else {"v": rid}})

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self) -> Any:
        head = await asyncio.wait_for(self.reader.readexactly(LENGTH.size), 5)
        rest = await self.reader.readexactly(LENGTH.unpack(head)[0] + TAG_LEN)
        return msgpack.unpackb(self.session.open(memoryview(head + rest)))

    async def hung_up(self) -> bool:
        """True once the server closed the connection (EOF or reset) without another byte."""
        try:
            return await asyncio.wait_for(self.reader.read(), 5) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.writer.close()


async def test_calls_are_multiplexed_and_answer_out_of_order() -> None:
    srv, addr = await _server()
    cli = RpcClient(KEY)
    slow = asyncio.create_task(cli.call(addr, "echo", {"v": "slow", "delay": 0.3}))
    fast = await cli.call(addr, "echo", {"v": "fast"})
    assert fast == "fast" and not slow.done()
    assert await slow == "slow"
    await cli.close()
    await srv.close()


async def test_many_concurrent_calls_share_one_connection() -> None:
    srv, addr = await _server()
    cli = RpcClient(KEY)
    n = 400
    results = await asyncio.gather(*(cli.call(addr, "echo", {"v": i, "delay": (i % 7) / 100}) for i in range(n)))
    assert results == list(range(n))
    assert len(cli._conns) == 1 and len(srv._conns) == 1
    await cli.close()
    await srv.close()


async def test_large_payloads_round_trip_beside_small_calls() -> None:
    srv, addr = await _server()
    cli = RpcClient(KEY)
    data = os.urandom(8 * MB)
    big = asyncio.create_task(cli.call(addr, "echo", {"v": data}))
    small = await asyncio.gather(*(cli.call(addr, "echo", {"v": i}) for i in range(20)))
    assert small == list(range(20))
    assert await big == data
    assert len(await cli.call(addr, "blob", {"n": 8 * MB})) == 8 * MB  # a large reply too
    assert await cli.call(addr, "echo", {"v": data[: 3 * MB]}) == data[: 3 * MB]  # reused buffers stay right
    await cli.close()
    await srv.close()


async def test_remote_errors_and_unknown_methods() -> None:
    srv, addr = await _server()
    cli = RpcClient(KEY)
    with pytest.raises(RpcError, match="no such file"):
        await cli.call(addr, "bad")
    with pytest.raises(RpcError, match="unknown method"):
        await cli.call(addr, "nope")
    await cli.close()
    await srv.close()


async def test_wrong_secret_fails_the_call_cleanly_and_is_counted() -> None:
    srv, addr = await _server()
    cli = RpcClient(derive_key("wrong"))
    start = time.monotonic()
    with pytest.raises((Unreachable, RpcError)):
        await cli.call(addr, "echo", {"v": 1}, timeout=5)
    assert time.monotonic() - start < 2  # the server hangs up at once: no waiting for the timeout
    assert srv.stats["mac"] == 1
    good = RpcClient(KEY)
    assert await good.call(addr, "echo", {"v": 2}) == 2
    await cli.close()
    await good.close()
    await srv.close()


async def test_frame_replayed_on_another_connection_is_rejected() -> None:
    srv, addr = await _server()
    a = await Raw.open(addr)
    frame = a.request(1)
    await a.send(frame)
    assert (await a.reply())["r"] == 1  # the captured frame is valid where it was sent
    b = await Raw.open(addr)
    await b.send(frame)  # the same bytes on a new connection: its keys differ
    assert await b.hung_up()
    assert srv.stats["mac"] == 1
    host, port = rpc.split_addr(addr)  # the whole captured stream again, hello included: our nonce is fresh
    reader, writer = await asyncio.open_connection(host, port)
    c = Raw(reader, writer, a.hello, a.session)
    await c.send(a.hello + frame)
    assert parse_hello(await reader.readexactly(HELLO_LEN))
    assert await c.hung_up()
    assert srv.stats["mac"] == 2 and srv.stats["size"] == 0
    await a.send(a.request(2))  # the original connection is untouched
    assert (await a.reply())["r"] == 2
    for r in (a, b, c):
        r.close()
    await srv.close()


async def test_duplicated_frame_is_rejected() -> None:
    srv, addr = await _server()
    r = await Raw.open(addr)
    frame = r.request(1)
    await r.send(frame)
    assert (await r.reply())["r"] == 1
    await r.send(frame)
    assert await r.hung_up()
    assert srv.stats["mac"] == 1
    r.close()
    await srv.close()


async def test_reordered_frames_are_rejected() -> None:
    srv, addr = await _server()
    r = await Raw.open(addr)
    first, second = r.request(1), r.request(2)
    await r.send(second + first)
    assert await r.hung_up()  # no answer to either: the first frame to arrive has the wrong counter
    assert srv.stats["mac"] == 1
    r.close()
    await srv.close()


@pytest.mark.parametrize("where", ["body start", "body end", "tag start", "tag end"])
async def test_one_flipped_byte_is_rejected(where: str) -> None:
    srv, addr = await _server()
    r = await Raw.open(addr)
    frame = bytearray(r.request(1, args={"v": "x" * 100}))
    pos = {"body start": LENGTH.size, "body end": -TAG_LEN - 1, "tag start": -TAG_LEN, "tag end": -1}[where]
    frame[pos] ^= 0x01
    await r.send(bytes(frame))
    assert await r.hung_up()
    assert srv.stats["mac"] == 1
    r.close()
    await srv.close()


async def test_oversize_length_is_rejected_before_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[int] = []
    take = session.BufferPool.take

    def spy(self: session.BufferPool, n: int) -> mmap.mmap:
        asked.append(n)
        return take(self, n)

    monkeypatch.setattr(session.BufferPool, "take", spy)
    srv, addr = await _server()
    r = await Raw.open(addr)
    await r.send(LENGTH.pack(MAX_FRAME + 1) + b"x" * 100)
    assert await r.hung_up()
    assert srv.stats["size"] == 1 and srv.stats["mac"] == 0
    assert asked == []
    r.close()
    r = await Raw.open(addr)  # the largest legal size is taken, and its buffer allocated only then
    await r.send(LENGTH.pack(MAX_FRAME) + b"x" * 100)
    await asyncio.sleep(0.1)
    assert asked == [MAX_FRAME + LENGTH.size + TAG_LEN] and srv.stats["size"] == 1
    r.close()
    await srv.close()


@pytest.mark.parametrize("garbage", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", LENGTH.pack(2**31), b"RSR1" + bytes(16),
                                     b"RS"])
async def test_garbage_instead_of_hello_is_dropped_and_counted(garbage: bytes) -> None:
    srv, addr = await _server()
    host, port = rpc.split_addr(addr)
    reader, writer = await asyncio.open_connection(host, port)
    assert parse_hello(await reader.readexactly(HELLO_LEN))  # the server's hello comes anyway
    writer.write(garbage)
    if len(garbage) < 4:
        writer.write_eof()  # a cut-off hello
    with contextlib.suppress(ConnectionResetError):
        assert await asyncio.wait_for(reader.read(), 5) == b""
    assert srv.stats["hello"] == 1
    writer.close()
    await srv.close()


async def test_silent_connection_is_dropped_after_the_hello_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rpc, "HELLO_TIMEOUT", 0.2)
    srv, addr = await _server()
    host, port = rpc.split_addr(addr)
    reader, writer = await asyncio.open_connection(host, port)
    await reader.readexactly(HELLO_LEN)
    with contextlib.suppress(ConnectionResetError):
        assert await asyncio.wait_for(reader.read(), 5) == b""
    assert srv.stats["hello"] == 1
    writer.close()
    await srv.close()


async def test_a_hello_without_an_authenticated_frame_is_dropped_after_the_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A hello needs no key; holding a connection open does: one valid frame within the timeout."""
    monkeypatch.setattr(rpc, "HELLO_TIMEOUT", 0.3)
    srv, addr = await _server()
    idle = await Raw.open(addr)          # sends its hello, then nothing
    ok = await Raw.open(addr)
    await ok.send(ok.request(1))
    assert (await ok.reply())["r"] == 1
    await asyncio.sleep(0.6)
    assert await idle.hung_up()
    assert srv.stats["hello"] == 1
    await ok.send(ok.request(2))          # a connection that authenticated stays
    assert (await ok.reply())["r"] == 2
    idle.close()
    ok.close()
    await srv.close()


async def test_connections_over_the_limit_are_closed_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rpc, "MAX_CONNS", 2)
    srv, addr = await _server()
    first, second = await Raw.open(addr), await Raw.open(addr)
    host, port = rpc.split_addr(addr)
    reader, writer = await asyncio.open_connection(host, port)
    with contextlib.suppress(ConnectionResetError):
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed before even a hello
    assert srv.stats["conns"] == 1
    writer.close()
    first.close()
    for _ in range(100):                  # room again once one has gone
        if len(srv._conns) < 2:
            break
        await asyncio.sleep(0.01)
    third = await Raw.open(addr)
    await third.send(third.request(3))
    assert (await third.reply())["r"] == 3
    for r in (second, third):
        r.close()
    await srv.close()


async def test_bad_schema_and_bad_body_are_counted() -> None:
    srv, addr = await _server()
    r = await Raw.open(addr)
    await r.send(r.session.frame(["not", "a", "request"]))
    assert await r.hung_up()
    r.close()
    r = await Raw.open(addr)
    await r.send(b"".join(bytes(b) for b in r.session.seal(b"\xc1")))  # a valid tag over bytes that are not msgpack
    assert await r.hung_up()
    r.close()
    assert srv.stats["schema"] == 1 and srv.stats["body"] == 1 and srv.stats["mac"] == 0
    await srv.close()


async def test_client_drops_a_server_that_sends_a_bad_frame() -> None:
    async def fake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        msg, nonce = hello()
        writer.write(msg)
        peer = parse_hello(await reader.readexactly(HELLO_LEN))
        sess = Session(KEY, peer, nonce, client=False)
        await reader.read(1)
        reply = bytearray(sess.frame({"i": 1, "r": "forged"}))
        reply[-1] ^= 1
        writer.write(bytes(reply))
        await reader.read()
        writer.close()

    server = await asyncio.start_server(fake, "127.0.0.1", 0)
    addr = _addr(server)
    cli = RpcClient(KEY)
    with pytest.raises(Unreachable):
        await cli.call(addr, "echo", timeout=5)
    assert cli.stats["mac"] == 1
    await cli.close()
    server.close()


async def test_server_stops_buffering_replies_nobody_reads() -> None:
    srv, addr = await _server()
    calls = 0
    blob = srv.handlers["blob"]

    async def counted(a: dict[str, Any]) -> Any:
        nonlocal calls
        calls += 1
        return await blob(a)

    srv.register("blob", counted)
    r = await Raw.open(addr)
    n = 40
    await r.send(b"".join(r.request(i, "blob", {"n": MB}) for i in range(n)))
    await asyncio.sleep(0.5)  # the handlers are done long ago; their replies wait for the reader
    (conn,) = srv._conns
    assert conn.transport is not None
    held = conn._queued + conn.transport.get_write_buffer_size()
    assert held <= 3 * MB, held  # not 40 MB: a slow reader makes the replies wait
    first = calls
    await r.send(b"".join(r.request(i, "blob", {"n": MB}) for i in range(n, 2 * n)))
    await asyncio.sleep(0.5)
    assert calls == first  # and no more requests are read (and run) while the replies wait
    got = {(await r.reply())["i"] for _ in range(2 * n)}
    assert got == set(range(2 * n))  # nothing is lost or stuck once it reads
    assert calls == 2 * n
    r.close()
    await srv.close()


async def test_call_to_a_peer_that_never_reads_times_out() -> None:
    done = asyncio.Event()

    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(hello()[0])
        await done.wait()
        writer.close()

    server = await asyncio.start_server(deaf, "127.0.0.1", 0)
    addr = _addr(server)
    cli = RpcClient(KEY)
    start = time.monotonic()
    with pytest.raises(Unreachable, match="timed out"):
        await cli.call(addr, "echo", {"v": os.urandom(64 * MB)}, timeout=1)
    assert time.monotonic() - start < 3
    (conn,) = cli._conns.values()
    assert conn._queued > 0  # the sender held the rest back itself, uncopied, instead of in the transport
    start = time.monotonic()
    with pytest.raises(Unreachable, match="timed out"):  # the next call cannot even send: it times out too
        await asyncio.wait_for(cli.call(addr, "echo", {"v": 1}, timeout=1), 5)
    assert time.monotonic() - start < 3
    done.set()
    await cli.close()
    server.close()


async def test_unreachable_address() -> None:
    cli = RpcClient(KEY, connect_timeout=0.5)
    with pytest.raises(Unreachable):
        await cli.call("127.0.0.1:1", "echo")
    await cli.close()


async def test_server_that_answers_no_hello_is_unreachable() -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    addr = _addr(server)
    cli = RpcClient(KEY, connect_timeout=0.3)
    with pytest.raises(Unreachable):
        await cli.call(addr, "echo")
    await cli.close()
    server.close()

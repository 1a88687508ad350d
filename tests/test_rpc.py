import asyncio
from typing import Any

import pytest

from gossip.rpc import RemoteError, RpcClient, RpcError, RpcServer, Unreachable, write_frame
from gossip.wire import LENGTH, derive_key

KEY = derive_key("k")


async def _server() -> tuple[RpcServer, str]:
    srv = RpcServer(KEY)

    async def echo(a: dict[str, Any]) -> Any:
        await asyncio.sleep(a.get("delay", 0))
        return a.get("v")

    async def bad(a: dict[str, Any]) -> Any:
        raise RemoteError("no such file: x")

    srv.register("echo", echo)
    srv.register("bad", bad)
    await srv.start("127.0.0.1", 0)
    assert srv._server is not None
    port = srv._server.sockets[0].getsockname()[1]
    return srv, f"127.0.0.1:{port}"


async def test_calls_are_multiplexed_and_answer_out_of_order() -> None:
    srv, addr = await _server()
    cli = RpcClient(KEY)
    slow = asyncio.create_task(cli.call(addr, "echo", {"v": "slow", "delay": 0.3}))
    fast = await cli.call(addr, "echo", {"v": "fast"})
    assert fast == "fast" and not slow.done()
    assert await slow == "slow"
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


async def test_wrong_key_client_is_dropped_and_counted() -> None:
    srv, addr = await _server()
    cli = RpcClient(derive_key("wrong"))
    with pytest.raises(Unreachable):
        await cli.call(addr, "echo", {"v": 1}, timeout=2)
    assert srv.stats["mac"] == 1
    good = RpcClient(KEY)
    assert await good.call(addr, "echo", {"v": 2}) == 2
    await cli.close()
    await good.close()
    await srv.close()


async def test_oversized_length_prefix_is_dropped() -> None:
    srv, addr = await _server()
    host, port = addr.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(LENGTH.pack(2**31))
    await writer.drain()
    assert await reader.read() == b""  # server hung up
    assert srv.stats["size"] == 1
    writer.close()
    await srv.close()


async def test_bad_schema_is_counted() -> None:
    srv, addr = await _server()
    host, port = addr.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    write_frame(writer, KEY, ["not", "a", "request"])
    await writer.drain()
    assert await reader.read() == b""
    assert srv.stats["schema"] == 1
    writer.close()
    await srv.close()


async def test_unreachable_address() -> None:
    cli = RpcClient(KEY, connect_timeout=0.5)
    with pytest.raises(Unreachable):
        await cli.call("127.0.0.1:1", "echo")
    await cli.close()

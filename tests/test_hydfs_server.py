"""The HyDFS I/O edge on its own: what it sends when the disk refuses a sync."""

from __future__ import annotations

import errno
from pathlib import Path

from gossip.types import MemberInfo, State
from hydfs.messages import IO_ERROR, reply
from hydfs.server import HydfsServer
from net.rpc import RpcClient, RpcServer
from net.wire import derive_key


class _View:
    def __init__(self, members: dict[str, str]) -> None:
        self.members = [MemberInfo(i, a, State.ALIVE, 0, 0.0) for i, a in members.items()]

    def alive(self) -> list[MemberInfo]:
        return list(self.members)

    def subscribe(self, callback: object) -> None:
        pass


async def test_a_failed_sync_drops_everything_but_i_could_not_write(tmp_path: Path) -> None:
    """Persist, then send: after a failed sync nothing that may depend on an unsynced write goes out,
    but "I could not write" promises nothing, so the primary and the client still hear it."""
    key = derive_key("test")
    srv = HydfsServer("n1", tmp_path, RpcServer(key), RpcClient(key),
                      _View({"n1": "127.0.0.1:1", "n2": "127.0.0.1:2"}))
    srv._refresh_view()

    def disk_full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    srv.storage.sync = disk_full  # type: ignore[method-assign]
    nack = {"t": "append_ack", "f": "f", "term": 1, "ok": False, "promised": 1, "match": 0, "last": 0,
            "runs": None, "ver": None, "trusted": False, "io": True}
    promise = {"t": "isr_ack", "f": "f", "term": 1, "ok": True, "promised": 1, "ver": [1, 0], "trusted": True}
    told = reply(7, IO_ERROR, primary="n1")
    srv.core.send("n2", promise)
    srv.core.send("n2", nack)
    srv.core.send("client-1", told)
    srv.core.send("client-1", reply(8, index=3, commit=3))
    back = srv._flush(reply_to="n2")
    assert back == [nack]
    assert srv._mail["client-1"].msgs == [told]
    assert srv.core.stats["io_error"] == 1
    assert srv.health()["disk"] == "failing"
    del srv.storage.sync  # space again, so close can sync
    await srv.close()

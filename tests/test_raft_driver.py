"""Three RaftNodes in one process over real RPC sockets on 127.0.0.1 and DiskStorage: election, proposals,
a leader that goes away, a restart from disk, lost proposals and bad input."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from net.rpc import RpcClient, RpcServer
from net.wire import derive_key
from raft.config import RaftConfig
from raft.core import LEADER, NotLeader, Role
from raft.driver import ProposalLost, RaftNode
from raft.messages import Entry
from raft.storage import DiskStorage

KEY = derive_key("raft-test")
CFG = RaftConfig(heartbeat=0.05, election_timeout=0.4, snapshot_every=40)
IDS = ["a", "b", "c"]


class Journal:
    """A state machine that keeps every command; apply answers how many it holds."""

    def __init__(self) -> None:
        self.items: list[bytes] = []

    def apply(self, entry: Entry) -> int:
        self.items.append(entry.data)
        return len(self.items)

    def snapshot(self) -> bytes:
        return msgpack.packb(self.items)

    def restore(self, data: bytes) -> None:
        self.items = msgpack.unpackb(data)


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.addrs: dict[str, str] = {}
        self.nodes: dict[str, RaftNode] = {}
        self.machines: dict[str, Journal] = {}
        self.roles: dict[str, list[tuple[Role, int, str | None]]] = {nid: [] for nid in IDS}
        self._io: dict[str, tuple[RpcServer, RpcClient]] = {}

    async def start(self, nid: str) -> RaftNode:
        server = RpcServer(KEY)
        await server.start("127.0.0.1", 0)
        assert server._server is not None
        self.addrs[nid] = f"127.0.0.1:{server._server.sockets[0].getsockname()[1]}"
        client = RpcClient(KEY, connect_timeout=0.5)
        self.machines[nid] = Journal()
        node = RaftNode(nid, IDS, self.addrs.get, server, client, DiskStorage(self.root / nid), self.machines[nid],
                        CFG)
        node.subscribe(lambda role, term, leader: self.roles[nid].append((role, term, leader)))
        await node.start()
        self.nodes[nid] = node
        self._io[nid] = (server, client)
        return node

    async def stop(self, nid: str) -> None:
        node = self.nodes.pop(nid)
        await node.close()
        server, client = self._io.pop(nid)
        await client.close()
        await server.close()
        self.addrs.pop(nid, None)

    async def close(self) -> None:
        for nid in list(self.nodes):
            await self.stop(nid)

    async def leader(self, timeout: float = 10.0) -> RaftNode:
        await until(lambda: any(n.is_leader for n in self.nodes.values()), timeout, "a leader")
        return next(n for n in self.nodes.values() if n.is_leader)


async def until(cond: Callable[[], object], timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


@pytest.fixture
async def cluster(tmp_path: Path) -> Any:
    c = Cluster(tmp_path)
    for nid in IDS:
        await c.start(nid)
    yield c
    await c.close()


async def test_elect_replicate_fail_over_and_restart(cluster: Cluster) -> None:
    lead = await cluster.leader()
    results = [await lead.propose(b"x%d" % i, timeout=5) for i in range(60)]
    results += await asyncio.gather(*(lead.propose(b"x%d" % i, timeout=5) for i in range(60, 100)))
    assert sorted(results) == list(range(1, 101))  # each answer is apply's, for that entry
    want = [b"x%d" % i for i in range(60)]
    assert cluster.machines[lead.node_id].items[:60] == want
    assert lead.stats()["committed"] == 100
    await until(lambda: lead.stats()["snapshots"] >= 2, 2, "snapshots every 40 entries")
    assert cluster.roles[lead.node_id][-1] == (LEADER, lead.term, lead.node_id)

    old, old_term = lead.node_id, lead.term
    await cluster.stop(old)
    new = await cluster.leader()
    assert new.node_id != old and new.term > old_term
    assert await new.propose(b"after", timeout=5) == 101
    assert cluster.machines[new.node_id].items[:60] == want  # the entries survived the leader

    back = await cluster.start(old)  # from its disk: snapshot, log, term and vote
    assert back.term >= old_term and not back.is_leader
    await until(lambda: cluster.machines[old].items == cluster.machines[new.node_id].items, 10, "the catch-up")
    assert len(cluster.machines[old].items) == 101
    with pytest.raises(NotLeader) as exc:
        await back.propose(b"nope", timeout=1)
    assert exc.value.leader_hint == new.node_id


async def test_proposal_lost_when_the_leader_is_cut_off(cluster: Cluster) -> None:
    lead = await cluster.leader()
    await lead.propose(b"first", timeout=5)
    for nid in IDS:
        if nid != lead.node_id:
            await cluster.stop(nid)
    t0 = time.monotonic()
    with pytest.raises(ProposalLost):  # check-quorum: it steps down, and what it held uncommitted is lost
        await lead.propose(b"orphan", timeout=10)
    assert time.monotonic() - t0 < 2 * CFG.election_timeout + 0.5
    assert not lead.is_leader and cluster.roles[lead.node_id][-1][0] is Role.FOLLOWER


async def test_timeout_and_bad_input_do_not_hurt(cluster: Cluster) -> None:
    lead = await cluster.leader()
    follower = next(n for n in cluster.nodes.values() if n is not lead)
    client = RpcClient(KEY)
    try:
        addr = cluster.addrs[follower.node_id]
        junk: list[dict[str, Any]] = [{"m": "nope"}, {}, {"m": [1, None, ["app"] * 11,
                                                                ["app", "a", "b", -1, 0, 0, [], 0, False, 0, None]]}]
        for args in junk:
            assert await client.call(addr, "raft.msgs", args, timeout=2) is None
    finally:
        await client.close()
    assert follower.stats()["malformed"] >= 5
    assert await lead.propose(b"still fine", timeout=5) == 1
    await cluster.stop(follower.node_id)
    other = next(nid for nid in IDS if nid not in (lead.node_id, follower.node_id))
    await cluster.stop(other)
    with pytest.raises((TimeoutError, ProposalLost)):
        await lead.propose(b"no quorum", timeout=0.1)

"""Random and mutated frames, over UDP and TCP, never crash or stall a real node."""

from __future__ import annotations

import socket
import struct

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossip.wire import derive_key, encode
from tests.conftest import pid_alive

pytestmark = pytest.mark.cluster

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
                    st.floats(allow_nan=True), st.text(max_size=20), st.binary(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)
# message-shaped bodies: the keys and values a protocol message would have, in any combination
KEYS = ["t", "type", "from", "src", "id", "node", "addr", "inc", "incarnation", "seq", "target", "updates",
        "members", "state", "i", "m", "a"]
shaped = st.dictionaries(st.sampled_from(KEYS), values, max_size=8)


@pytest.fixture(scope="module")
def node(tmp_path_factory):  # type: ignore[no-untyped-def]
    from tests.conftest import LocalCluster

    c = LocalCluster(tmp_path_factory.mktemp("fuzz"), 2, offset=11)
    yield c
    c.down()


def _udp(addr: str, data: bytes) -> None:
    host, port = addr.split(":")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(data, (host, int(port)))


def _tcp(addr: str, data: bytes) -> None:
    host, port = addr.split(":")
    with socket.create_connection((host, int(port)), timeout=2) as s:
        s.sendall(data)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.one_of(values, shaped), raw=st.binary(max_size=64), flip=st.integers(min_value=0))
def test_frames_never_crash_a_node(node, body, raw, flip) -> None:  # type: ignore[no-untyped-def]
    key = derive_key(node.data["secret"])
    addr = node.addr("node-1")
    good = encode(key, body)                   # valid MAC, arbitrary content: the schema checks' job
    mutated = bytearray(good)
    mutated[flip % len(mutated)] ^= 0x5A        # one corrupted byte: the MAC's job
    for frame in (good, bytes(mutated), raw, msgpack.packb(body, use_bin_type=True) if body is not None else b""):
        _udp(addr, frame)
    _tcp(addr, struct.pack(">I", len(good)) + good)
    _tcp(addr, struct.pack(">I", len(mutated)) + bytes(mutated))
    _tcp(addr, raw)


def test_node_survived_the_fuzzing(node) -> None:  # type: ignore[no-untyped-def]
    # runs after the property above (file order): the node still serves and gossips
    info = node.call("node-1", "node.info")
    assert pid_alive(info["pid"])
    dropped = info["dropped_frames"]
    assert dropped.get("mac", 0) > 0 and dropped.get("schema", 0) + dropped.get("body", 0) > 0, dropped
    assert node.view("node-2")["node-1"]["state"] == "alive"
    assert node.view("node-1")["node-2"]["state"] == "alive"

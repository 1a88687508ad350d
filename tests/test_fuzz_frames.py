"""Random and mutated frames, over UDP and TCP, never crash or stall a real node, and are counted."""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from net.session import HELLO_LEN, Session, hello, parse_hello
from net.wire import LENGTH, derive_key, encode
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
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))


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
    """Raw bytes where the hello should be."""
    host, port = addr.split(":")
    with socket.create_connection((host, int(port)), timeout=2) as s, contextlib.suppress(OSError):
        s.sendall(data)  # the node may hang up (even reset) before we are done: that is its job


def _session(addr: str, key: bytes, make: Any) -> None:
    """A proper handshake, then whatever ``make(session)`` returns, sent as one write."""
    host, port = addr.split(":")
    with socket.create_connection((host, int(port)), timeout=2) as s:
        msg, nonce = hello()
        s.sendall(msg)
        peer = b""
        while len(peer) < HELLO_LEN:
            chunk = s.recv(HELLO_LEN - len(peer))
            assert chunk, "the node hung up before its hello"
            peer += chunk
        sess = Session(key, nonce, parse_hello(peer), client=True)
        with contextlib.suppress(OSError):
            s.sendall(make(sess))


def _dropped(node: Any) -> dict[str, int]:
    return dict(node.call("node-1", "node.info")["dropped_frames"])


def _survived(node: Any) -> None:
    info = node.call("node-1", "node.info")  # it still serves RPC, over a fresh, valid session
    assert pid_alive(info["pid"])
    assert node.view("node-2")["node-1"]["state"] == "alive"
    assert node.view("node-1")["node-2"]["state"] == "alive"


def _grew(before: dict[str, int], after: dict[str, int], *reasons: str) -> int:
    return sum(after.get(r, 0) - before.get(r, 0) for r in reasons)


def test_udp_frames_never_crash_a_node(node) -> None:  # type: ignore[no-untyped-def]
    key = derive_key(node.data["secret"])
    addr = node.addr("node-1")
    before = _dropped(node)

    @FUZZ
    @given(body=st.one_of(values, shaped), raw=st.binary(max_size=64), flip=st.integers(min_value=0))
    def fuzz(body: Any, raw: bytes, flip: int) -> None:
        good = encode(key, body)                   # valid MAC, arbitrary content: the schema checks' job
        mutated = bytearray(good)
        mutated[flip % len(mutated)] ^= 0x5A        # one corrupted byte: the MAC's job
        for frame in (good, bytes(mutated), raw, msgpack.packb(body, use_bin_type=True) if body is not None else b""):
            _udp(addr, frame)

    fuzz()
    _survived(node)
    after = _dropped(node)
    assert _grew(before, after, "mac") > 0, after
    assert _grew(before, after, "schema", "body", "gossip_schema") > 0, after


def test_tcp_frames_never_crash_a_node(node) -> None:  # type: ignore[no-untyped-def]
    key = derive_key(node.data["secret"])
    addr = node.addr("node-1")
    before = _dropped(node)

    @FUZZ
    @given(body=st.one_of(values, shaped), raw=st.binary(max_size=64), flip=st.integers(min_value=0))
    def fuzz(body: Any, raw: bytes, flip: int) -> None:
        _tcp(addr, raw)                                           # garbage instead of the hello
        _tcp(addr, encode(key, body))                             # a valid UDP frame is no hello either

        def good_twice(s: Session) -> bytes:                      # valid tag, arbitrary content, then a replay
            frame = s.frame(body)
            return frame + frame

        def mutated(s: Session) -> bytes:                         # one corrupted byte of a valid frame
            frame = bytearray(s.frame(body))
            frame[LENGTH.size + flip % (len(frame) - LENGTH.size)] ^= 0x5A
            return bytes(frame)

        def not_msgpack(s: Session) -> bytes:                      # a valid tag over arbitrary bytes
            return b"".join(bytes(b) for b in s.seal(raw))

        for make in (good_twice, mutated, not_msgpack, lambda s: raw):  # last: unframed garbage after the hello
            _session(addr, key, make)

    fuzz()
    _survived(node)
    after = _dropped(node)
    assert _grew(before, after, "hello") > 0, after
    assert _grew(before, after, "mac") > 0, after
    assert _grew(before, after, "schema", "body") > 0, after

import os
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from net.session import HELLO_LEN, NONCE_LEN, SMALL, TAG_LEN, FrameReader, Session, hello, parse_hello, session_keys
from net.wire import LENGTH, MAC_LEN, MAX_FRAME, VERSION, FrameError, decode, derive_key, encode

KEY = derive_key("s3cret")


def test_roundtrip() -> None:
    msg = {"t": "ping", "n": 3, "b": b"\x00\xff", "l": [1, "x", None]}
    assert decode(KEY, encode(KEY, msg)) == msg


def test_wrong_key_is_rejected() -> None:
    frame = encode(KEY, {"t": "ping"})
    try:
        decode(derive_key("other"), frame)
    except FrameError as exc:
        assert exc.reason == "mac"
    else:
        raise AssertionError("frame under another key was accepted")


def test_wrong_version_is_rejected() -> None:
    frame = bytearray(encode(KEY, {"t": "ping"}))
    frame[0] = VERSION + 1
    try:
        decode(KEY, bytes(frame))
    except FrameError as exc:
        assert exc.reason == "version"
    else:
        raise AssertionError("frame of another version was accepted")


@given(st.binary(max_size=200))
def test_garbage_never_decodes(data: bytes) -> None:
    try:
        decode(KEY, data)
    except FrameError:
        return
    # only a frame with a valid MAC may decode; random bytes have one with probability 2**-128
    raise AssertionError(f"garbage decoded: {data!r}")


@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_any_bit_flip_is_rejected(pos: int, flip: int) -> None:
    frame = bytearray(encode(KEY, {"t": "ack", "seq": 12345, "from": "node-1"}))
    pos %= len(frame)
    frame[pos] ^= flip or 1
    try:
        decode(KEY, bytes(frame))
    except FrameError:
        return
    raise AssertionError(f"mutated frame accepted (byte {pos})")


def test_mac_covers_version_and_body() -> None:
    frame = encode(KEY, b"x" * 10)
    assert len(frame) == 1 + MAC_LEN + len(frame[1 + MAC_LEN:])


# -- the TCP framing (net.session): sans-IO, so every byte boundary can be exercised -------------

def _pair(key: bytes = KEY) -> tuple[Session, bytes, list[Any], FrameReader]:
    """A client session, its hello, and a server-side reader that collects what it accepts."""
    msg, nonce_c = hello()
    nonce_s = hello()[1]
    got: list[Any] = []
    reader = FrameReader(lambda peer: Session(key, peer, nonce_s, client=False), got.append)
    return Session(key, nonce_c, nonce_s, client=True), msg, got, reader


def _feed(reader: FrameReader, data: bytes, cuts: list[int] | None = None) -> None:
    """Deliver ``data`` the way a socket might: in pieces no larger than each buffer offered."""
    pos, cuts = 0, list(cuts or [])
    while pos < len(data):
        buf = reader.get_buffer()
        n = min(len(buf), len(data) - pos, (cuts.pop(0) if cuts else len(data)) or 1)
        buf[:n] = data[pos:pos + n]
        reader.buffer_updated(n)
        pos += n


def test_session_keys_differ_by_direction_and_by_connection() -> None:
    a, b, c = (os.urandom(NONCE_LEN) for _ in range(3))
    c2s, s2c = session_keys(KEY, a, b)
    assert c2s != s2c and len(c2s) == 16
    assert session_keys(KEY, a, c)[0] != c2s and session_keys(KEY, c, b)[0] != c2s
    assert session_keys(derive_key("other"), a, b)[0] != c2s


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=300), st.integers(min_value=0, max_value=3 * SMALL)), min_size=1,
                max_size=6),
       st.lists(st.integers(min_value=0, max_value=70_000), max_size=40))
def test_frames_survive_any_split_of_the_stream(payloads: list[Any], cuts: list[int]) -> None:
    # small frames are parsed in the scratch buffer, large ones (ints: that many bytes) in their own buffer
    client, msg, got, reader = _pair()
    msgs = [{"i": i, "v": p if isinstance(p, bytes) else bytes(p)} for i, p in enumerate(payloads)]
    _feed(reader, msg + b"".join(client.frame(m) for m in msgs), cuts)
    assert got == msgs


def test_large_frame_parts_and_small_frame_tags_agree() -> None:
    # seal() tags a large body in pieces (prefix, body) and a small one joined: the reader checks both one way
    client, msg, got, reader = _pair()
    big = bytes(SMALL * 3)
    parts = client.seal(msgpack.packb(big))
    assert len(parts) == 3 and len(parts[2]) == TAG_LEN
    _feed(reader, msg + b"".join(bytes(p) for p in parts) + client.frame("small"))
    assert got == [big, "small"]


@given(st.integers(min_value=0), st.integers(min_value=1, max_value=255))
def test_any_byte_flip_in_a_tcp_frame_is_rejected(pos: int, flip: int) -> None:
    client, msg, got, reader = _pair()
    frame = bytearray(client.frame({"i": 7, "m": "hydfs.msgs", "a": {"b": b"\x00" * 40}}))
    pos %= len(frame)
    frame[pos] ^= flip
    try:
        _feed(reader, msg + bytes(frame))
    except FrameError as exc:
        assert exc.reason in ("mac", "size")
    assert got == []  # a longer length prefix just waits for bytes that never come


def test_a_frame_from_another_session_or_out_of_order_is_rejected() -> None:
    client, msg, got, reader = _pair()
    other, _, _, _ = _pair()
    with pytest.raises(FrameError, match="mac"):
        _feed(reader, msg + other.frame("x"))
    client, msg, got, reader = _pair()
    first = client.frame(1)
    _feed(reader, msg + first)
    with pytest.raises(FrameError, match="mac"):
        _feed(reader, first)  # a duplicate
    client, msg, got, reader = _pair()
    first, second = client.frame(1), client.frame(2)
    with pytest.raises(FrameError, match="mac"):
        _feed(reader, msg + second + first)
    assert got == []


def test_server_frames_do_not_verify_as_client_frames() -> None:
    # a peer reflecting our own frames back at us: the directions have different keys
    nonce_c, nonce_s = hello()[1], hello()[1]
    client = Session(KEY, nonce_c, nonce_s, client=True)
    got: list[Any] = []
    at_client = FrameReader(lambda peer: client, got.append)
    with pytest.raises(FrameError, match="mac"):
        _feed(at_client, b"RSR2" + nonce_s + client.frame("reflected"))


@pytest.mark.parametrize(("data", "reason"), [
    (b"HTTP", "hello"), (b"RSR1" + bytes(16), "hello"), (b"RSR2" + bytes(16) + LENGTH.pack(MAX_FRAME + 1), "size"),
    (b"RSR2" + bytes(16) + LENGTH.pack(0) + bytes(TAG_LEN), "mac")])
def test_reader_rejects(data: bytes, reason: str) -> None:
    _, _, _, reader = _pair()
    with pytest.raises(FrameError, match=reason):
        _feed(reader, data)


def test_cut_off_hello_is_a_bad_hello_but_a_cut_off_frame_is_not() -> None:
    _, msg, _, reader = _pair()
    _feed(reader, msg[:7])
    with pytest.raises(FrameError, match="hello"):
        reader.at_eof()
    client, msg, _, reader = _pair()
    _feed(reader, msg + client.frame("x")[:5])
    reader.at_eof()


def test_parse_hello() -> None:
    msg, nonce = hello()
    assert len(msg) == HELLO_LEN and parse_hello(msg) == nonce
    for bad in (msg[:-1], b"XSR2" + nonce, msg + b"x"):
        with pytest.raises(FrameError, match="hello"):
            parse_hello(bad)

from hypothesis import given
from hypothesis import strategies as st

from gossip.wire import MAC_LEN, VERSION, FrameError, decode, derive_key, encode

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

"""Log records, tuple batches and wire messages: exact round trips; anything malformed is rejected."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rainstorm.stream.channels import Answer, Deliver, OutChannel, Query, parse_message
from rainstorm.stream.records import (
    EMPTY_BATCH,
    CommitRecord,
    FenceRecord,
    RecordError,
    decode_batch,
    decode_record,
    encode_batch,
    encode_record,
)

PROPS = settings(max_examples=150, derandomize=True, deadline=None)
nat = st.integers(0, (1 << 63) - 1)
scalar = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 63) - 1), st.text(max_size=8),
                   st.floats(allow_nan=False))
group = st.one_of(st.text(max_size=8), st.integers(0, 100), st.tuples(st.text(max_size=3), st.integers(0, 9)))

commits = st.builds(
    CommitRecord,
    epoch=nat,
    inputs=st.lists(st.tuples(nat, nat, st.booleans()), max_size=4),
    source=st.one_of(st.none(), st.tuples(nat, st.booleans())),
    outputs=st.lists(st.tuples(nat, nat, st.binary(max_size=20), st.booleans()), max_size=4),
    sink=st.binary(max_size=30),
    dead=st.binary(max_size=30),
    state=st.lists(st.tuples(nat, st.lists(st.tuples(group, scalar), max_size=3)), max_size=2),
    acks=st.lists(st.tuples(nat, nat), max_size=3),
    pub=nat,
)


@PROPS
@given(commits)
def test_commit_record_round_trip(rec: CommitRecord) -> None:
    assert decode_record(encode_record(rec)) == rec


@PROPS
@given(nat)
def test_fence_record_round_trip(epoch: int) -> None:
    assert decode_record(encode_record(FenceRecord(epoch))) == FenceRecord(epoch)


GOOD = [2, 1, 3, [[0, 5, False]], [17, False], [[1, 2, b"\x90", True]], b"", b"", [[0, [["g", 2]]]], [[1, 1]], 0]


@pytest.mark.parametrize("mutate,needle", [
    (lambda v: v.__setitem__(0, 1), "version 1 is not supported"),
    (lambda v: v.__setitem__(1, 9), "record type 9"),
    (lambda v: v.__setitem__(2, -1), "epoch"),
    (lambda v: v.__setitem__(2, True), "epoch"),
    (lambda v: v.pop(), "11 fields"),
    (lambda v: v.__setitem__(3, [[0, "5", False]]), "input mark"),
    (lambda v: v.__setitem__(3, [[0, 5]]), "input"),
    (lambda v: v.__setitem__(4, [17]), "source"),
    (lambda v: v.__setitem__(5, [[1, 2, "str", True]]), "payload"),
    (lambda v: v.__setitem__(5, [[1, 0.5, b"", True]]), "output seq"),
    (lambda v: v.__setitem__(6, "lines"), "sink"),
    (lambda v: v.__setitem__(7, None), "dead"),
    (lambda v: v.__setitem__(8, [[0, [["g"]]]]), "state change"),
    (lambda v: v.__setitem__(9, [[1]]), "ack"),
    (lambda v: v.__setitem__(10, None), "pub"),
    (lambda v: v.__setitem__(slice(None), {"a": 1}), "expected [version"),
])
def test_malformed_records_are_rejected_with_a_reason(mutate: Any, needle: str) -> None:
    assert isinstance(decode_record(msgpack.packb(GOOD)), CommitRecord)
    v = [list(x) if isinstance(x, list) else x for x in GOOD]
    if isinstance(v, list):
        mutate(v)
    with pytest.raises(RecordError, match=needle.replace("(", r"\(").replace("[", r"\[")):
        decode_record(msgpack.packb(v))


def test_fence_record_with_extra_fields_and_non_msgpack() -> None:
    with pytest.raises(RecordError, match="3 fields"):
        decode_record(msgpack.packb([2, 0, 3, 4]))
    with pytest.raises(RecordError, match="not msgpack"):
        decode_record(b"\xc1")


@PROPS
@given(st.binary(max_size=200))
def test_random_bytes_only_ever_raise_record_error(data: bytes) -> None:
    try:
        decode_record(data)
    except RecordError:
        pass
    try:
        decode_batch(data)
    except RecordError:
        pass


@PROPS
@given(commits, st.data())
def test_truncated_or_flipped_records_never_crash(rec: CommitRecord, data: st.DataObject) -> None:
    raw = bytearray(encode_record(rec))
    cut = data.draw(st.integers(0, len(raw)))
    at = data.draw(st.integers(0, len(raw) - 1))
    for bad in (bytes(raw[:cut]), bytes(raw[:at]) + bytes([raw[at] ^ 0xFF]) + bytes(raw[at + 1:])):
        try:
            decode_record(bad)
        except RecordError:
            pass


# ----------------------------------------------------------------------------------------- batches

def test_batch_round_trip_and_shape_checks() -> None:
    tuples = [("f:1", "k", [1, "x"]), ("f:2/0.0", None, {"a": 1})]
    assert decode_batch(encode_batch(tuples)) == [["f:1", "k", [1, "x"]], ["f:2/0.0", None, {"a": 1}]]
    assert decode_batch(EMPTY_BATCH) == []
    for bad in ([["f:1", "k"]], [[1, "k", "v"]], ["f:1"], {"a": 1}):
        with pytest.raises(RecordError):
            decode_batch(msgpack.packb(bad))
    with pytest.raises(TypeError):
        encode_batch([("f:1", "k", {1, 2})])   # type: ignore[list-item]


# ----------------------------------------------------------------------------------------- messages

def test_messages_round_trip() -> None:
    for m in (Deliver((0, 1), (1, 0), 3, 7, b"\x90", True), Answer((1, 0), (0, 1), 2, 9, 7), Query((0, 1), (1, 0), 3)):
        assert parse_message(msgpack.unpackb(msgpack.packb(m.to_wire()))) == m


@pytest.mark.parametrize("wire", [
    None, [], ["x", 0, 0, 0, 0, 0], ["q", 0, 0, 0, 0], ["q", 0, 0, 0, 0, -1], ["q", 0, 0, 0, 0, True],
    ["a", 0, 0, 0, 0, 1, 2], ["a", 0, 0, 0, 0, 1, 2, "3"],
    ["d", 0, 0, 1, 0, 1, 0, b"", False], ["d", 0, 0, 1, 0, 1, 1, "payload", False],
    ["d", 0, 0, 1, 0, 1, 1, b"", 1], {"t": "d"},
])
def test_malformed_messages_are_dropped(wire: Any) -> None:
    assert parse_message(wire) is None


# ------------------------------------------------------------------------------------ producer side

def test_outbox_keeps_everything_above_the_committed_mark_only() -> None:
    ch = OutChannel(0)
    for s in range(1, 6):
        ch.add(s, bytes([s]), s == 5)
    assert ch.take_window(3) == []                       # receiver not heard from yet: ask first
    assert ch.on_answer(epoch=1, accepted=0, committed=0, now=0.0)
    assert [s for s, _, _ in ch.take_window(3)] == [1, 2, 3]
    ch.on_answer(1, accepted=3, committed=1, now=0.1)    # accepted is not committed: 2, 3 stay
    assert sorted(ch.batches) == [2, 3, 4, 5]
    assert [s for s, _, _ in ch.take_window(3)] == [4]   # window: committed + 3
    assert not ch.on_answer(0, accepted=5, committed=5, now=0.2)   # an older receiver instance: ignored
    assert sorted(ch.batches) == [2, 3, 4, 5]
    # a new receiver instance (its node lost the inbox): continue from what IT holds
    assert ch.on_answer(2, accepted=1, committed=1, now=0.3)
    assert [s for s, _, _ in ch.take_window(3)] == [2, 3, 4]
    assert ch.stalled(now=5.0, after=0.5)                # nothing heard: go back to accepted + 1
    assert [s for s, _, _ in ch.take_window(3)] == [2, 3, 4]
    ch.on_answer(2, accepted=5, committed=5, now=5.1)
    assert not ch.pending() and ch.batches == {} and ch.ended
    with pytest.raises(ValueError):
        ch.add(7, b"", False)

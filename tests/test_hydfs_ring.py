"""Ring placement: a pure function of (name, live ids) that every node computes alike."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hydfs.ring import Ring, position

ids = st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=12, unique=True)
names = st.text(min_size=1, max_size=20)
FAST = settings(max_examples=200, derandomize=True, deadline=None)


def test_position_is_first_8_bytes_of_sha256() -> None:
    import hashlib

    assert position("n1") == int.from_bytes(hashlib.sha256(b"n1").digest()[:8], "big")
    assert 0 <= position("anything") < 2**64


@FAST
@given(ids, names, st.integers(0, 5))
def test_replicas_are_distinct_live_and_at_most_n(nodes: list[str], name: str, n: int) -> None:
    reps = Ring(nodes).replicas(name, n)
    assert len(reps) == min(n, len(nodes))
    assert len(set(reps)) == len(reps)
    assert set(reps) <= set(nodes)


@FAST
@given(ids, names)
def test_replicas_are_the_clockwise_successors(nodes: list[str], name: str) -> None:
    reps = Ring(nodes).replicas(name, 3)
    p = position(name)
    # distance going clockwise from the name's position; ties on position break by id
    order = sorted(nodes, key=lambda x: ((position(x) - p) % 2**64, x))
    assert reps == order[: len(reps)]


@FAST
@given(ids, names)
def test_order_of_ids_does_not_matter(nodes: list[str], name: str) -> None:
    assert Ring(nodes).replicas(name) == Ring(list(reversed(nodes))).replicas(name)


@FAST
@given(ids, names, st.data())
def test_removing_a_node_only_replaces_that_node(nodes: list[str], name: str, data: st.DataObject) -> None:
    gone = data.draw(st.sampled_from(nodes))
    before = Ring(nodes).replicas(name, 3)
    after = Ring([x for x in nodes if x != gone]).replicas(name, 3)
    if gone not in before:
        assert after == before
    else:
        # the survivors keep their relative order; at most one new node joins at the end
        assert [x for x in before if x != gone] == after[: len(before) - 1]


@FAST
@given(ids, names, st.text(min_size=1, max_size=8))
def test_a_join_moves_placement_by_at_most_one(nodes: list[str], name: str, new: str) -> None:
    before = Ring(nodes).replicas(name, 3)
    after = Ring([*nodes, new]).replicas(name, 3)
    assert len(set(after) - set(before)) <= (1 if new not in nodes else 0)
    assert set(after) - {new} <= set(before)


@FAST
@given(ids, names)
def test_primary_is_the_first_replica(nodes: list[str], name: str) -> None:
    ring = Ring(nodes)
    assert ring.primary(name) == ring.replicas(name, 3)[0]


def test_empty_ring() -> None:
    assert Ring().replicas("f") == []
    assert Ring().primary("f") is None

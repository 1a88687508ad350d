"""Operator semantics (Transform / FilteredTransform / AggregateByKey), args, stable partitioning."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rainstorm.stream import AggregateByKey, Args, FilteredTransform, Transform, args
from rainstorm.stream.chain import Chain, dead_lines, sink_line
from rainstorm.stream.operators import DeadLetter, Operator, error_line
from rainstorm.stream.partition import partition_of, stable_hash
from rainstorm.stream.plan import build_plan


def run(op: Operator, tuples: list[tuple[str, Any, Any]], stage: int = 0,
        state: dict[Any, Any] | None = None) -> tuple[list[Any], list[DeadLetter], dict[Any, Any]]:
    dead: list[DeadLetter] = []
    changes: dict[Any, Any] = {}
    out = op.run(stage, tuples, dead, {} if state is None else state, changes)
    return out, dead, changes


SRC = [("f:1", "f:1", "a b"), ("f:2", "f:2", "c"), ("f:3", "f:3", "")]


# ------------------------------------------------------------------------------------------ Transform

def test_transform_one_pair_and_derived_ids() -> None:
    out, dead, _ = run(Transform(lambda k, v: (v, len(v))), SRC, stage=2)
    assert out == [("f:1/2.0", "a b", 3), ("f:2/2.0", "c", 1), ("f:3/2.0", "", 0)]
    assert dead == []


def test_transform_zero_or_many_outputs_list_or_generator() -> None:
    out, _, _ = run(Transform(lambda k, v: [(w, 1) for w in v.split()]), SRC)
    assert out == [("f:1/0.0", "a", 1), ("f:1/0.1", "b", 1), ("f:2/0.0", "c", 1)]

    def gen(k: Any, v: Any) -> Any:
        yield from ((w, k) for w in v.split())

    out2, _, _ = run(Transform(gen), SRC)
    assert [t[0] for t in out2] == ["f:1/0.0", "f:1/0.1", "f:2/0.0"]


@pytest.mark.parametrize("result,needle", [
    (None, "returned None"),
    ((1, 2, 3), "tuple of 3"),
    ([("a", 1), "oops"], "expected (key, value) pairs"),
    ({"a": 1}, "returned dict"),
])
def test_transform_bad_results_are_dead_letters(result: Any, needle: str) -> None:
    out, dead, _ = run(Transform(lambda k, v: result), SRC[:1])
    assert out == []
    assert len(dead) == 1 and dead[0][:4] == ("f:1", 0, "f:1", "a b")
    assert needle in dead[0][4] and "\n" not in dead[0][4]


def test_raising_operator_dead_letters_that_tuple_only() -> None:
    def fn(k: Any, v: Any) -> Any:
        if v == "c":
            raise ValueError("no c\nplease")
        return (k, v)

    out, dead, _ = run(Transform(fn), SRC, stage=1)
    assert [t[0] for t in out] == ["f:1/1.0", "f:3/1.0"]
    assert dead == [("f:2", 1, "f:2", "c", "ValueError: no c please")]


def test_error_line_is_one_bounded_line() -> None:
    line = error_line(RuntimeError("x\n" * 1000))
    assert "\n" not in line and len(line) <= 500 and line.startswith("RuntimeError: x x")


# ---------------------------------------------------------------------------------- FilteredTransform

def test_filter_keeps_matching_with_and_without_fn() -> None:
    out, _, _ = run(FilteredTransform(lambda k, v: "a" in v or v == "c"), SRC, stage=3)
    assert out == [("f:1/3.0", "f:1", "a b"), ("f:2/3.0", "f:2", "c")]
    out2, _, _ = run(FilteredTransform(lambda k, v: bool(v), lambda k, v: [(v, 1), (v, 2)]), SRC)
    assert out2 == [("f:1/0.0", "a b", 1), ("f:1/0.1", "a b", 2), ("f:2/0.0", "c", 1), ("f:2/0.1", "c", 2)]


def test_filter_predicate_or_fn_raising_is_dead_letter() -> None:
    out, dead, _ = run(FilteredTransform(lambda k, v: 1 / len(v)), SRC)
    assert len(out) == 2 and [d[0] for d in dead] == ["f:3"] and dead[0][4].startswith("ZeroDivisionError")
    out, dead, _ = run(FilteredTransform(lambda k, v: True, lambda k, v: 1 / 0), SRC[:1])
    assert out == [] and dead[0][0] == "f:1"


def test_constructors_reject_non_callables() -> None:
    with pytest.raises(TypeError, match="fn must be a function"):
        Transform("nope")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="predicate must be a function"):
        FilteredTransform(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="agg must be"):
        AggregateByKey(lambda k, v: k, "max")
    with pytest.raises(TypeError, match="initial"):
        AggregateByKey(lambda k, v: k, "count", initial="0")
    with pytest.raises(TypeError, match="msgpack"):
        AggregateByKey(lambda k, v: k, lambda a, k, v: a, initial=object())


# ------------------------------------------------------------------------------------- AggregateByKey

def words(*vs: str) -> list[tuple[str, Any, Any]]:
    return [(f"f:{i}", f"f:{i}", v) for i, v in enumerate(vs, 1)]


def test_count_emits_running_count_per_group() -> None:
    op = AggregateByKey(lambda k, v: v, "count")
    state: dict[Any, Any] = {}
    out, _, changes = run(op, words("a", "b", "a", "a"), stage=1, state=state)
    assert [(t[1], t[2]) for t in out] == [("a", 1), ("b", 1), ("a", 2), ("a", 3)]
    assert out[0][0] == "f:1/1.0"
    assert changes == {"a": 3, "b": 1} and state == {"a": 3, "b": 1}
    out, _, changes = run(op, words("b"), state=state)   # state carries over batches
    assert [(t[1], t[2]) for t in out] == [("b", 2)] and changes == {"b": 2}


def test_count_with_initial() -> None:
    out, _, _ = run(AggregateByKey(lambda k, v: v, "count", initial=10), words("a", "a"))
    assert [t[2] for t in out] == [11, 12]


def test_sum_emits_only_when_the_value_changes() -> None:
    op = AggregateByKey(lambda k, v: k[0], "sum")
    tuples = [("x", "g", 2), ("y", "g", 0), ("z", "g", 1.5), ("w", "h", 0)]
    out, dead, changes = run(op, tuples)
    assert [(t[1], t[2]) for t in out] == [("g", 2), ("g", 3.5), ("h", 0)]   # adding 0 is no change; new group is
    assert dead == [] and changes == {"g": 3.5, "h": 0}


def test_sum_of_non_numbers_and_overflow_are_dead_letters() -> None:
    op = AggregateByKey(lambda k, v: "g", "sum")
    out, dead, _ = run(op, [("a", "k", "3"), ("b", "k", True), ("c", "k", 1 << 63), ("d", "k", 1 << 63)])
    assert [t[2] for t in out] == [1 << 63]
    assert [d[0] for d in dead] == ["a", "b", "d"]
    assert "sum needs a number" in dead[0][4] and "64 bits" in dead[2][4]


def test_custom_aggregate_may_mutate_acc_and_sees_fresh_copies() -> None:
    def collect(acc: Any, k: Any, v: Any) -> Any:
        acc.append(v)       # mutates in place: must not change what was emitted before
        return acc

    op = AggregateByKey(lambda k, v: "g", collect, initial=[])
    state: dict[Any, Any] = {}
    out, _, changes = run(op, words("a", "b", "c"), state=state)
    assert [t[2] for t in out] == [["a"], ["a", "b"], ["a", "b", "c"]]
    assert op.value_of(state["g"]) == ["a", "b", "c"] and isinstance(changes["g"], bytes)


def test_custom_aggregate_emits_only_on_change() -> None:
    op = AggregateByKey(lambda k, v: "g", lambda acc, k, v: max(acc, len(v)), initial=0)
    out, _, _ = run(op, words("aa", "a", "aaa", ""))
    assert [t[2] for t in out] == [2, 3]


def test_group_keys_lists_frozen_bad_groups_dead() -> None:
    op = AggregateByKey(lambda k, v: v, "count")
    tuples = [("a", 0, ["x", 1]), ("b", 0, ("x", 1)), ("c", 0, {"d": 1}), ("d", 0, object())]
    out, dead, changes = run(op, tuples)
    assert [(t[1], t[2]) for t in out] == [(("x", 1), 1), (("x", 1), 2)]
    assert [d[0] for d in dead] == ["c", "d"]
    assert changes == {("x", 1): 2}


def test_key_fn_raising_is_dead_letter() -> None:
    out, dead, _ = run(AggregateByKey(lambda k, v: v["no"], "count"), words("a"))
    assert out == [] and dead[0][4].startswith("TypeError")


# ---------------------------------------------------------------------------------------------- args

def test_args_is_a_read_only_mapping_with_a_clear_missing_error() -> None:
    a = Args({"n": "3"})
    assert dict(a) == {"n": "3"} and a.get("m", "x") == "x" and len(a) == 1
    with pytest.raises(KeyError, match="no --arg m="):
        a["m"]
    with pytest.raises(TypeError):
        a["n"] = "4"  # type: ignore[index]
    assert isinstance(args, Args)


# ------------------------------------------------------------------------------ chain, sink, routing

def test_sink_line_and_dead_lines_format() -> None:
    assert sink_line("a", 1) == '["a", 1]'
    assert sink_line(("x", 1), ["é"]) == '[["x", 1], ["é"]]'
    raw = dead_lines([("f:1", 2, "k", b"\x00", "ValueError: no")])
    row = json.loads(raw)
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    assert row == {"id": "f:1", "stage": 2, "key": "k", "value": "b'\\x00'", "error": "ValueError: no"}


def test_chain_routes_by_key_or_by_the_next_aggregates_group() -> None:
    stages = [Transform(lambda k, v: (v, 1)), AggregateByKey(lambda k, v: k.upper(), "count")]
    plan = build_plan("j", "f", "out", stages, 3, fuse=True)
    chain = Chain(plan, 0)
    res = chain.run(words("a", "b", "a", "c"))
    assert sum(res.counts.values()) == 4
    for p, payload in res.outputs.items():
        for _tid, k, _v in msgpack.unpackb(payload):
            assert partition_of(k.upper(), 3) == p


def test_chain_unencodable_outputs_and_sink_failures_are_dead_letters() -> None:
    plan = build_plan("j", "f", "out", [Transform(lambda k, v: (k, {1, 2} if v == "b" else v))], [2, 2],
                      fuse=False)
    res = Chain(plan, 1).run(words("a", "b"))      # stage 1 is the sink
    assert res.sink == b'["f:1", "a"]\n'
    assert [d[0] for d in res.dead] == ["f:2/0.0"] and "JSON" in res.dead[0][4]
    plan2 = build_plan("j", "f", "out", [Transform(lambda k, v: (k, {1} if v == "b" else v)),
                                         Transform(lambda k, v: (k, v))], 1, fuse=False)
    res2 = Chain(plan2, 1).run(words("a", "b"))    # stage 1 sends to stage 2
    assert [d[0] for d in res2.dead] == ["f:2/0.0"] and "encoded" in res2.dead[0][4]
    assert res2.counts == {0: 1}


# --------------------------------------------------------------------------------------- partitioning

def test_stable_hash_is_pinned() -> None:
    # a wire contract between nodes and across versions (str hash() is salted per process; this is not)
    assert stable_hash("a") == 4200413011
    assert stable_hash(7) == 3866900430
    assert stable_hash(("a", 1)) == stable_hash(["a", 1])
    assert [partition_of(f"k{i}", 4) for i in range(8)] == [3, 1, 2, 3, 0, 3, 2, 0]


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.one_of(st.text(), st.integers(-(1 << 63), (1 << 64) - 1), st.lists(st.text(), max_size=3)),
       st.integers(1, 64))
def test_partition_in_range_and_tuple_list_agree(key: Any, n: int) -> None:
    p = partition_of(key, n)
    assert 0 <= p < n
    if isinstance(key, list):
        assert partition_of(tuple(key), n) == p


def test_partition_spreads_keys() -> None:
    for n in (2, 3, 5, 8):
        c = Counter(partition_of(f"user-{i}", n) for i in range(8000))
        assert min(c.values()) > 8000 / n * 0.85


def test_reads_first_arg_is_false_only_when_the_key_is_provably_unused() -> None:
    from rainstorm.stream.operators import reads_first_arg

    def value_only(key: Any, value: Any) -> bool:
        return ",500," in value

    def uses_key(key: Any, value: Any) -> bool:
        return key.endswith("0")

    def closes_over_key(key: Any, value: Any) -> Any:
        return (lambda: key)()

    def peeks(key: Any, value: Any) -> Any:
        return locals()["key"]

    assert not reads_first_arg(value_only) and not reads_first_arg(lambda k, v: v)
    assert all(reads_first_arg(f) for f in (uses_key, closes_over_key, peeks, print, lambda *a: a[0]))


def test_the_source_fast_path_gives_a_keyed_predicate_the_real_key() -> None:
    """A predicate that reads its key gets ``<src>:<offset>``; one that does not gets None; both keep
    the same lines with the same ids and keys as the tuple-by-tuple path."""
    from rainstorm.stream.source import Stripe, lines_file, read_lines

    chunk = read_lines(lines_file(["a,1", "b,2", "c,3"]), Stripe(0, 1, 1 << 20), 0, 1 << 20, final=True)
    seen: list[Any] = []

    def keyed(key: Any, value: Any) -> bool:
        seen.append(key)
        return key != "f:4"

    slow = FilteredTransform(keyed).run(0, chunk.tuples("f"), [], {}, {})
    assert seen == ["f:0", "f:4", "f:8"]
    seen.clear()
    assert FilteredTransform(keyed).run_lines(0, "f", chunk, []) == slow == [
        ("f:0/0.0", "f:0", "a,1"), ("f:8/0.0", "f:8", "c,3")]
    assert seen == ["f:0", "f:4", "f:8"]
    keyless = FilteredTransform(lambda k, v: v != "b,2")
    assert keyless.run_lines(0, "f", chunk, []) == slow

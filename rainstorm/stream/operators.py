"""The operators a job file declares its stages with, and how each runs over a batch of tuples.

A tuple is ``(id, key, value)``. Operators run a whole batch per call (one loop per operator, no
per-tuple dispatch), so a commit record carries a batch. An operator that raises on a tuple sends
that tuple and a one-line error to ``dead``; the batch goes on.

Derived ids are ``f"{input id}/{stage}.{output index}"``: a function of the input id, the (logical)
stage index and the output index only, so they do not depend on which task ran the stage, on fusion,
or on how often a batch was retried.

Values cross stage boundaries as msgpack: a tuple returned by a user function arrives downstream as
a list. AggregateByKey group keys are frozen (lists -> tuples) so they stay hashable after a rebuild.
"""

from __future__ import annotations

import dis
import types
from collections.abc import Callable, Iterator, Mapping
from itertools import compress, repeat
from typing import Any

import msgpack

from rainstorm.stream.source import Lines

Tup = tuple[str, Any, Any]                 # (id, key, value)
DeadLetter = tuple[str, int, Any, Any, str]  # (tuple id, stage, key, value, one-line error)

MAX_ERROR = 500


class Args(Mapping[str, str]):
    """``--arg NAME=VALUE`` pairs given at submit, read-only for the job (``args["NAME"]``)."""

    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        self._d: dict[str, str] = dict(values or {})

    def __getitem__(self, name: str) -> str:
        try:
            return self._d[name]
        except KeyError:
            raise KeyError(f"no --arg {name}=... was given at submit") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __repr__(self) -> str:
        return f"Args({self._d!r})"

    def _set(self, values: Mapping[str, str]) -> None:
        """Used by the job loader only: the singleton is filled before a job file is imported."""
        self._d = dict(values)


# The object job files import (``from rainstorm import args``); jobfile.load_job fills it, then gives
# the loaded module its own frozen copy so two jobs in one process do not see each other's args.
args = Args()


def error_line(exc: BaseException) -> str:
    """One line, bounded: what the dead-letter list shows for an operator that raised."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= MAX_ERROR else text[: MAX_ERROR - 3] + "..."


def freeze(v: Any) -> Any:
    """Lists (what msgpack decodes arrays to) -> tuples, recursively: a hashable group key."""
    if type(v) is list:
        return tuple(freeze(x) for x in v)
    return v


_FRAME_PEEKERS = frozenset({"locals", "vars", "eval", "exec", "_getframe", "currentframe"})


def reads_first_arg(fn: Any) -> bool:
    """Whether ``fn`` may read its first argument (the key). Only a plain function whose bytecode never
    touches that parameter (no load, store, closure or frame inspection) is known not to; anything
    else (builtins, callable objects, ``*args`` wrappers) is assumed to read it."""
    code = getattr(fn, "__code__", None)
    if not isinstance(fn, types.FunctionType) or code is None or code.co_argcount < 1:
        return True
    name = code.co_varnames[0]
    if name in code.co_cellvars or _FRAME_PEEKERS & set(code.co_names):
        return True
    for ins in dis.get_instructions(code):
        v = ins.argval
        if v == name or (isinstance(v, tuple) and name in v):
            return True
    return False


def _check_callable(what: str, fn: Any) -> None:
    if not callable(fn):
        raise TypeError(f"{what} must be a function, got {type(fn).__name__}")


def _pairs(r: Any) -> list[tuple[Any, Any]]:
    """A user function's result as a list of (key, value): one pair, or a list / generator of pairs."""
    if type(r) is tuple:
        if len(r) == 2:
            return [r]
        raise TypeError(f"returned a tuple of {len(r)} items; expected (key, value) or a list of pairs")
    if isinstance(r, list | types.GeneratorType):
        out = []
        for p in r:
            if not isinstance(p, tuple | list) or len(p) != 2:
                raise TypeError(f"returned a list holding {type(p).__name__} {p!r:.40}; expected (key, value) pairs")
            out.append((p[0], p[1]))
        return out
    if r is None:
        raise TypeError("returned None; expected (key, value) or a list of pairs")
    raise TypeError(f"returned {type(r).__name__}; expected (key, value) or a list of pairs")


class Operator:
    """Base class of the stage operators. ``stateful`` operators need their task's partitioning."""

    stateful = False

    def run(self, stage: int, batch: list[Tup], dead: list[DeadLetter],
            state: dict[Any, Any], changes: dict[Any, Any]) -> list[Tup]:
        raise NotImplementedError

    def route_key(self, key: Any, value: Any) -> Any:
        """The key tuples are hash-partitioned on when they flow *into* this operator's stage."""
        return key


class Transform(Operator):
    """``fn(key, value)`` -> ``(key, value)`` or a list of pairs (zero or more outputs)."""

    def __init__(self, fn: Callable[[Any, Any], Any]) -> None:
        _check_callable("Transform(fn): fn", fn)
        self.fn = fn

    def __repr__(self) -> str:
        return f"Transform({getattr(self.fn, '__name__', self.fn)!s})"

    def run(self, stage: int, batch: list[Tup], dead: list[DeadLetter],
            state: dict[Any, Any], changes: dict[Any, Any]) -> list[Tup]:
        fn = self.fn
        out: list[Tup] = []
        append = out.append
        for tid, k, v in batch:
            try:
                r = fn(k, v)
                if type(r) is tuple and len(r) == 2:
                    append((f"{tid}/{stage}.0", r[0], r[1]))
                else:
                    for i, (k2, v2) in enumerate(_pairs(r)):
                        append((f"{tid}/{stage}.{i}", k2, v2))
            except Exception as exc:
                dead.append((tid, stage, k, v, error_line(exc)))
        return out


class FilteredTransform(Operator):
    """Keep the tuples where ``predicate(key, value)`` is true; then apply ``fn`` (as Transform) if given."""

    def __init__(self, predicate: Callable[[Any, Any], Any], fn: Callable[[Any, Any], Any] | None = None) -> None:
        _check_callable("FilteredTransform(predicate, ...): predicate", predicate)
        if fn is not None:
            _check_callable("FilteredTransform(predicate, fn): fn", fn)
        self.predicate = predicate
        self.fn = fn
        self._keyless = not reads_first_arg(predicate)

    def __repr__(self) -> str:
        return f"FilteredTransform({getattr(self.predicate, '__name__', self.predicate)!s})"

    def run(self, stage: int, batch: list[Tup], dead: list[DeadLetter],
            state: dict[Any, Any], changes: dict[Any, Any]) -> list[Tup]:
        pred = self.predicate
        kept: list[Tup] = []
        append = kept.append
        for t in batch:
            try:
                if pred(t[1], t[2]):
                    append(t)
            except Exception as exc:
                dead.append((t[0], stage, t[1], t[2], error_line(exc)))
        return self._project(stage, kept, dead)

    def run_lines(self, stage: int, src: str, chunk: Lines, dead: list[DeadLetter]) -> list[Tup]:
        """The source's hot path: the predicate runs over the lines from C (``map``), with no key when
        it never reads its key (:func:`reads_first_arg`), and ids are built for the kept lines only.
        If the predicate raises on any line, the batch is run tuple by tuple for its dead letters."""
        pred, lines = self.predicate, chunk.lines
        try:
            keys: Any = repeat(None, len(lines)) if self._keyless else chunk.ids(src)
            keep = list(compress(range(len(lines)), map(pred, keys, lines)))
        except Exception:
            return self.run(stage, chunk.tuples(src), dead, {}, {})
        ids = [f"{src}:{o}" for o in chunk.offsets_of(keep)]
        return self._project(stage, [(tid, tid, lines[i]) for i, tid in zip(keep, ids, strict=True)], dead)

    def _project(self, stage: int, kept: list[Tup], dead: list[DeadLetter]) -> list[Tup]:
        """The kept tuples with their derived ids, through ``fn`` if there is one."""
        suffix = f"/{stage}.0"
        fn = self.fn
        if fn is None:  # the hot path of a grep-like job: one tuple per kept line
            return [(tid + suffix, k, v) for tid, k, v in kept]
        out: list[Tup] = []
        append = out.append
        for tid, k, v in kept:
            try:
                r = fn(k, v)
                if type(r) is tuple and len(r) == 2:
                    append((tid + suffix, r[0], r[1]))
                else:
                    for i, (k2, v2) in enumerate(_pairs(r)):
                        append((f"{tid}/{stage}.{i}", k2, v2))
            except Exception as exc:
                dead.append((tid, stage, k, v, error_line(exc)))
        return out


COUNT, SUM, CUSTOM = 0, 1, 2
_packb = msgpack.Packer(autoreset=True).pack


def _unpack(b: bytes) -> Any:
    return msgpack.unpackb(b, raw=False, strict_map_key=False)


class AggregateByKey(Operator):
    """Group by ``key_fn(key, value)``; keep a running aggregate per group; emit ``(group, aggregate)``
    each time a group's aggregate changes (a group's first tuple always emits).

    ``agg``: ``"count"``, ``"sum"`` (of numeric values) or ``fn(acc, key, value) -> acc`` starting at
    ``initial``. A custom accumulator is kept msgpack-encoded and decoded afresh for every call, so
    ``fn`` may mutate ``acc`` in place, and it sees the same types before and after a failure.
    ``key_fn`` and ``fn`` must be deterministic (``key_fn`` also routes tuples to partitions).
    """

    stateful = True

    def __init__(self, key_fn: Callable[[Any, Any], Any], agg: str | Callable[[Any, Any, Any], Any],
                 initial: Any = None) -> None:
        _check_callable("AggregateByKey(key_fn, ...): key_fn", key_fn)
        self.key_fn = key_fn
        self.agg = agg
        self.initial = initial
        self.fn: Callable[[Any, Any, Any], Any] | None = None
        if agg == "count" or agg == "sum":
            self.kind = COUNT if agg == "count" else SUM
            start = 0 if initial is None else initial
            if type(start) not in (int, float):
                raise TypeError(f"AggregateByKey(..., {agg!r}, initial): initial must be a number")
            self.start: Any = start
        elif callable(agg):
            self.kind = CUSTOM
            self.fn = agg
            try:
                self.start = _packb(initial)
            except Exception as exc:
                raise TypeError(f"AggregateByKey(..., fn, initial): initial must be msgpack-able ({exc})") from None
        else:
            raise ValueError("AggregateByKey(key_fn, agg): agg must be 'count', 'sum' or a function (acc, key, value)")

    def __repr__(self) -> str:
        return f"AggregateByKey({getattr(self.key_fn, '__name__', self.key_fn)!s}, {self.agg!r})"

    def route_key(self, key: Any, value: Any) -> Any:
        return self.key_fn(key, value)

    def run(self, stage: int, batch: list[Tup], dead: list[DeadLetter],
            state: dict[Any, Any], changes: dict[Any, Any]) -> list[Tup]:
        """``state``: group -> aggregate (custom: its msgpack bytes). ``changes``: the groups this batch
        changed, with their new value: what the commit record logs."""
        key_fn, kind, start, fn = self.key_fn, self.kind, self.start, self.fn
        out: list[Tup] = []
        append = out.append
        suffix = f"/{stage}.0"
        for tid, k, v in batch:
            try:
                g = key_fn(k, v)
                tg = type(g)
                if tg is list:
                    g = freeze(g)
                elif tg is not str and tg is not int:
                    _packb(g)  # a group must be storable in the log (and hashable: the dict checks that)
                if kind == COUNT:
                    new = state.get(g, start) + 1
                    state[g] = changes[g] = new
                    append((tid + suffix, g, new))
                elif kind == SUM:
                    tv = type(v)
                    if tv is not int and tv is not float:
                        raise TypeError(f"sum needs a number (int or float) value, got {tv.__name__}")
                    old = state.get(g)
                    new = (start if old is None else old) + v
                    if type(new) is int and not -(1 << 63) <= new < (1 << 64):
                        raise OverflowError("sum does not fit in 64 bits")
                    if old is None or new != old:
                        state[g] = changes[g] = new
                        append((tid + suffix, g, new))
                else:
                    assert fn is not None
                    prev = state.get(g)
                    acc = fn(_unpack(start if prev is None else prev), k, v)
                    packed = _packb(acc)
                    if prev is None or packed != prev:
                        state[g] = changes[g] = packed
                        append((tid + suffix, g, acc))
            except Exception as exc:
                dead.append((tid, stage, k, v, error_line(exc)))
        return out

    def value_of(self, stored: Any) -> Any:
        """A state entry as the user sees it (custom aggregates are stored encoded)."""
        return _unpack(stored) if self.kind == CUSTOM else stored


OPERATOR_TYPES = (Transform, FilteredTransform, AggregateByKey)

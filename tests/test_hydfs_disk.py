"""The disk storage keeps the Storage contract the in-memory one sets, across restarts and torn tails."""

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hydfs.disk import DiskStorage
from hydfs.entries import Entry
from hydfs.storage import FileMeta, MemoryStorage


def _e(i: int, term: int = 1, data: bytes = b"x", fence: str | None = None) -> Entry:
    return Entry(term, i, "c1", i, data, fence, 3 if fence else None)


def test_roundtrip_and_restart(tmp_path: Path) -> None:
    s = DiskStorage(tmp_path)
    s.append("a/b.log", [_e(1), _e(2, data=b"yy", fence="job:t0")])
    s.put_meta("a/b.log", FileMeta(term=2, leader="node-1", created=1, isr=("node-1", "node-2")))
    s.append("a/b.log", [_e(3, term=2)])
    s.close()
    s = DiskStorage(tmp_path)
    assert s.names() == ["a/b.log"]
    assert s.last("a/b.log") == (3, 2)
    assert s.runs("a/b.log") == [(1, 1), (3, 2)]
    assert s.read("a/b.log", 2, 3) == [_e(2, data=b"yy", fence="job:t0")]
    meta = s.meta("a/b.log")
    assert meta is not None and meta.leader == "node-1" and meta.isr == ("node-1", "node-2")
    assert s.data_size("a/b.log") == 4


def test_gap_is_refused(tmp_path: Path) -> None:
    s = DiskStorage(tmp_path)
    s.append("f", [_e(1)])
    with pytest.raises(ValueError, match="gap"):
        s.append("f", [_e(3)])


def test_torn_tail_is_cut_on_restart(tmp_path: Path) -> None:
    s = DiskStorage(tmp_path)
    s.append("f", [_e(1), _e(2, data=b"z" * 1000)])
    s.close()
    log = next(tmp_path.glob("*.log"))
    with open(log, "r+b") as f:
        f.truncate(log.stat().st_size - 10)
    s = DiskStorage(tmp_path)
    assert s.last("f") == (1, 1) and s.recovered_bytes > 0
    s.append("f", [_e(2)])  # appends continue cleanly after the cut
    assert len(s.read("f", 1, 10)) == 2


ops = st.lists(st.one_of(
    st.tuples(st.just("append"), st.sampled_from(["f", "g"]), st.integers(1, 3), st.integers(1, 4)),
    st.tuples(st.just("truncate"), st.sampled_from(["f", "g"]), st.integers(0, 6), st.just(0)),
    st.tuples(st.just("drop"), st.sampled_from(["f", "g"]), st.just(0), st.just(0)),
    st.tuples(st.just("restart"), st.just(""), st.just(0), st.just(0)),
), max_size=25)


@settings(max_examples=40, deadline=None)
@given(ops)
def test_same_as_memory_storage(tmp_path_factory, program) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("d")
    disk, mem = DiskStorage(root, fsync=False), MemoryStorage()
    term = 1
    for op, name, a, b in program:
        if op == "append":
            term = max(term, b)
            n = mem.last(name)[0]
            batch = [_e(n + 1 + k, term, bytes([k]) * k) for k in range(a)]
            disk.append(name, batch)
            mem.append(name, batch)
        elif op == "truncate":
            disk.truncate(name, a)
            mem.truncate(name, a)
        elif op == "drop":
            disk.drop(name)
            mem.drop(name)
        else:
            disk.close()
            disk = DiskStorage(root, fsync=False)
        for nm in ("f", "g"):
            assert disk.last(nm) == mem.last(nm)
            assert disk.runs(nm) == mem.runs(nm)
            assert disk.read(nm, 1, 100) == mem.entries(nm)


def test_read_stops_at_max_bytes_without_reading_more(tmp_path: Path) -> None:
    disk, mem = DiskStorage(tmp_path, fsync=False), MemoryStorage()
    batch = [_e(i, data=bytes(100 * i)) for i in range(1, 6)]   # 100, 200, ... 500 bytes
    disk.append("f", batch)
    mem.append("f", batch)
    for limit, want in [(None, 5), (0, 1), (99, 1), (300, 2), (600, 3), (10_000, 5)]:
        assert [e.index for e in disk.read("f", 1, 9, limit)] == list(range(1, want + 1))
        assert disk.read("f", 1, 9, limit) == mem.read("f", 1, 9, limit)

"""Raft's durable state: one fsync per Ready, torn tails dropped, corruption refused, snapshots rewrite the log,
and DiskStorage and MemoryStorage agree on every sequence of saves."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raft.core import Ready, Restored
from raft.messages import Entry, HardState, Snapshot
from raft.storage import HEADER, CorruptLog, DiskStorage, MemoryStorage


def entries(lo: int, hi: int, term: int = 1, tag: str = "") -> list[Entry]:
    return [Entry(i, term, f"{tag}{i}".encode() * 3) for i in range(lo, hi + 1)]


def fresh(path: Path) -> DiskStorage:
    s = DiskStorage(path)
    s.load()
    return s


def reload(path: Path) -> Restored:
    s = DiskStorage(path)
    try:
        return s.load()
    finally:
        s.close()


@pytest.fixture(params=["disk", "memory"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> DiskStorage | MemoryStorage:
    return fresh(tmp_path / "raft") if request.param == "disk" else MemoryStorage()


def test_round_trip_truncate_and_hard_state(storage: DiskStorage | MemoryStorage) -> None:
    storage.save(Ready(HardState(1, "n0", 0), entries(1, 10)))
    storage.save(Ready(HardState(2, None, 3), entries(6, 8, term=2)))  # a conflicting suffix from 6
    storage.save(Ready(HardState(2, None, 7), entries(9, 9, term=2)))  # commit alone: not rewritten
    r = storage.load()
    assert r.hard_state == HardState(2, None, 3)
    assert r.entries == entries(1, 5) + entries(6, 9, term=2)
    assert r.snapshot is None


def test_compaction_and_install(storage: DiskStorage | MemoryStorage) -> None:
    storage.save(Ready(HardState(1, "n0", 0), entries(1, 20)))
    storage.compact(Snapshot(10, 1, b"state10"))
    r = storage.load()
    assert r.snapshot == Snapshot(10, 1, b"state10") and r.entries == entries(11, 20)
    storage.save(Ready(entries=entries(15, 16, term=2)))  # truncation still finds its offsets
    assert storage.load().entries == entries(11, 14) + entries(15, 16, term=2)
    storage.save(Ready(snapshot=Snapshot(30, 3, b"state30"), entries=entries(31, 32, term=3)))  # installed
    r = storage.load()
    assert r.snapshot == Snapshot(30, 3, b"state30") and r.entries == entries(31, 32, term=3)


def test_one_fsync_per_ready(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = fresh(tmp_path)
    calls: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    s.save(Ready(entries=entries(1, 100)))
    assert len(calls) == 1
    s.save(Ready(HardState(0, None, 50), entries(101, 110)))  # commit only: still one
    assert len(calls) == 2
    s.save(Ready(HardState(1, "n1", 50)))  # a vote: the file and its directory
    assert len(calls) == 4
    s.save(Ready(entries=entries(105, 106, term=2)))  # a truncation is made durable before the append
    assert len(calls) == 6
    s.save(Ready(messages=[], committed=entries(1, 3)))  # nothing to persist: no fsync
    assert len(calls) == 6
    s.close()


def _records(path: Path) -> list[int]:
    """Offsets of the log file's records."""
    buf = path.read_bytes()
    out, pos = [], 0
    while pos < len(buf):
        out.append(pos)
        pos += HEADER.size + HEADER.unpack_from(buf, pos)[0]
    return out


@pytest.mark.parametrize("tail", ["half", "header", "zeros", "badcrc"])
def test_torn_tail_is_dropped(tmp_path: Path, tail: str) -> None:
    s = fresh(tmp_path)
    s.save(Ready(HardState(1, "n0", 0), entries(1, 5)))
    s.save(Ready(entries=entries(6, 6)))
    s.close()
    log = tmp_path / "log"
    last = _records(log)[-1]
    data = bytearray(log.read_bytes())
    if tail == "half":        # the last record cut mid-body
        data = data[:len(data) - 3]
    elif tail == "header":    # cut inside the next record's header
        data += HEADER.pack(40, 0)[:5]
    elif tail == "zeros":     # the file grew before its data reached the disk
        data = data[:last] + bytes(len(data) - last + 4096)
    else:                     # the last record's bytes are garbage
        data[-2] ^= 0xFF
    log.write_bytes(bytes(data))
    r = reload(tmp_path)
    want = entries(1, 6) if tail == "header" else entries(1, 5)
    assert r.entries == want and r.hard_state == HardState(1, "n0", 0)
    assert len(_records(log)) == len(want)  # the file was cut back to its good records
    s = fresh(tmp_path)  # the torn bytes are gone: appending goes on after the good ones
    s.save(Ready(entries=entries(len(want) + 1, 8, term=2)))
    s.close()
    assert reload(tmp_path).entries == want + entries(len(want) + 1, 8, term=2)


def test_corruption_before_good_records_is_refused(tmp_path: Path) -> None:
    s = fresh(tmp_path)
    s.save(Ready(entries=entries(1, 10)))
    s.close()
    log = tmp_path / "log"
    data = bytearray(log.read_bytes())
    data[_records(log)[3] + HEADER.size + 2] ^= 0x01  # a bit flips in entry 4
    log.write_bytes(bytes(data))
    with pytest.raises(CorruptLog):
        reload(tmp_path)


def test_bad_hard_state_is_refused(tmp_path: Path) -> None:
    s = fresh(tmp_path)
    s.save(Ready(HardState(3, "n1", 0)))
    s.close()
    (tmp_path / "hardstate").write_bytes((tmp_path / "hardstate").read_bytes()[:-1])
    with pytest.raises(CorruptLog):
        reload(tmp_path)


def test_crash_between_truncate_and_append(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = fresh(tmp_path)
    s.save(Ready(HardState(1, "n0", 0), entries(1, 10)))

    def crash(*args: object) -> int:
        raise OSError("power cut")

    monkeypatch.setattr(os, "pwrite", crash)
    with pytest.raises(OSError):
        s.save(Ready(HardState(2, "n1", 0), entries(6, 12, term=2)))
    monkeypatch.undo()
    s.close()
    r = reload(tmp_path)  # the conflicting suffix is gone, nothing new arrived, the vote is the old one
    assert r.entries == entries(1, 5) and r.hard_state == HardState(1, "n0", 0)
    s = fresh(tmp_path)
    s.save(Ready(HardState(2, "n1", 0), entries(6, 12, term=2)))
    s.close()
    assert reload(tmp_path).entries == entries(1, 5) + entries(6, 12, term=2)


def test_snapshot_rewrites_the_log_file(tmp_path: Path) -> None:
    s = fresh(tmp_path)
    s.save(Ready(HardState(1, "n0", 0), entries(1, 100)))
    size = (tmp_path / "log").stat().st_size
    s.compact(Snapshot(90, 1, b"s" * 1000))
    assert (tmp_path / "log").stat().st_size < size / 5
    s.save(Ready(entries=entries(101, 101)))
    s.close()
    r = reload(tmp_path)
    assert r.snapshot == Snapshot(90, 1, b"s" * 1000) and r.entries == entries(91, 101)
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("same_term", [True, False])
def test_crash_after_snapshot_before_log_rewrite(tmp_path: Path, same_term: bool) -> None:
    """The snapshot file is replaced first: a compaction keeps the entries after it, an install drops them all."""
    s = fresh(tmp_path)
    s.save(Ready(HardState(1, "n0", 0), entries(1, 20)))
    s._write_atomic("snapshot", [10, 1 if same_term else 2, b"state"])  # then the process dies
    s.close()
    r = reload(tmp_path)
    assert r.entries == (entries(11, 20) if same_term else [])
    assert reload(tmp_path).entries == r.entries  # and the file was rewritten to match
    assert _records(tmp_path / "log") == _records(tmp_path / "log")[:len(r.entries)]


# -- DiskStorage behaves as MemoryStorage, whatever the sequence ------------------------------------------
@st.composite
def ready_sequences(draw: st.DrawFn) -> list[tuple[str, Ready | Snapshot]]:
    ops: list[tuple[str, Ready | Snapshot]] = []
    first, last, term, snap = 1, 0, 1, 0
    terms: dict[int, int] = {}
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["append", "append", "append", "vote", "compact", "install"]))
        if kind == "append":
            lo = draw(st.integers(max(first, snap + 1), last + 1))
            hi = lo + draw(st.integers(0, 6))
            term += draw(st.integers(0, 1))
            ops.append(("save", Ready(entries=entries(lo, hi, term, tag=str(term)))))
            terms.update(dict.fromkeys(range(lo, hi + 1), term))
            last = hi
        elif kind == "vote":
            term += 1
            ops.append(("save", Ready(HardState(term, draw(st.sampled_from([None, "n0", "n1"])), 0))))
        elif kind == "compact" and last > snap:
            snap = draw(st.integers(snap + 1, last))
            ops.append(("compact", Snapshot(snap, terms[snap], b"c%d" % snap)))
        elif kind == "install":
            term += 1
            snap = last = last + draw(st.integers(1, 5))
            ops.append(("save", Ready(snapshot=Snapshot(snap, term, b"i%d" % snap))))
        first = snap + 1
    return ops


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ready_sequences())
def test_disk_matches_memory(tmp_path: Path, ops: list[tuple[str, Ready | Snapshot]]) -> None:
    d = tmp_path / f"p{len(list(tmp_path.iterdir()))}"
    disk, mem = fresh(d), MemoryStorage()
    for kind, arg in ops:
        for s in (disk, mem):
            if kind == "save":
                assert isinstance(arg, Ready)
                s.save(arg)
            else:
                assert isinstance(arg, Snapshot)
                s.compact(arg)
    disk.close()
    assert reload(d) == mem.load()

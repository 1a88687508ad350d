"""The disk storage keeps the Storage contract the in-memory one sets, across restarts and torn tails."""

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hydfs.disk import DiskStorage, StorageError
from hydfs.entries import Entry, TrimMark
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
    st.tuples(st.just("trim"), st.sampled_from(["f", "g"]), st.integers(0, 4), st.just(0)),
    st.tuples(st.just("install"), st.sampled_from(["f", "g"]), st.integers(1, 3), st.just(0)),
    st.tuples(st.just("restart"), st.just(""), st.just(0), st.just(0)),
    st.tuples(st.just("crash"), st.just(""), st.just(0), st.just(0)),
), max_size=25)


def _crash(disk: DiskStorage) -> None:
    """A process crash: fds go away, nothing still in memory reaches the disk."""
    for name in disk.names():
        disk._files[name].log.close()
    disk.journal.close()


@settings(max_examples=80, deadline=None)
@given(ops)
def test_same_as_memory_storage(tmp_path_factory, program) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("d")
    disk, mem = DiskStorage(root, fsync_data=False), MemoryStorage()
    term = 1
    for op, name, a, b in program:
        if op == "append":
            term = max(term, b)
            n = mem.last(name)[0]
            batch = [_e(n + 1 + k, term, bytes([k]) * k) for k in range(a)]
            if b == 4:  # a trim marker among them
                batch[0] = Entry(term, n + 1, "c1", n + 1, b"", trim=TrimMark(max(1, n), {"c1": n}, {"k": 2}))
            disk.append(name, batch)
            mem.append(name, batch)
        elif op == "trim":
            below = min(mem.first(name) + a, mem.last(name)[0] + 1)
            disk.trim(name, below)
            mem.trim(name, below)
        elif op == "install":
            disk.install(name, mem.last(name)[0] + a, mem.runs(name))
            mem.install(name, mem.last(name)[0] + a, mem.runs(name))
        elif op == "truncate":
            disk.truncate(name, a)
            mem.truncate(name, a)
        elif op == "drop":
            disk.drop(name)
            mem.drop(name)
        elif op == "crash":
            disk.sync()  # what a node does before it sends: everything up to here must survive
            _crash(disk)
            disk = DiskStorage(root, fsync_data=False)
        else:
            disk.close()
            disk = DiskStorage(root, fsync_data=False)
        for nm in ("f", "g"):
            assert disk.last(nm) == mem.last(nm)
            assert disk.runs(nm) == mem.runs(nm)
            assert disk.read(nm, 1, 100) == mem.entries(nm)
            assert disk.first(nm) == mem.first(nm) and disk.marks(nm) == mem.marks(nm)
            assert disk.read_bytes(nm, 0, 1000) == mem.read_bytes(nm, 0, 1000)
            assert disk.data_end(nm, 100) == mem.data_end(nm, 100)


def test_read_stops_at_max_bytes_without_reading_more(tmp_path: Path) -> None:
    disk, mem = DiskStorage(tmp_path, fsync_data=False), MemoryStorage()
    batch = [_e(i, data=bytes(100 * i)) for i in range(1, 6)]   # 100, 200, ... 500 bytes
    disk.append("f", batch)
    mem.append("f", batch)
    for limit, want in [(None, 5), (0, 1), (99, 1), (300, 2), (600, 3), (10_000, 5)]:
        assert [e.index for e in disk.read("f", 1, 9, limit)] == list(range(1, want + 1))
        assert disk.read("f", 1, 9, limit) == mem.read("f", 1, 9, limit)


def test_crash_keeps_what_was_synced_and_no_orphan(tmp_path: Path) -> None:
    s = DiskStorage(tmp_path, fsync_data=False)
    s.append("old", [_e(1)])
    s.put_meta("old", FileMeta(term=1, leader="node-1", created=1))
    s.sync()
    s.append("old", [_e(2)])                      # written to the OS: survives a process crash
    s.put_meta("old", FileMeta(term=5, leader="node-9", created=1))  # still in memory: lost
    s.append("new", [_e(1)])                      # its name never reached the journal
    _crash(s)
    s = DiskStorage(tmp_path, fsync_data=False)
    assert s.names() == ["old"]
    assert s.last("old") == (2, 1)
    meta = s.meta("old")
    assert meta is not None and (meta.term, meta.leader) == (1, "node-1")
    assert len(list(tmp_path.glob("*.log"))) == 1  # the orphan log of "new" is gone


def test_one_sync_commits_a_batch_of_many_files(tmp_path: Path) -> None:
    s = DiskStorage(tmp_path, fsync_data=True)
    for i in range(1000):
        s.append(f"f{i}", [_e(1)])
        s.put_meta(f"f{i}", FileMeta(term=1, leader="node-1", created=1, isr=("node-1",)))
    before = s.syncs
    s.sync()
    assert s.syncs - before == 2 + 1000   # the journal, the directory (new logs), one fdatasync per log
    for i in range(1000):
        s.put_meta(f"f{i}", FileMeta(term=2, leader="node-2", created=1, isr=("node-2",)))
    before = s.syncs
    s.sync()
    assert s.syncs - before == 1          # metadata of 1000 files: one fsync
    s.close()
    s = DiskStorage(tmp_path)
    meta = s.meta("f999")
    assert meta is not None and meta.leader == "node-2" and len(s.names()) == 1000


def test_journal_is_compacted(tmp_path: Path) -> None:
    s = DiskStorage(tmp_path)
    for k in range(3000):
        s.put_meta("f", FileMeta(term=k, leader="node-1"))
        s.sync()
    assert len(s.journal.blocks) <= 1025
    s.close()
    s = DiskStorage(tmp_path)
    meta = s.meta("f")
    assert meta is not None and meta.term == 2999


def test_older_format_is_refused(tmp_path: Path) -> None:
    (tmp_path / "abc.meta").write_text("{}")
    with pytest.raises(StorageError, match="older on-disk format"):
        DiskStorage(tmp_path)


def test_tail_cache_answers_like_the_disk(tmp_path: Path) -> None:
    s = DiskStorage(tmp_path, tail_bytes=250)
    s.append("f", [_e(i, data=bytes([i]) * 100) for i in range(1, 6)])
    assert len(s._tail) == 2                      # only the newest that fit are kept
    s.truncate("f", 4)
    s.append("f", [_e(5, term=2, data=b"new")])
    warm = s.read("f", 1, 9)
    s.close()
    cold = DiskStorage(tmp_path, tail_bytes=0)
    assert warm == cold.read("f", 1, 9) == [*(_e(i, data=bytes([i]) * 100) for i in range(1, 5)), _e(5, 2, b"new")]


def test_compaction_that_fails_after_its_rename_goes_on_in_the_new_journal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The directory's fsync after the rename fails: later records must land in the renamed-in journal,
    not in the unlinked old one, or a restart would lose them."""
    import hydfs.blockfile

    s = DiskStorage(tmp_path)
    real = hydfs.blockfile.fsync_dir

    def failing(path: Path) -> None:
        raise OSError(5, "Input/output error")

    for term in range(1, 1100):  # one compaction, at the 1025th record
        s.put_meta("f", FileMeta(term=term, leader="node-1", created=1))
        s.sync()
        if term == 1:  # the first sync fsyncs the new directory entry; from here on only a compaction does
            monkeypatch.setattr(hydfs.blockfile, "fsync_dir", failing)
    monkeypatch.setattr(hydfs.blockfile, "fsync_dir", real)
    assert len(s.journal.blocks) < 100  # the compaction happened, and records went on in the new journal
    s.close()
    meta = DiskStorage(tmp_path).meta("f")
    assert meta is not None and meta.term == 1099


def _fds() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


def test_a_tombstone_holds_no_descriptor_and_opens_again_when_written(tmp_path: Path) -> None:
    """A removed file keeps its name and meta (its tombstone beats an old copy) but not an open log:
    every file a job ever removed (a task's old snapshot files) held a descriptor on every replica."""
    s = DiskStorage(tmp_path)
    names = [f"snap.{i}" for i in range(20)]
    for n in names:
        s.append(n, [_e(1), _e(2)])
        s.put_meta(n, FileMeta(term=1, leader="node-1", created=1))
    s.sync()
    s.flush_data()
    before = _fds()
    assert s.open_files() == 20
    for n in names:                      # what a primary's rm does: an empty log, then the tombstone
        s.truncate(n, 0)
        s.put_meta(n, FileMeta(term=1, leader="node-1", created=None, deleted=(1, 2)))
    assert s.open_files() == 0 and _fds() == before - 20
    s.append(names[0], [_e(1, term=2)])     # created again under the same name
    assert s.read(names[0], 1, 2) == [_e(1, term=2)] and s.open_files() == 1
    s.close()
    s = DiskStorage(tmp_path)               # a restart opens no tombstone either
    assert s.open_files() == 1 and s.names() == sorted(names)
    meta = s.meta(names[5])
    assert meta is not None and meta.deleted == (1, 2) and s.last(names[5]) == (0, 0)
    s.close()


def test_entry_metas_are_read_back_from_disk_not_kept(tmp_path: Path) -> None:
    """The index keeps offsets only (24 bytes an entry, bench/hydfs_index.py): each entry's meta comes
    back from its block header, before and after a restart and a trim."""
    s = DiskStorage(tmp_path, tail_bytes=0)
    want = [Entry(1 + i // 50, i, f"c{i % 3}", i, b"d%d" % i, "job:t0" if i % 2 else None,
                  i if i % 2 else None) for i in range(1, 201)]
    for k in range(0, 200, 20):
        s.append("f", want[k:k + 20])
    s.sync()
    blocks = s._files["f"].log.blocks
    assert len(blocks) == 200 and not blocks._metas
    assert s.read("f", 1, 201) == want and s.last("f") == (200, 5)
    s.trim("f", 101)
    assert s.read("f", 1, 201) == want[100:] and s.last("f") == (200, 5)
    assert list(s._files["f"].log.blocks._metas) == [0]        # the base block's, which names the first
    s.close()
    s = DiskStorage(tmp_path, tail_bytes=0)
    assert s.read("f", 150, 160) == want[149:159] and s.last("f") == (200, 5)
    assert s.runs("f") == [(1, 1), (50, 2), (100, 3), (150, 4), (200, 5)]
    assert len(s._files["f"].log.blocks._metas) == 1
    s.close()

"""The disk storage on a file system that fills up: metadata still persists (the journal's reserve),
data writes fail cleanly, and a compaction the full disk refuses loses nothing.

A 4 MiB tmpfs is mounted for each test (it needs the privilege to mount; without it the tests are
skipped and say so)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hydfs.disk import JOURNAL, DiskStorage
from hydfs.entries import Entry
from hydfs.storage import FileMeta
from tests.conftest import fill, small_tmpfs


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "disk", "4m") as mnt:
        yield mnt


def _e(i: int, data: bytes = b"x") -> Entry:
    return Entry(1, i, "c1", i, data, None, None)


def _promise(s: DiskStorage, name: str, term: int) -> None:
    s.put_meta(name, FileMeta(term=term, leader="node-2", created=1, ver=(term, 1), isr=("node-2", "node-3")))


def test_metadata_persists_on_a_full_disk_and_data_fails_cleanly(tiny_disk: Path) -> None:
    root = tiny_disk / "hydfs"
    s = DiskStorage(root)
    s.append("f", [_e(1)])
    _promise(s, "f", 1)
    s.sync()
    fill(tiny_disk)
    for term in range(2, 200):  # promises and set changes: ~200 journal records
        _promise(s, "f", term)
        s.sync()
    _promise(s, "g", 5)         # a create placed here: its promise is one more record...
    s.sync()
    for name, size in (("f", 65536), ("g", 1)):  # ...but no data fits, not a byte of a new file
        with pytest.raises(OSError) as info:
            s.append(name, [_e(s.last(name)[0] + 1, b"d" * size)])
        assert info.value.errno == errno.ENOSPC
    assert s.last("f") == (1, 1) and s.last("g") == (0, 0)
    s.close()
    s = DiskStorage(root)
    meta = s.meta("f")
    assert meta is not None and meta.term == 199
    assert s.meta("g") is not None and s.last("f") == (1, 1) and s.recovered_bytes == 0


def test_without_the_reserve_the_same_promise_fails(tiny_disk: Path) -> None:
    """The control: the reserve is what lets the metadata through."""
    s = DiskStorage(tiny_disk / "hydfs", journal_reserve=0)
    _promise(s, "f", 1)
    s.sync()
    fill(tiny_disk)
    with pytest.raises(OSError):
        for term in range(2, 200):
            _promise(s, "f", term)
            s.sync()


def test_a_compaction_the_full_disk_refuses_loses_nothing(tiny_disk: Path) -> None:
    root = tiny_disk / "hydfs"
    s = DiskStorage(root, journal_reserve=1 << 20)
    for k in range(40):  # 40 files with 300-byte names: a compacted journal needs ~20 KB more space
        _promise(s, f"{k:03d}" + "n" * 297, 1)
    s.sync()
    filler = fill(tiny_disk)
    for term in range(2, 32):  # 40 records a sync: past the compaction threshold of 1024 records
        for k in range(40):
            _promise(s, f"{k:03d}" + "n" * 297, term)
        s.sync()
    assert s.compact_failures >= 1
    assert not list(root.glob("*.tmp"))  # the half-written copy gave its space back
    s.close()
    os.unlink(filler)
    s = DiskStorage(root)
    assert len(s.names()) == 40
    assert all((m := s.meta(n)) is not None and m.term == 31 for n in s.names())
    assert (root / JOURNAL).exists()

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from hydfs.blockfile import HEADER, BlockFile, write_atomic


def test_append_reopen_read(tmp_path: Path) -> None:
    p = tmp_path / "f"
    bf = BlockFile(p)
    bf.append({"i": 1, "c": "a"}, b"hello ")
    bf.append_many([({"i": 2}, b"world"), ({"i": 3}, b"")])
    bf.close()
    bf = BlockFile(p)
    assert [b.meta["i"] for b in bf.blocks] == [1, 2, 3]
    assert b"".join(bf.read(i) for i in range(len(bf.blocks))) == b"hello world"
    assert bf.read(0, 2, 3) == b"llo"
    assert bf.read(1, 3) == b"ld" and bf.read(1, 4, 9) == b"d" and bf.read(2) == b""


def test_truncate_cuts_suffix(tmp_path: Path) -> None:
    bf = BlockFile(tmp_path / "f")
    for i in range(5):
        bf.append({"i": i}, bytes([i]) * 10)
    bf.truncate(2)
    bf.append({"i": 9}, b"z")
    bf.close()
    bf = BlockFile(tmp_path / "f")
    assert [b.meta["i"] for b in bf.blocks] == [0, 1, 9]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=50), min_size=1, max_size=6), st.integers(min_value=1))
def test_torn_tail_is_cut(tmp_path_factory, datas: list[bytes], cut: int) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path_factory.mktemp("t") / "f"
    bf = BlockFile(p)
    for i, d in enumerate(datas):
        bf.append({"i": i}, d)
    ends = [b.end for b in bf.blocks]
    bf.close()
    size = p.stat().st_size
    keep = size - (cut % (size + 1))  # anywhere, inside a header or a body included
    with open(p, "r+b") as f:
        f.truncate(keep)
    bf = BlockFile(p)
    whole = [i for i, e in enumerate(ends) if e <= keep]
    assert [b.meta["i"] for b in bf.blocks] == whole
    assert p.stat().st_size == (ends[whole[-1]] if whole else 0)


def test_corrupt_byte_cuts_from_there(tmp_path: Path) -> None:
    p = tmp_path / "f"
    bf = BlockFile(p)
    for i in range(3):
        bf.append({"i": i}, b"x" * 100)
    second = bf.blocks[1]
    bf.close()
    with open(p, "r+b") as f:
        f.seek(second.data_offset + 50)
        f.write(b"y")
    bf = BlockFile(p)
    assert [b.meta["i"] for b in bf.blocks] == [0]
    assert bf.cut_bytes > 0


def test_write_atomic(tmp_path: Path) -> None:
    p = tmp_path / "f"
    write_atomic(p, [({"i": 0}, b"abc"), ({"i": 1}, b"def")])
    assert not (tmp_path / "f.tmp").exists()
    back = BlockFile(p)
    assert b"".join(back.read(i) for i in range(len(back.blocks))) == b"abcdef"
    assert HEADER.size == 20

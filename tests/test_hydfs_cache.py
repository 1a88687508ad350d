import pytest
from hypothesis import given
from hypothesis import strategies as st

from hydfs.cache import FileCache, parse_size


def test_lru_by_bytes() -> None:
    c = FileCache(10)
    c.put("a", 1, b"aaaa")
    c.put("b", 1, b"bbbb")
    assert c.get("a") == (1, b"aaaa")  # a is now most recent
    c.put("c", 1, b"cccc")             # evicts b, the least recently used
    assert c.get("b") is None
    assert c.get("a") is not None and c.get("c") is not None
    assert c.used == 8
    assert c.stats()["hits"] == 3 and c.stats()["misses"] == 1


def test_never_older_than_own_append() -> None:
    c = FileCache(100)
    c.put("f", 3, b"v3")
    c.appended("f", 4)
    assert c.get("f") is None          # cached copy predates our own append
    c.put("f", 4, b"v4")
    assert c.get("f") == (4, b"v4")
    c.put("f", 2, b"v2")               # a stale read never replaces a newer copy
    assert c.get("f") == (4, b"v4")


def test_too_big_is_not_cached() -> None:
    c = FileCache(3)
    c.put("f", 1, b"abcd")
    assert c.get("f") is None and c.used == 0


@pytest.mark.parametrize("spec,data,expected", [
    ("1024", None, 1024), ("4KB", None, 4000), ("1MiB", None, 2**20), ("10%", 5000, 500), ("0%", 10, 0),
])
def test_parse_size(spec: str, data: int | None, expected: int) -> None:
    assert parse_size(spec, data) == expected


@pytest.mark.parametrize("spec", ["ten", "10%%", "-5", "150%"])
def test_parse_size_rejects(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_size(spec, 100)


@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.binary(max_size=12)), max_size=60))
def test_used_bytes_stay_within_capacity(ops: list[tuple[str, bytes]]) -> None:
    c = FileCache(30)
    for v, (name, data) in enumerate(ops, 1):
        c.put(name, v, data)
        assert c.used <= 30
        assert c.used == sum(len(e.data) for e in c._entries.values())

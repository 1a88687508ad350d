"""Source striping: every line of a file is read exactly once, by the task owning the block it starts
in, whatever the block size, the number of tasks, the read size and the window the reader holds."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from rainstorm.source_reader import RangeReader
from rainstorm.stream.source import Lines, Stripe, all_lines, read_lines, split_lines

LINE = st.one_of(st.text(alphabet="ab,5\r", max_size=30), st.text(max_size=8))
FILES = st.builds(lambda ls, nl: ("\n".join(ls) + ("\n" if nl else "")).encode("utf-8", "surrogatepass"),
                  st.lists(LINE, max_size=40), st.booleans())


def read_all(data: bytes, parts: int, block: int, max_bytes: int) -> list[tuple[int, str]]:
    got = []
    for p in range(parts):
        pos, stripe = 0, Stripe(p, parts, block)
        for _ in range(10_000):
            r = read_lines(data, stripe, pos, max_bytes, final=True)
            got.extend(zip(r.offsets(), r.lines, strict=True))
            assert r.next >= pos
            pos = r.next
            if r.eof:
                break
        else:
            raise AssertionError("no end of file")
    return sorted(got)


@settings(max_examples=300, deadline=None)
@given(FILES, st.integers(1, 4), st.integers(1, 40), st.integers(1, 60))
def test_every_line_once(data: bytes, parts: int, block: int, max_bytes: int) -> None:
    assert read_all(data, parts, block, max_bytes) == all_lines(data)


def test_lines_and_offsets() -> None:
    data = b"ab\r\ncd\n\nh\xc3\xa9\nlast"
    assert all_lines(data) == [(0, "ab"), (4, "cd"), (7, ""), (8, "hé"), (12, "last")]
    lines, sizes = split_lines(b"x\nyy\n", 10)
    assert lines == ["x", "yy"] and sizes is None
    assert Lines(lines, 10).offsets() == [10, 12]
    assert Lines(["a", "bb", "c", "dd"], 5).offsets_of([1, 3]) == [7, 12]
    lines, sizes = split_lines("a\r\nbé\nc\n".encode(), 0)
    assert Lines(lines, 0, sizes).offsets_of([1, 2]) == Lines(lines, 0, sizes).offsets()[1:]
    cut = Lines(["a", "bb", "c"], 5).cut(2)
    assert cut.lines == ["a", "bb"] and cut.offsets() == [5, 7] and cut.next == 10


def test_following_waits_for_the_newline() -> None:
    stripe = Stripe(0, 1, 1 << 20)
    r = read_lines(b"one\ntw", stripe, 0, 100, final=False)
    assert r.lines == ["one"] and r.next == 4 and not r.eof
    r = read_lines(b"one\ntw", stripe, 4, 100, final=False)
    assert r.lines == [] and r.next == 4 and not r.eof
    r = read_lines(b"one\ntwo\n", stripe, 4, 100, final=False)
    assert r.lines == ["two"] and r.next == 8


class Fetcher:
    def __init__(self, data: bytes, cap: int) -> None:
        self.data, self.cap, self.calls = data, cap, 0

    async def __call__(self, off: int, length: int) -> tuple[bytes, int]:
        self.calls += 1
        await asyncio.sleep(0)
        return self.data[off:off + min(length, self.cap)], len(self.data)


@settings(max_examples=150, deadline=None)
@given(FILES, st.integers(1, 3), st.integers(1, 30), st.integers(1, 50), st.integers(1, 25), st.integers(1, 25))
def test_range_reader_windows(data: bytes, parts: int, block: int, max_bytes: int, page: int, cap: int) -> None:
    async def run() -> list[tuple[int, str]]:
        got = []
        for p in range(parts):
            fetch = Fetcher(data, cap)
            reader = RangeReader(fetch, Stripe(p, parts, block), follow=False, page=page)
            pos = 0
            for _ in range(10_000):
                r = await reader.read(pos, max_bytes)
                got.extend(zip(r.offsets(), r.lines, strict=True))
                pos = r.next
                if r.eof:
                    break
            reader.close()
            longest = len(max(data.split(b"\n"), key=len))
            assert len(reader.buf) <= max(2 * (page + block + max_bytes), 4 * cap) + longest
        return sorted(got)

    assert asyncio.run(run()) == all_lines(data)


def test_reader_reads_only_its_stripe() -> None:
    data = b"".join(b"%07d\n" % i for i in range(20_000))   # 160 KB of 8-byte lines
    async def run(parts: int) -> int:
        fetch = Fetcher(data, 1 << 30)
        reader = RangeReader(fetch, Stripe(0, parts, 4096), follow=False, page=4096)
        pos, n = 0, 0
        while True:
            r = await reader.read(pos, 4096)
            n += len(r.lines)
            pos = r.next
            if r.eof:
                break
        reader.close()
        return reader.fetched
    assert asyncio.run(run(1)) >= len(data)
    assert asyncio.run(run(4)) < len(data) / 4 * 1.3   # its quarter, plus a page of read-ahead at most

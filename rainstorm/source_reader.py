"""A source task's reader: its stripe of a HyDFS file, fetched in byte ranges, a page ahead.

The task asks for lines from an offset (``ReadSource``); this reader keeps one window of the file's
bytes, fetches what :func:`rainstorm.stream.source.scan` says it needs, and starts fetching the next
page as soon as it hands lines back, so the task's processing overlaps the network. Memory is one
window (a page or two), whatever the file's size, and the event loop never splits more than a page.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from rainstorm.stream.source import Lines, Stripe, scan, split_lines

Fetch = Callable[[int, int], Awaitable[tuple[bytes, int]]]   # (offset, length) -> (bytes, file size)


class RangeReader:
    def __init__(self, fetch: Fetch, stripe: Stripe, follow: bool, page: int = 1 << 20,
                 refresh: float = 0.2) -> None:
        self.fetch = fetch
        self.stripe = stripe
        self.follow = follow
        self.page = page
        self.refresh = refresh          # following: how often to look again at the end of the file
        self.buf = b""
        self.off = 0
        self.size = -1                  # the file's size as last seen (-1: not asked yet)
        self._seen_at = -1e9
        self._ahead: asyncio.Task[tuple[int, bytes, int]] | None = None
        self.fetched = 0                # bytes fetched, for stats and tests

    async def read(self, pos: int, max_bytes: int) -> Lines:
        """Whole lines of this stripe from ``pos`` (about ``max_bytes``); empty if none yet."""
        if self.size < 0:
            await self._load(pos, 0)
        while True:
            s = scan(self.buf, self.off, pos, self.size, not self.follow, self.stripe, max_bytes)
            if s.need is None:
                if s.hi == s.lo and self.follow and not s.eof and time.monotonic() - self._seen_at >= self.refresh:
                    old = self.size
                    await self._load(s.next, 0)   # anything appended since?
                    if self.size != old:
                        continue
                lines, sizes = split_lines(self.buf[s.lo - self.off:s.hi - self.off], s.lo)
                self._prefetch()
                return Lines(lines, s.lo, sizes, s.next, s.eof)
            pos = max(pos, s.next)
            start = s.need_from if s.need_from is not None else self.off
            await self._load(start, max(s.need - start, self.page))

    async def _load(self, start: int, length: int) -> None:
        """Make the window hold ``[start, start + length)`` (as far as the file goes), keeping what
        it already holds of that range and using a prefetched page when it fits."""
        keep = b""
        if self.off <= start < self.off + len(self.buf):
            keep = self.buf[start - self.off:]
        have = start + len(keep)
        want = start + length
        data, size = b"", self.size
        if self._ahead is not None:
            ahead, self._ahead = self._ahead, None
            try:
                a_off, a_data, a_size = await ahead
            except Exception:   # a failed read-ahead costs nothing: the page is fetched again below
                a_off, a_data, a_size = -1, b"", size
            if a_off == have:
                data, size = a_data, a_size
                have += len(a_data)
        if have < want or length == 0:
            more, size = await self.fetch(have, max(want - have, 0))
            data += more
            self._seen_at = time.monotonic()
        self.buf, self.off, self.size = keep + data, start, max(size, self.size)
        self.fetched += len(data)

    def _prefetch(self) -> None:
        """Start fetching the page after the window while the task works on what it got."""
        end = self.off + len(self.buf)
        if self._ahead is not None or end >= self.size:
            return
        nxt = self.stripe.owned_from(end)
        if nxt >= self.size:
            return
        start = end if nxt == end else nxt - 1   # a block we own next: from the byte before it

        async def get() -> tuple[int, bytes, int]:
            data, size = await self.fetch(start, self.page)
            return start, data, size

        self._ahead = asyncio.ensure_future(get())

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.cancel()
            with contextlib.suppress(BaseException):
                self._ahead.exception()
            self._ahead = None

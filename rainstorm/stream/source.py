"""Which bytes of the source file a source task reads, and the lines in them (no I/O).

A source file is bytes; its lines end with ``\\n`` (a trailing ``\\r`` is dropped, so CRLF files read
as expected; a last line without ``\\n`` counts only once nothing more can be appended). The file is
cut into blocks of ``block`` bytes, and source task ``part`` of ``parts`` owns blocks
``part, part + parts, part + 2 * parts, ...``: a line belongs to the task owning the block its first
byte is in (Hadoop's rule for input splits). So every task reads only its own blocks (plus the tail
of its last line, and one byte before each block to know whether a line starts there), a file
that grows (``--follow``) keeps being shared out, and no task ever needs the whole file.

A line's id is ``<file>:<byte offset of its first byte>``: stable, like a line number, but known
without reading what comes before (Hadoop's ``TextInputFormat`` keys lines the same way).

:func:`scan` is the core both drivers share: the simulator's in-memory source hands it the whole
file, the worker's ranged reader (``rainstorm/source_reader.py``) a window it fetched from HyDFS.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import accumulate, count
from operator import add


@dataclass(frozen=True, slots=True)
class Stripe:
    part: int
    parts: int
    block: int

    def owned_from(self, pos: int) -> int:
        """The first offset >= ``pos`` in a block this part owns."""
        k = pos // self.block
        skip = (self.part - k) % self.parts
        return pos if skip == 0 else (k + skip) * self.block


@dataclass(frozen=True, slots=True)
class Scan:
    """What :func:`scan` found. ``need``: the window must hold bytes up to this offset (exclusive)
    before anything more can be said; otherwise ``[lo, hi)`` is a run of whole owned lines (maybe
    empty), ``next`` is where to go on, and ``eof`` says nothing will ever follow."""

    lo: int = 0
    hi: int = 0
    next: int = 0                  # with ``need``: where the next scan may begin (skipped blocks stay skipped)
    eof: bool = False
    need: int | None = None
    need_from: int | None = None   # with ``need``: the window must start at or before this offset


def scan(buf: bytes, off: int, pos: int, size: int, final: bool, stripe: Stripe,
         max_bytes: int) -> Scan:
    """Whole lines owned by ``stripe`` from ``pos``, about ``max_bytes`` of them.

    ``buf`` holds the file's bytes ``[off, off + len(buf))``; ``size`` is the file's length (bytes
    that are there to read); ``final``: the file will not grow (not following)."""
    end = off + len(buf)
    while True:
        p = stripe.owned_from(pos)
        if p >= size:
            return Scan(p, p, p, eof=final)
        block_end = (p // stripe.block + 1) * stripe.block
        if p % stripe.block == 0 and p > 0:
            # a block's first line starts at its first byte only if the byte before ends a line
            if not off <= p - 1 < end:
                return Scan(next=p, need=min(size, p + stripe.block), need_from=p - 1)
            if buf[p - 1 - off] != 0x0A:
                q = _find_nl(buf, off, p)
                if q < 0:
                    if end < size:
                        return Scan(next=p, need=min(size, end + stripe.block), need_from=p - 1)
                    # the line that started before this block runs to the end of the file
                    return Scan(p, p, size if final else p, eof=final)
                if q + 1 >= block_end:
                    pos = block_end   # no line starts in this block: on to the next one we own
                    continue
                p = q + 1
        # a later scan from p re-checks the byte before p if p starts a block: keep it in the window
        keep = p - 1 if p % stripe.block == 0 and p > 0 else p
        if not off <= keep <= p <= end:
            return Scan(next=p, need=min(size, p + stripe.block), need_from=keep)
        limit = min(block_end, p + max(max_bytes, 1), size)
        # the last line starting before ``limit`` ends at the first newline at or after limit - 1
        q = _find_nl(buf, off, limit - 1)
        if q >= 0:
            return Scan(p, q + 1, q + 1, eof=final and stripe.owned_from(q + 1) >= size)
        if end < size:
            return Scan(next=p, need=min(size, end + stripe.block), need_from=keep)
        if final:
            return Scan(p, size, size, eof=True)   # the file's last line has no newline: whole now
        # following: return the whole lines there are; the unfinished one waits for its newline
        q = _rfind_nl(buf, off, p, size)
        return Scan(p, q + 1, q + 1) if q >= 0 else Scan(p, p, p)


def _find_nl(buf: bytes, off: int, at: int) -> int:
    i = buf.find(b"\n", at - off)
    return -1 if i < 0 else off + i


def _rfind_nl(buf: bytes, off: int, lo: int, hi: int) -> int:
    i = buf.rfind(b"\n", lo - off, hi - off)
    return -1 if i < 0 else off + i


@dataclass(slots=True)
class Lines:
    """A run of whole source lines: their text, where the first one starts, and (lazily) each one's
    byte offset, which only the lines that survive the first operator need (their ids)."""

    lines: list[str]
    base: int
    sizes: list[int] | None = None    # bytes per line including its newline; None: len(line) + 1
    next: int = 0                     # where the task goes on after these lines
    eof: bool = False

    def offsets(self) -> list[int]:
        if not self.lines:
            return []
        if self.sizes is not None:
            return list(accumulate(self.sizes[:-1], initial=self.base))
        # line i starts at base + (lengths before it) + i newlines: all in C, no per-line Python
        return list(map(add, accumulate(map(len, self.lines[:-1]), initial=self.base), count()))

    def ids(self, src: str) -> list[str]:
        """Every line's id (and key): ``<src>:<byte offset>``."""
        return [f"{src}:{o}" for o in self.offsets()]

    def tuples(self, src: str) -> list[tuple[str, str, str]]:
        """Every line as a source tuple ``(id, key = id, line)``."""
        ids = self.ids(src)
        return list(zip(ids, ids, self.lines, strict=True))

    def offsets_of(self, idx: list[int]) -> list[int]:
        """The byte offsets of lines ``idx`` (ascending) only: a filter keeping 3 % of a page pays for
        those, the lengths in between summed in C, instead of an offset object for every line."""
        out: list[int] = []
        pos, prev, lines, sizes = self.base, 0, self.lines, self.sizes
        for i in idx:
            pos += sum(sizes[prev:i]) if sizes is not None else sum(map(len, lines[prev:i])) + i - prev
            out.append(pos)
            prev = i
        return out

    def cut(self, n: int) -> Lines:
        """The first ``n`` lines only (a paced source takes what its rate allows)."""
        if n >= len(self.lines):
            return self
        sizes = self.sizes if self.sizes is not None else [len(s) + 1 for s in self.lines[:n]]
        return Lines(self.lines[:n], self.base, sizes[:n], self.base + sum(sizes[:n]), False)


def split_lines(data: bytes, base: int) -> tuple[list[str], list[int] | None]:
    """``data`` (whole lines) as text lines, and their byte sizes where they differ from len + 1.

    ASCII without ``\\r`` (the common case) is decoded and split in two C calls; other text is split
    on bytes first so that each line's offset stays a byte offset (invalid UTF-8 is replaced)."""
    if not data:
        return [], None
    cut = data[:-1] if data.endswith(b"\n") else data
    if data.isascii() and b"\r" not in data:
        return cut.decode("ascii").split("\n"), None
    raw = cut.split(b"\n")
    sizes = [len(r) + 1 for r in raw]
    if not data.endswith(b"\n"):
        sizes[-1] -= 1
    lines = [r.decode("utf-8", "replace") for r in raw]
    if b"\r" in data:
        lines = [s[:-1] if s.endswith("\r") else s for s in lines]
    return lines, sizes


def read_lines(data: bytes, stripe: Stripe, pos: int, max_bytes: int, final: bool) -> Lines:
    """Lines from a source held whole in memory (the simulator's, and tests'): the :func:`scan` core
    over the whole file."""
    s = scan(data, 0, pos, len(data), final, stripe, max_bytes)
    assert s.need is None
    lines, sizes = split_lines(data[s.lo:s.hi], s.lo)
    return Lines(lines, s.lo, sizes, s.next, s.eof)


def lines_file(lines: Iterable[str]) -> bytes:
    """A file holding ``lines``, each ending with a newline (how tests and the simulator make sources)."""
    return "".join(x + "\n" for x in lines).encode()


def all_lines(data: bytes) -> list[tuple[int, str]]:
    """Every line of a file with its byte offset: what the reference run reads."""
    lines, sizes = split_lines(data, 0)
    offs = Lines(lines, 0, sizes).offsets()
    return list(zip(offs, lines, strict=True))

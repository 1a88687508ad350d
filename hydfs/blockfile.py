"""A crash-safe file of append blocks on local disk.

Each block is ``header | meta | data``: the header holds a magic, the meta and data lengths and a
CRC-32 of meta+data; meta is a small msgpack dict (term, index, client id, seq, ...). Opening a file
scans the headers and cuts a torn tail (short header, short body or bad CRC) left by a crash, so a
half-written append never becomes visible. Data is read by range, so a 200 MB file never has to
be in memory; only the blocks' metas and offsets are.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

MAGIC = b"HYB1"
HEADER = struct.Struct(">4sIQI")  # magic, meta length, data length, crc32(meta + data)
CHUNK = 1 << 20


@dataclass
class Block:
    meta: dict[str, Any]
    offset: int        # where the block's header starts
    data_offset: int   # where its data starts
    data_len: int

    @property
    def end(self) -> int:
        return self.data_offset + self.data_len


def _crc_of(f: Any, start: int, length: int) -> int:
    crc = 0
    f.seek(start)
    left = length
    while left:
        buf = f.read(min(CHUNK, left))
        if not buf:
            return -1
        crc = zlib.crc32(buf, crc)
        left -= len(buf)
    return crc


def encode_block(meta: dict[str, Any], data: bytes) -> bytes:
    m = msgpack.packb(meta, use_bin_type=True)
    return HEADER.pack(MAGIC, len(m), len(data), zlib.crc32(data, zlib.crc32(m))) + m + data


class BlockFile:
    def __init__(self, path: Path, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync
        self.blocks: list[Block] = []
        self.cut_bytes = 0  # torn tail removed at open
        self._f = open(path, "r+b" if path.exists() else "w+b")
        self._scan()

    def _scan(self) -> None:
        f = self._f
        size = os.fstat(f.fileno()).st_size
        pos = 0
        while pos + HEADER.size <= size:
            f.seek(pos)
            magic, mlen, dlen, crc = HEADER.unpack(f.read(HEADER.size))
            body = pos + HEADER.size
            if magic != MAGIC or body + mlen + dlen > size or _crc_of(f, body, mlen + dlen) != crc:
                break
            f.seek(body)
            try:
                meta = msgpack.unpackb(f.read(mlen), raw=False)
            except Exception:
                break
            self.blocks.append(Block(meta, pos, body + mlen, dlen))
            pos = body + mlen + dlen
        if pos < size:
            self.cut_bytes = size - pos
            f.truncate(pos)
            self._sync()

    def _sync(self) -> None:
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())

    @property
    def size(self) -> int:
        return self.blocks[-1].end if self.blocks else 0

    def append(self, meta: dict[str, Any], data: bytes) -> Block:
        return self.append_many([(meta, data)])[-1]

    def append_many(self, items: Iterable[tuple[dict[str, Any], bytes]]) -> list[Block]:
        """Write several blocks with one fsync (a batch of replicated entries)."""
        out = []
        pos = self.size
        self._f.seek(pos)
        for meta, data in items:
            raw = encode_block(meta, data)
            self._f.write(raw)
            mlen = len(raw) - HEADER.size - len(data)
            out.append(Block(meta, pos, pos + HEADER.size + mlen, len(data)))
            pos += len(raw)
        self._sync()
        self.blocks.extend(out)
        return out

    def truncate(self, count: int) -> None:
        """Keep the first ``count`` blocks (a divergent suffix is cut)."""
        if count >= len(self.blocks):
            return
        self._f.truncate(self.blocks[count].offset)
        del self.blocks[count:]
        self._sync()

    def read(self, i: int, start: int = 0, length: int | None = None) -> bytes:
        b = self.blocks[i]
        n = b.data_len - start if length is None else min(length, b.data_len - start)
        self._f.seek(b.data_offset + start)
        return self._f.read(max(0, n))

    def iter_data(self, first: int = 0, last: int | None = None, chunk: int = CHUNK) -> Iterator[bytes]:
        """Data of blocks ``first``..``last-1`` in chunks of at most ``chunk`` bytes."""
        for i in range(first, len(self.blocks) if last is None else last):
            for start in range(0, self.blocks[i].data_len, chunk):
                yield self.read(i, start, chunk)

    def close(self) -> None:
        self._f.close()


def write_atomic(path: Path, blocks: Iterable[tuple[dict[str, Any], bytes]], fsync: bool = True) -> None:
    """A whole new file: written under a temporary name, then renamed, so it appears whole or not at all."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        for meta, data in blocks:
            f.write(encode_block(meta, data))
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if fsync:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

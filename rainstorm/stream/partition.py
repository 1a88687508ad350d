"""Stable hash partitioning: the same key goes to the same partition in every process, on every run.

Python's ``hash()`` of a str is salted per process, so it cannot route tuples between nodes. Keys are
hashed by their bytes (a str: its UTF-8; anything else: its msgpack encoding, which makes a tuple and
the list it decodes to hash alike) with CRC-32, mixed, and reduced to a partition with a
multiply-shift (uses the high bits: no modulo bias for small counts, well spread for near-equal keys).
This is a wire contract: changing it moves keys between partitions of running jobs.
"""

from __future__ import annotations

from typing import Any
from zlib import crc32

import msgpack

_packb = msgpack.Packer(autoreset=True).pack
_GOLDEN = 0x9E3779B1


def stable_hash(key: Any) -> int:
    """32-bit hash of a key, identical across processes and Python versions. Raises TypeError for a key
    msgpack cannot encode (such a tuple goes to the dead-letter list: it could not cross a stage anyway)."""
    if type(key) is str:
        h = crc32(key.encode("utf-8", "surrogatepass"))
    else:
        h = crc32(_packb(key))
    return (h * _GOLDEN) & 0xFFFFFFFF


def partition_of(key: Any, n: int) -> int:
    """The partition in ``range(n)`` a key belongs to."""
    if n <= 1:
        return 0
    return (stable_hash(key) * n) >> 32

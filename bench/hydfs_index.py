"""What a stored HyDFS entry costs a node's memory once written: the block index of its log.

    python bench/hydfs_index.py [--entries 200000] [--data 500]

A ``--follow`` source appended to twice a second for two weeks is 2.4 million entries, and every
replica keeps an index of each entry of each file it holds. This bench appends ``--entries`` entries
of ``--data`` bytes to one file of a real ``DiskStorage`` (tail cache off, so only the index counts)
and measures with ``tracemalloc`` the bytes it holds per entry. The baseline, in the same process, is
the index as earlier versions kept it: a ``Block`` object with its meta dict per entry and a list of
prefix sums (rebuilt here from the same entries' metas). Reading every entry back (what a task's
rebuild or a ``get`` does) is timed too, since an entry's meta now comes from its block header on disk.

The file's primary also keeps an idempotency table: each client's latest ``DEDUP_WINDOW`` appends
now, against one entry per append for ever before (the same class with an unbounded window, here).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from hydfs.conditions import Tables  # noqa: E402
from hydfs.disk import DiskStorage  # noqa: E402
from hydfs.entries import Entry  # noqa: E402


@dataclass
class OldBlock:          # the earlier per-entry index: a plain dataclass with its meta dict
    meta: dict[str, Any]
    offset: int
    data_offset: int
    data_len: int


def entries(n: int, size: int) -> list[list[Entry]]:
    data = b"x" * size
    batches, k = [], 1
    while k <= n:
        batches.append([Entry(1, i, "bench-feeder-3f9a2c1d", i, data) for i in range(k, min(n, k + 99) + 1)])
        k += 100
    return batches


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entries", type=int, default=200_000)
    p.add_argument("--data", type=int, default=500, help="bytes per entry (only the disk sees them)")
    a = p.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as d:
        s = DiskStorage(Path(d), fsync_data=False, tail_bytes=0)
        batches = entries(a.entries, a.data)
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for b in batches:
            s.append("src", b)
        s.sync()
        s.flush_data()
        now_b = (tracemalloc.get_traced_memory()[0] - before) / a.entries
        # the earlier index of the same entries: a Block with its meta dict each, and a list of prefix sums
        base = tracemalloc.get_traced_memory()[0]
        old: list[OldBlock] = []
        ends: list[int] = []
        pos = total = 0
        for b in batches:
            for e in b:
                m = e.meta()
                m["c"] = "".join(e.client_id)   # each decoded message brought its own string
                old.append(OldBlock(m, pos, pos + 60, len(e.data)))
                pos += 60 + len(e.data)
                total += len(e.data)
                ends.append(total)
        old_b = (tracemalloc.get_traced_memory()[0] - base) / a.entries
        tracemalloc.stop()
        tables = {}
        for label, window in (("now", None), ("unbounded", 10**12)):
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            t = Tables(window)
            for b in batches:
                t.add(b)
            tables[label] = (tracemalloc.get_traced_memory()[0] - base) / a.entries
            tracemalloc.stop()
            del t
        t0 = time.perf_counter()
        got = 0
        for start in range(1, a.entries + 1, 1000):
            got += len(s.read("src", start, start + 1000))
        read_s = time.perf_counter() - t0
        assert got == a.entries
        s.close()
    print(f"{a.entries} entries of {a.data} B in one file")
    print(f"index memory per entry: {now_b:.1f} B now, {old_b:.1f} B the earlier way: {old_b / now_b:.1f}x less")
    print(f"for 2.4 million entries (two weeks at 2 appends/s): {now_b * 2.4e6 / 2**20:.0f} MiB now, "
          f"{old_b * 2.4e6 / 2**20:.0f} MiB the earlier way")
    print(f"primary's idempotency table per entry: {tables['now']:.1f} B now (a window per client), "
          f"{tables['unbounded']:.1f} B unbounded")
    print(f"reading every entry back (pages of 1000, metas from the headers): {read_s:.2f} s, "
          f"{read_s / a.entries * 1e6:.1f} us an entry")
    return 0


if __name__ == "__main__":
    sys.exit(main())

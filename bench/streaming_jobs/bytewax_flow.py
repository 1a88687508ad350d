"""Bytewax 0.21: running count of status-500 lines per path, one JSON [path, count] line per update.

    BENCH_SRC=... BENCH_DEST=... python -m bytewax.run bytewax_flow:flow [-r DIR -s 10]

FileSource and FileSink are Bytewax's own connectors; with recovery on, both resume exactly once.
"""

import json
import os
from pathlib import Path

from bytewax import operators as op
from bytewax.connectors.files import FileSink, FileSource
from bytewax.dataflow import Dataflow


def path_of_500(line: str) -> str | None:
    fields = line.split(",", 5)
    return fields[3] if fields[4] == "500" else None


def count(total: int | None, _path: str) -> tuple[int, int]:
    total = (total or 0) + 1
    return total, total


def build(src: str, dest: str) -> Dataflow:
    flow = Dataflow("bench_streaming")
    lines = op.input("lines", flow, FileSource(src))
    paths = op.filter_map("path_of_500", lines, path_of_500)
    counts = op.stateful_map("count", op.key_on("by_path", paths, lambda p: p), count)
    rows = op.map("json", counts, lambda kv: (kv[0], json.dumps([kv[0], kv[1]])))
    op.output("out", rows, FileSink(Path(dest)))
    return flow


flow = build(os.environ["BENCH_SRC"], os.environ["BENCH_DEST"])

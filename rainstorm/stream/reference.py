"""The plain meaning of a job: every stage over every tuple, in order, one task, no failures.

The oracle for tests: a distributed run of the same job must publish the same multiset of
destination lines and dead-letter lines (for jobs whose outputs do not depend on arrival order;
an AggregateByKey "count" qualifies: each group's values are 1..n whatever the order).
Not modelled: outputs msgpack cannot encode (the distributed run dead-letters them at a hop).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rainstorm.stream.chain import dead_lines, sink_lines
from rainstorm.stream.operators import DeadLetter, Operator
from rainstorm.stream.source import all_lines, lines_file


def run_reference(stages: Sequence[Operator], src: str,
                  lines: Sequence[str] | bytes) -> tuple[list[bytes], list[bytes]]:
    """(destination lines, dead-letter lines), each line without its newline. ``lines``: the source
    file's bytes, or its lines (a file of those lines, each ending with a newline)."""
    data = lines if isinstance(lines, bytes) else lines_file(lines)
    tuples: list[Any] = [(f"{src}:{o}", f"{src}:{o}", line) for o, line in all_lines(data)]
    dead: list[DeadLetter] = []
    for i, op in enumerate(stages):
        state: dict[Any, Any] = {}
        tuples = op.run(i, tuples, dead, state, {})
    out = sink_lines(tuples, dead, len(stages) - 1)
    return out.splitlines(), dead_lines(dead).splitlines()

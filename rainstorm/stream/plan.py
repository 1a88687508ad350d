"""A job's physical layout: which logical stages run fused in which task group, and where tuples go.

Logical stages are the job file's ``stages`` list (indices 0..k-1). A *physical* stage is a group of
N tasks (partitions) that run a chain of consecutive logical stages in one process without a hop:
- physical stage 0 is the source: it reads lines and (when fused) runs the leading stateless stages;
- with ``fuse=True`` every AggregateByKey starts a new physical stage (it needs its input partitioned
  by group) and takes the stateless stages after it along; so a filter-only job is ONE physical stage
  (source + filter + sink in one task, no channel at all);
- with ``fuse=False`` each logical stage is its own physical stage (more hops: what the simulation
  uses to exercise channels).
The last physical stage is the sink. Fusion changes neither the derived tuple ids nor the multiset of
outputs: stateless operators do not care which partition runs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rainstorm.stream.operators import Operator

TaskRef = tuple[int, int]  # (physical stage, partition)


@dataclass(frozen=True)
class PhysStage:
    index: int
    ops: tuple[tuple[int, Operator], ...]   # (logical stage index, operator)
    tasks: int

    @property
    def last_logical(self) -> int:
        """Logical index of the last operator run here (-1: a bare source)."""
        return self.ops[-1][0] if self.ops else -1


@dataclass(frozen=True)
class Plan:
    job: str
    src: str                          # source file name: source tuple ids are f"{src}:{line}"
    dest: str                         # where the sink appends its lines
    deadletters: str                  # where every task appends its dead letters
    stages: tuple[Operator, ...]
    phys: tuple[PhysStage, ...]

    def task_name(self, ref: TaskRef) -> str:
        """Stable per task (not per instance): fence keys and publish idempotency keys use it."""
        return f"{self.job}:{ref[0]}:{ref[1]}"

    def log_name(self, ref: TaskRef) -> str:
        return log_name(self.job, ref)

    def tasks(self) -> list[TaskRef]:
        return [(ps.index, p) for ps in self.phys for p in range(ps.tasks)]

    def is_sink(self, stage: int) -> bool:
        return stage == len(self.phys) - 1


def log_name(job: str, ref: TaskRef) -> str:
    """A task's HyDFS log; ``job`` is the run key (``name@run``). The controller names them for ``rm``."""
    return f"rs/{job}/log/{ref[0]}.{ref[1]}"


def build_plan(job: str, src: str, dest: str, stages: Sequence[Operator], tasks: int | Sequence[int] = 1,
               *, fuse: bool = True, deadletters: str | None = None) -> Plan:
    """Group ``stages`` into physical stages; ``tasks`` is N for every physical stage or one N per stage."""
    if not stages:
        raise ValueError("a job needs at least one stage")
    groups: list[list[tuple[int, Operator]]] = [[]]
    for i, op in enumerate(stages):
        if not fuse or op.stateful:
            groups.append([])
        groups[-1].append((i, op))
    counts = [tasks] * len(groups) if isinstance(tasks, int) else list(tasks)
    if len(counts) != len(groups) or any(type(n) is not int or n < 1 for n in counts):
        raise ValueError(f"tasks: need a positive count for each of the {len(groups)} physical stages")
    phys = tuple(PhysStage(i, tuple(g), n) for i, (g, n) in enumerate(zip(groups, counts, strict=True)))
    return Plan(job, src, dest, deadletters or f"{dest}.deadletters", tuple(stages), phys)

"""A task's start on the worker: a transient HyDFS error (the job file's primary just died, the
ring is settling) is retried, not reported as a failure of the whole job (hole 5 of issue 11).

The HyDFS client here is a stand-in that fails its first reads, because the thing under test is the
worker's handling of a failed read, not HyDFS; the real retry of a real failover is exercised by the
cluster tests (a SIGKILL while tasks start)."""

from __future__ import annotations

import asyncio
from typing import Any

import fakeredis.aioredis

from hydfs.api import HydfsError
from net.rpc import RpcClient, RpcServer
from net.wire import derive_key
from rainstorm.worker import Worker, WorkerConfig

JOB = b"from rainstorm import FilteredTransform\nstages = [FilteredTransform(lambda k, v: True, lambda k, v: (k, v))]\n"
RUN = "j@1"
TABLE = {"version": 3, "jobs": {RUN: {"state": "running", "done": [], "spec": {
    "job_file": "rs/jobs/j.py", "src": "in", "dest": "out", "tasks": 1, "args": {}},
    "assign": {f"{RUN}:0:0": ["node-1", 1]}}}}


class FlakyHydfs:
    """Fails the first ``failures`` reads of the job file with a transient error."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.reads = 0

    async def get(self, name: str) -> bytes:
        self.reads += 1
        if self.reads <= self.failures:
            raise HydfsError("no primary for rs/jobs/j.py yet", "unavailable")
        return JOB


class Control:
    """Records what the worker asks of the controller."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []

    async def request(self, name: str, args: dict[str, Any]) -> Any:
        self.requests.append((name, args))
        return {"applied": True}


async def test_a_transient_hydfs_error_at_start_is_retried_not_failed() -> None:
    hydfs, control = FlakyHydfs(failures=3), Control()
    w = Worker("node-1", RpcServer(derive_key("k")), RpcClient(derive_key("k")), hydfs,  # type: ignore[arg-type]
               fakeredis.aioredis.FakeRedis(), None, control, WorkerConfig(start_retry=10.0))  # type: ignore[arg-type]
    d = w.core.on_table(TABLE)
    assert [(x.run, x.ref, x.epoch) for x in d.launch] == [(RUN, (0, 0), 1)]
    await w._launch(RUN, (0, 0), 1)
    try:
        assert hydfs.reads == 4 and (RUN, (0, 0)) in w.instances
        assert not [a for name, a in control.requests if name == "report" and a["status"] == "failed"]
        assert not w.core.reports
    finally:
        await w.close()


async def test_an_error_that_lasts_reports_the_instance_dead_for_a_new_epoch() -> None:
    hydfs, control = FlakyHydfs(failures=10**6), Control()
    w = Worker("node-1", RpcServer(derive_key("k")), RpcClient(derive_key("k")), hydfs,  # type: ignore[arg-type]
               fakeredis.aioredis.FakeRedis(), None, control, WorkerConfig(start_retry=0.5))  # type: ignore[arg-type]
    w.core.on_table(TABLE)
    await w._launch(RUN, (0, 0), 1)
    assert (RUN, (0, 0)) not in w.instances
    # kept until the controller has it: "died" (the next epoch runs), never "failed" (the job's end)
    assert [a["status"] for a in w.core.due_reports()] == ["died"]
    await asyncio.sleep(0)
    await w.close()

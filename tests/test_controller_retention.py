"""Removal of ended runs in the controller core: the ``rm`` and ``drop`` entries, refusal of a running
run, retention by the clock carried in the entries, and the same outcome when the log is replayed
(a new leader) or an entry is committed twice (a retried proposal)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hydfs.api import HydfsError
from rainstorm.controller import FINISHED, RUNNING, STILL_RUNNING, STOPPED, UNKNOWN, Controller, run_files

REFS = [[0, 0], [0, 1], [1, 0]]
NODES = ["node-1", "node-2", "node-3"]
DAY = 86400.0


class Log:
    """Commands applied at increasing indexes, and kept, so that a new leader can replay them."""

    def __init__(self) -> None:
        self.c = Controller()
        self.entries: list[dict[str, Any]] = []
        self("members", alive=NODES)

    def __call__(self, op: str, **kw: Any) -> Any:
        cmd = {"op": op, **kw}
        self.entries.append(cmd)
        return self.c.apply(cmd, len(self.entries))

    def submit(self, name: str = "j", dest: str = "out") -> str:
        out = self("submit", name=name, spec={"src": "s", "dest": dest, "job_file": f"rs/jobs/{name}-x.py"},
                   tasks=REFS, limit=32)
        return str(out["key"])

    def finish(self, key: str, at: float) -> None:
        run = self.c.runs[key]
        for t in run.tasks:
            self("report", run=key, task=t, epoch=run.assign[t].epoch, status="done", at=at)

    def replayed(self) -> Controller:
        """What a new leader holds: the same committed entries applied from the start."""
        c = Controller()
        for i, cmd in enumerate(self.entries, 1):
            c.apply(cmd, i)
        return c


def test_rm_marks_ended_runs_removing_and_drop_forgets_them() -> None:
    log = Log()
    first = log.submit()
    log.finish(first, at=100.0)
    second = log.submit()
    log("stop", name="j", at=200.0)
    assert log.c.runs[first].ended_at == 100.0 and log.c.runs[second].ended_at == 200.0
    out = log("rm", name="j", run=None, deadletters=False, at=300.0)
    assert [r["key"] for r in out["runs"]] == [first, second] and out["kept"] == []
    assert [r.key for r in log.c.removing()] == [first, second]
    assert all(log.c.table()["jobs"][k]["removing"] for k in (first, second))
    # the internal files only: each task's log and the stored job file, never the source nor the output
    assert run_files(log.c.runs[first]) == [f"rs/{first}/log/0.0", f"rs/{first}/log/0.1", f"rs/{first}/log/1.0",
                                            "rs/jobs/j-x.py"]
    run = log.c.runs[first].run
    assert log("drop", run=first) == {"dropped": True, "name": "j", "run": run, "key": first}
    assert log.c.latest["j"] == second                 # the newest run left is the one status shows
    assert log("drop", run=second)["dropped"]
    assert log.c.runs == {} and "j" not in log.c.latest and log.c.run_of("j") is None
    assert log("drop", run=second) == {"dropped": False}         # a retried drop changes nothing
    assert log("rm", name="j")["error"] == UNKNOWN                 # a second rm: one clear refusal
    # the name can be submitted again, a new run with its own task names
    assert log.submit() not in (first, second)


def test_dead_letters_go_only_when_asked() -> None:
    log = Log()
    key = log.submit(dest="counts")
    log.finish(key, at=1.0)
    log("rm", name="j", run=int(key.split("@")[1]), deadletters=True, at=2.0)
    assert run_files(log.c.runs[key])[-1] == "counts.deadletters"
    assert "counts" not in run_files(log.c.runs[key])


def test_a_running_run_is_refused_and_kept() -> None:
    log = Log()
    old = log.submit()
    log.finish(old, at=1.0)
    live = log.submit()
    run = log.c.runs[live].run
    out = log("rm", name="j", run=run, at=2.0)
    assert out["error"] == STILL_RUNNING and "rainstorm stop j" in out["message"]
    assert not log.c.runs[live].removing
    # without --run: the ended runs go, the running one is kept and said so
    out = log("rm", name="j", at=3.0)
    assert [r["key"] for r in out["runs"]] == [old] and out["kept"] == [run]
    assert log.c.runs[live].state == RUNNING and not log.c.runs[live].removing
    assert log("rm", name="j", run=9999)["error"] == UNKNOWN
    assert log("rm", name="nope")["error"] == UNKNOWN
    # the only run of a name is running: refused, nothing changes
    only = Log()
    only.submit()
    v = only.c.version
    assert only("rm", name="j", at=1.0)["error"] == STILL_RUNNING and only.c.version == v


def test_a_removing_run_takes_no_reports_and_no_placement() -> None:
    log = Log()
    key = log.submit()
    log("stop", name="j", at=1.0)
    log("rm", name="j", at=2.0)
    t = log.c.runs[key].tasks[0]
    assert log("report", run=key, task=t, epoch=1, status="done", at=3.0) == {"applied": False}
    assert log("members", alive=NODES[:2])["moved"] == []
    assert log.c.runs[key].state == STOPPED and log.c.tasks_on("node-1") == 0


def test_retention_counts_from_when_the_run_ended_by_the_entries_clock() -> None:
    log = Log()
    key = log.submit()
    assert log.c.expired(10 * DAY, DAY) == []            # running: never
    log.finish(key, at=1000.0)
    assert log.c.runs[key].state == FINISHED
    assert log.c.expired(1000.0 + DAY - 1, DAY) == []
    assert [r.key for r in log.c.expired(1000.0 + DAY, DAY)] == [key]
    # the sweep's entry decides by its own ``at``: one proposed too early changes nothing
    run = log.c.runs[key].run
    assert log("rm", name="j", run=run, at=1000.0 + DAY - 1, retention=DAY)["runs"] == []
    assert not log.c.runs[key].removing
    assert [r["key"] for r in log("rm", name="j", run=run, at=1000.0 + DAY, retention=DAY)["runs"]] == [key]
    assert log.c.runs[key].removing and log.c.expired(1e12, DAY) == []   # proposed once
    # a run that ended before times were recorded (no ``at``) is not guessed at: kept until `rainstorm rm`
    legacy = Log()
    k2 = legacy.submit()
    legacy("stop", name="j")
    assert legacy.c.runs[k2].ended_at is None and legacy.c.expired(1e12, 1.0) == []


def test_replay_after_a_leader_change_and_twice_committed_entries_agree() -> None:
    log = Log()
    a = log.submit()
    log.finish(a, at=5.0)
    b = log.submit(name="k")
    log("stop", name="k", at=6.0)
    log("rm", name="j", at=7.0)
    log("rm", name="j", at=7.5)          # the same rm retried, committed twice: same state
    snap = Controller.from_doc(log.c.to_doc())   # a follower restored from a snapshot mid-removal
    assert snap.to_doc() == log.c.to_doc() and snap.removing()[0].key == a
    new_leader = log.replayed()
    assert new_leader.to_doc() == log.c.to_doc() and new_leader.table() == log.c.table()
    # the new leader finishes the removal from the committed entry; the old leader's drop may land too
    for c in (log.c, new_leader, snap):
        assert c.apply({"op": "drop", "run": a}, 100)["dropped"]
        assert c.apply({"op": "drop", "run": a}, 101) == {"dropped": False}
        assert set(c.runs) == {b} and c.latest == {"k": b}
    assert log.c.to_doc() == new_leader.to_doc() == snap.to_doc()


class _FakeDfs:
    """A HyDFS client whose rm fails ``fail`` times (a primary just died), then works once."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        # with a task snapshot whose name only a listing finds, and another run's file
        self.files = {"rs/j@2/log/0.0", "rs/j@2/log/0.1", "rs/j@2/log/1.0", "rs/jobs/j-x.py",
                      "rs/j@2/log/1.0.snap.1.1001", "rs/j@22/log/0.0"}
        self.calls = 0

    async def refresh(self) -> None:
        pass

    async def store(self, node: str) -> list[str]:
        if node == "node-3":
            raise HydfsError("node-3: unreachable")
        return sorted(self.files)

    async def rm(self, name: str) -> None:
        self.calls += 1
        if self.fail:
            self.fail -= 1
            raise HydfsError(f"{name}: no answer from HyDFS within 30s")
        if name not in self.files:
            raise HydfsError(f"no such HyDFS file: {name}", "not_found")
        self.files.discard(name)


@pytest.mark.parametrize("fail", [0, 3])
def test_the_leader_deletes_files_idempotently_with_retries_then_commits_drop(fail: int) -> None:
    from net.rpc import RpcClient, RpcServer
    from rainstorm.control import ControlConfig, ControlService

    log = Log()
    key = log.submit()
    log.finish(key, at=1.0)
    log("rm", name="j", at=2.0)
    dfs = _FakeDfs(fail)
    dfs.files.discard("rs/j@2/log/0.1")          # a file an earlier (deposed) leader already deleted

    class Gossip:
        def members(self) -> list[Any]:
            return []

    async def main() -> dict[str, Any]:
        svc = ControlService("node-1", ControlConfig(request_timeout=0.3), RpcServer(b"k" * 32),
                             RpcClient(b"k" * 32), Gossip(), None, hydfs=dfs)  # type: ignore[arg-type]
        svc.machine.core = log.c
        svc.leads = lambda: True  # type: ignore[method-assign]
        svc.cleaned[key] = {"node-1", "node-2"}   # node-3 never acks: the leader waits a bound, then drops

        async def propose(cmd: dict[str, Any]) -> Any:
            log.entries.append(cmd)
            return log.c.apply(cmd, len(log.entries))

        svc._propose = propose  # type: ignore[method-assign]
        await svc._purge(key)
        await svc._purge(key)          # again (a second sweep, a new leader): nothing more to do
        return svc.removed[key]

    assert key == "j@2"
    summary = asyncio.run(main())
    assert dfs.files == {"rs/j@22/log/0.0"} and dfs.calls == 5 + fail
    assert summary == {"files": 4, "of": 5, "nodes": ["node-1", "node-2"], "later": ["node-3"]}
    assert key not in log.c.runs and log.entries[-1] == {"op": "drop", "run": key}


def test_rm_waits_for_every_voter_to_announce_a_version_that_applies_it() -> None:
    """A rolling upgrade: a voter of the previous version refuses ``rm`` as unknown, so its table would
    part from the others'. The leader refuses ``rm`` (and its retention sweep proposes none) until every
    voter's hello announced PROTO_RM; the refusal names the voters behind."""
    from net.rpc import RpcClient, RpcServer
    from rainstorm.control import ControlConfig, ControlError, ControlService
    from rainstorm.controller import BEHIND, PROTO_RM
    from rainstorm.worker_core import WorkerCore

    log = Log()
    key = log.submit()
    log.finish(key, at=1.0)
    log("hello", node="node-1", **{k: v for k, v in WorkerCore("node-1", "b1").hello().items() if k != "node"})
    log("hello", node="node-2", boot="old")             # the previous version: no proto
    assert log.c.behind(NODES, PROTO_RM) == ["node-2", "node-3"]
    assert log.replayed().protos == log.c.protos and Controller.from_doc(log.c.to_doc()).protos == log.c.protos

    class Gossip:
        def members(self) -> list[Any]:
            return []

    async def rm() -> Any:
        svc = ControlService("node-9", ControlConfig(request_timeout=0.3, voters=[]), RpcServer(b"k" * 32),
                             RpcClient(b"k" * 32), Gossip(), None)  # type: ignore[arg-type]
        svc.voters = list(NODES)
        svc.machine.core = log.c

        async def propose(cmd: dict[str, Any]) -> Any:
            log.entries.append(cmd)
            return log.c.apply(cmd, len(log.entries))

        svc._propose = propose  # type: ignore[method-assign]
        return await svc._rm({"name": "j"})

    with pytest.raises(ControlError) as refused:
        asyncio.run(rm())
    assert refused.value.code == BEHIND and "node-2, node-3" in str(refused.value)
    assert log.c.runs[key].state == FINISHED
    for node in ("node-2", "node-3"):
        log("hello", node=node, boot="new", proto=PROTO_RM)
    assert [r["key"] for r in asyncio.run(rm())["runs"]] == [key]

"""Partitions on a 5-host cluster (voters h1, h2, h3), each host its own network namespace.

- a minority host running tasks is cut off: the majority declares it failed, its tasks move, it
  rejoins after the heal and runs nothing stale; the job's output is exact;
- a link between two hosts running adjacent stages of a job is cut: nobody is declared failed
  (indirect probes go around the cut) and the job's output is exact;
- the controller's leader is cut off: it stops leading and refuses, the majority elects a new
  leader, and after the heal there is one leader;
- HyDFS appends on both sides of a cut: every append acknowledged to a client is in the file
  exactly once after the heal.

Exact means: the destination equals the failure-free result of the same job over the same lines
(rainstorm.stream.reference, as tests/test_stream_cluster.py checks), as a multiset of lines. The
measured times are printed (`pytest -s`) and quoted in docs/partitions.md.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

import pytest

from hydfs.ring import Ring
from tests.multihost.harness import COUNT_JOB, Cluster, check_output, sign_rows, wait_until

pytestmark = pytest.mark.multihost

LINES = 6000     # under one 1 MiB source block: one source task paces the job ...
RATE = 300.0     # ... at this many lines/s, so a job runs about 20 s: long enough to cut in the middle
SETTLE = 3.0     # a replica vouches for its files `settle` s after joining (docs/architecture.md)


def _source(c: Cluster, rows: list[str]) -> None:
    """The job's source file, then the settle time: no state tells when a replica starts vouching."""
    c.dfs(lambda cl: cl.create("signs", ("\n".join(rows) + "\n").encode()))
    time.sleep(SETTLE)


def _running(c: Cluster, name: str) -> dict[str, Any]:
    """The job once every task's instance has started (reported in)."""
    def started() -> dict[str, Any] | None:
        j = c.job(name)
        return j if all(t["started_at"] for t in j["tasks"]) else None

    return wait_until(started, 30, f"every task of {name} to start", step=0.2)


def _tasks_on(c: Cluster, name: str, host: str, via: list[str]) -> list[str]:
    return [t["task"] for t in c.job(name, via)["tasks"] if t["node"] == host]


def test_a_cut_off_minority_is_declared_failed_its_tasks_move_and_it_rejoins(
        make_ns_cluster: Callable[..., Cluster]) -> None:
    c = make_ns_cluster(5)
    rows = sign_rows(LINES)
    _source(c, rows)
    c.submit(COUNT_JOB, "signs", "minority-out", "minority", rate=RATE)
    job = _running(c, "minority")
    leader = c.controller_leader()
    # the victim runs an unfinished task (a counting one, stage 1, if it can) and is not the controller's leader
    candidates = sorted((t["stage"] != 1, t["node"]) for t in job["tasks"] if not t["done"] and t["node"] != leader)
    assert candidates, f"no unfinished task outside the leader {leader}: {job['tasks']}"
    victim = candidates[0][1]
    majority = [h for h in c.names if h != victim]
    epochs = {t["task"]: t["epoch"] for t in job["tasks"] if t["node"] == victim}
    assert c.call(victim, "node.info")["tasks"] >= 1
    before = c.gossip_stats(majority)

    c.net.cut_host(victim)
    t0 = time.monotonic()
    wait_until(lambda: all(v and v.get(victim) == "failed" for v in c.views(majority).values()), 15,
               f"every majority host to hold {victim} failed", step=0.1)
    detected = time.monotonic() - t0
    wait_until(lambda: not _tasks_on(c, "minority", victim, majority), 15, f"{victim}'s tasks to move", step=0.1)
    moved = time.monotonic() - t0
    after = c.gossip_stats(majority)
    assert sum(after[h]["declared_failed"] - before[h]["declared_failed"] for h in majority) >= 1
    table = {t["task"]: t for t in c.job("minority", majority)["tasks"]}
    for task, epoch in epochs.items():          # on another node, at a higher epoch (fencing the old one)
        assert table[task]["node"] in majority and table[task]["epoch"] > epoch, table[task]

    t1 = time.monotonic()
    c.net.heal()
    c.wait_converged(30)
    rejoined = time.monotonic() - t1
    # its old instances are stopped: it runs exactly what the table gives it (nothing, unless placed anew)
    wait_until(lambda: c.call(victim, "node.info")["tasks"] == len(_tasks_on(c, "minority", victim, c.names)), 15,
               f"{victim} to stop its stale task instances")
    stale_stopped = time.monotonic() - t1
    done = c.wait_job("minority", 120)
    assert done["state"] == "finished", done
    lines = check_output(c, COUNT_JOB, rows, "signs", "minority-out")
    print(f"cut {victim}: declared failed by all of the majority {detected:.2f}s after the cut, its tasks "
          f"{sorted(epochs)} moved {moved:.2f}s after it; after the heal it was alive everywhere in "
          f"{rejoined:.2f}s and ran no stale instance {stale_stopped:.2f}s after; output exact ({lines} lines)")


def test_a_job_across_a_cut_link_is_exact_and_nobody_is_declared_failed(
        make_ns_cluster: Callable[..., Cluster]) -> None:
    c = make_ns_cluster(5)
    rows = sign_rows(LINES)
    _source(c, rows)
    c.submit(COUNT_JOB, "signs", "link-out", "link", rate=RATE)
    job = _running(c, "link")
    # the source task that reads the lines (block 0) and a counting task elsewhere: their link carries
    # the job's tuples
    a = next(t["node"] for t in job["tasks"] if t["stage"] == 0 and t["index"] == 0)
    b = next(t["node"] for t in job["tasks"] if t["stage"] == 1 and t["node"] != a)
    before = c.gossip_stats()
    c.net.cut_link(a, b)
    # held well past failure detection (about 1 s): a false failure would show; gossip's indirect
    # probes go around the cut, so nobody may be declared failed
    deadline = time.monotonic() + 8.0
    while time.monotonic() < deadline:
        views = c.views()
        assert all(v and set(v.values()) <= {"alive", "suspect"} for v in views.values()), views
        time.sleep(0.5)
    c.net.heal()
    done = c.wait_job("link", 120)
    assert done["state"] == "finished", done
    lines = check_output(c, COUNT_JOB, rows, "signs", "link-out")
    after = c.gossip_stats()
    delta = {h: {k: after[h][k] - before[h][k] for k in after[h]} for h in after}
    print(f"cut link {a}-{b} for 8 s: gossip {delta}; restarts "
          f"{sum(t['restarts'] for t in done['tasks'])}; output exact ({lines} lines)")
    assert all(d["declared_failed"] == 0 for d in delta.values()), delta


def test_a_cut_off_controller_leader_stops_leading_and_the_majority_elects_another(
        make_ns_cluster: Callable[..., Cluster]) -> None:
    # a request that finds no leader fails after 3 s instead of 10 (only so the refusal is quick to see)
    c = make_ns_cluster(5, config="[control]\nrequest_timeout = 3.0\n")
    old = c.controller_leader()
    assert old is not None
    majority = [h for h in c.names if h != old]
    term = c.call(old, "node.info")["controller"]["term"]
    c.net.cut_host(old, keep_client=True)     # the test process still watches it
    t0 = time.monotonic()
    wait_until(lambda: not c.call(old, "control.leader")["leading"], 10, f"{old} to stop leading")
    stepped_down = time.monotonic() - t0
    new = wait_until(lambda: next(iter(c.leading(majority)), None), 15, "a majority host to lead the controller")
    elected = time.monotonic() - t0
    assert new != old
    # the other voter knows at once; the non-voters learn it when their next forward to the old one fails
    wait_until(lambda: c.controller_leader(majority) == new, 15, f"every majority host to name {new}")
    named = time.monotonic() - t0
    # the old leader serves nothing: it does not name itself, and a request to it finds no leader
    assert c.call(old, "control.leader")["leader"] != old
    with pytest.raises(Exception, match="no controller leader within"):
        c.control("jobs", via=[old], timeout=10)
    assert c.control("jobs", via=majority) == []          # the majority's leader answers
    new_term = c.call(new, "node.info")["controller"]["term"]
    assert new_term > term

    t1 = time.monotonic()
    c.net.heal()
    c.wait_converged(30)
    one = time.monotonic() - t1
    final = c.controller_leader()
    assert final is not None and c.leading() == {final}
    print(f"cut leader {old} (term {term}): it stopped leading {stepped_down:.2f}s after the cut, {new} led in "
          f"term {new_term} {elected:.2f}s after it, named by every majority host {named:.2f}s after it; after the "
          f"heal one leader ({final}) named by all in {one:.2f}s")


def _file_with_replica(c: Cluster, host: str) -> str:
    """A file name whose replicas (the first 3 successors of its hash) have ``host`` second: a
    replica, not the primary (the primary stays on the majority's side)."""
    ring = Ring(c.names)
    return next(f"both-{i}" for i in range(10_000) if ring.replicas(f"both-{i}")[1] == host)


def both_sides(c: Cluster) -> dict[str, Any]:
    """Append from a client inside a cut-off replica's namespace (through its own node) and from one on
    the majority's side, before, during and after the cut; after the heal return what each side got
    acknowledged and what the file holds. Shared with the report run under ``hydfs_view = "gossip"``."""
    leader = c.controller_leader()
    cut = next(h for h in ("h4", "h5", "h3", "h2") if h != leader)
    majority = [h for h in c.names if h != cut]
    name = _file_with_replica(c, cut)
    c.dfs(lambda cl: cl.create(name, b"created\n"))
    time.sleep(SETTLE)
    inside = c.appender(name, "in", inside=cut, duration=120, interval=0.2, timeout=5)
    outside = c.appender(name, "out", at=majority, duration=120, interval=0.2, timeout=5)
    try:
        wait_until(lambda: inside.acked_since(0) >= 3 and outside.acked_since(0) >= 3, 30,
                   "both clients' appends acknowledged before the cut")
        c.net.cut_host(cut)
        t_cut = time.time()
        wait_until(lambda: all(v and v.get(cut) == "failed" for v in c.views(majority).values()), 15,
                   f"the majority to hold {cut} failed")
        wait_until(lambda: outside.acked_since(t_cut) >= 10, 30, "appends acknowledged on the majority's side")
        # long enough for the cut-off node to hold the others failed (a lone accuser waits 6x longer)
        # and, if it could take the file over alone, to acknowledge appends there
        time.sleep(8.0)
        t_heal = time.time()
        c.net.heal()
        c.wait_converged(30)
        wait_until(lambda: inside.acked_since(t_heal) >= 2 and outside.acked_since(t_heal) >= 2, 60,
                   "both clients' appends acknowledged after the heal")
    finally:
        rows_in, rows_out = inside.stop(), outside.stop()
    wait_until(lambda: len(c.dfs(lambda cl: cl.ls(name))["isr"]) == 3, 30, f"{name} to have 3 in-sync replicas")
    c.dfs(lambda cl: cl.merge(name))
    held = collections.Counter(c.read(name).decode().splitlines())
    return {"file": name, "cut": cut, "in": rows_in, "out": rows_out, "held": held, "t_cut": t_cut,
            "t_heal": t_heal}


def lost_and_duplicated(res: dict[str, Any]) -> tuple[dict[str, list[str]], list[str]]:
    """Acknowledged appends not held exactly once, per side; and any line held more than once."""
    held = res["held"]
    lost = {side: [r["p"] for r in res[side] if r["ok"] and held[r["p"]] != 1] for side in ("in", "out")}
    return lost, [p for p, n in held.items() if n > 1]


def summary(res: dict[str, Any]) -> str:
    lost, dup = lost_and_duplicated(res)
    parts = []
    for side in ("in", "out"):
        rows = res[side]
        acked = [r for r in rows if r["ok"]]
        during = [r for r in acked if res["t_cut"] <= r["t"] + r["took"] < res["t_heal"]]   # by when acknowledged
        parts.append(f"{side}: {len(rows)} sent, {len(acked)} acknowledged ({len(during)} during the cut), "
                     f"{len(lost[side])} of them lost or duplicated")
    return f"file {res['file']}, {res['cut']} cut: " + "; ".join(parts) + f"; duplicated lines: {len(dup)}"


def test_hydfs_appends_on_both_sides_of_a_cut_every_acknowledged_one_is_kept_once(
        make_ns_cluster: Callable[..., Cluster]) -> None:
    c = make_ns_cluster(5)
    res = both_sides(c)
    print(summary(res))
    lost, dup = lost_and_duplicated(res)
    sent = {r["p"] for side in ("in", "out") for r in res[side]}
    assert set(res["held"]) <= sent | {"created"}, set(res["held"]) - sent
    assert not dup, f"appends held more than once: {dup[:10]}"
    assert not lost["in"] and not lost["out"], (
        f"acknowledged appends lost: {len(lost['in'])} from the cut-off side (e.g. {lost['in'][:5]}), "
        f"{len(lost['out'])} from the majority's side (e.g. {lost['out'][:5]}); {summary(res)}")

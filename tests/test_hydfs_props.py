"""Property tests over the simulated HyDFS network: a workload, the invariants, and hypothesis on top.

Every run is deterministic (seeded simulator, ``derandomize=True``), so a failure reproduces exactly.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hydfs.ring import Ring
from hydfs.sim import Sim

FILE = "log/f"


@dataclass
class Workload:
    nodes: int = 5
    clients: int = 3
    per_client: int = 4
    drop: float = 0.0
    delay: float = 0.01
    seed: int = 0
    faults: list[tuple[float, str, int]] = field(default_factory=list)  # (time, crash|restart|..., node #)
    skew: float = 0.0


@dataclass
class Outcome:
    sim: Sim
    acked: dict[tuple[str, int], int]   # (client, seq) -> index the append was acknowledged at
    order: dict[str, list[int]]         # client -> its seqs in the order it issued them
    owners: list[str]
    trimmed: set[tuple[str, int]] = field(default_factory=set)  # appends answered ``trimmed``


def node_ids(n: int) -> list[str]:
    return [f"n{i}" for i in range(n)]


class Appenders:
    """Clients that each append their items one at a time, in order, retrying until acknowledged."""

    def __init__(self, sim: Sim, count: int, per_client: int, name: str = FILE) -> None:
        self.sim, self.name = sim, name
        self.clients = [sim.client(f"c{i}") for i in range(count)]
        self.left = {c.client_id: per_client for c in self.clients}
        self.current: dict[str, tuple[int, int]] = {}   # client -> (op id, seq)
        self.acked: dict[tuple[str, int], int] = {}
        self.order: dict[str, list[int]] = {c.client_id: [] for c in self.clients}
        self.errors: list[Any] = []
        self.trimmed: set[tuple[str, int]] = set()  # landed, then a trim dropped them before we heard

    def step(self) -> bool:
        """Advance every client; True once all items are acknowledged."""
        for c in self.clients:
            cur = self.current.get(c.client_id)
            if cur is not None:
                res = c.results.pop(cur[0], None)
                if res is None:
                    continue
                if not res.ok and res.err == "io_error":  # a full disk: retry under the same key
                    key = (c.client_id, cur[1])
                    op = c.append(self.name, f"{key[0]}:{key[1]};".encode(), self.sim.now, key=key)
                    self.current[c.client_id] = (op, cur[1])
                    continue
                if not res.ok and res.err == "trimmed":
                    self.trimmed.add((c.client_id, cur[1]))
                elif not res.ok:
                    self.errors.append((c.client_id, cur[1], res.err))
                else:
                    assert res.index is not None
                    self.acked[(c.client_id, cur[1])] = res.index
                del self.current[c.client_id]
            if self.left[c.client_id] > 0:
                self.left[c.client_id] -= 1
                op = c.append(self.name, f"{c.client_id}:{c.seq + 1};".encode(), self.sim.now)
                self.current[c.client_id] = (op, c.seq)
                self.order[c.client_id].append(c.seq)
        return not self.current and not any(self.left.values())


class Monitor:
    """Checked after every event: all nodes' committed prefixes are prefixes of one history (by index:
    a trimmed copy holds a suffix of its committed prefix)."""

    def __init__(self, sim: Sim, name: str = FILE) -> None:
        self.sim, self.name = sim, name
        self.history: dict[int, list[Any]] = {}

    def __call__(self) -> None:
        for n, node in self.sim.nodes.items():
            core = node.core
            if core is None or self.name not in core.vols:
                continue
            commit = core.vols[self.name].commit
            if commit == 0:
                continue
            first = node.storage.first(self.name)
            log = [e.to_wire() for e in node.storage.read(self.name, 1, commit + 1)]
            assert len(log) == max(0, commit - first + 1), f"{n} commit {commit} beyond its log from {first}"
            for e in log:
                seen = self.history.setdefault(e[1], e)
                assert seen == e, f"{n} committed a different history at {e[1]}"

    def ok(self) -> bool:
        self()
        return True


def run(w: Workload, settle: float = 8.0) -> Outcome:
    ids = node_ids(w.nodes)
    sim = Sim(ids, seed=w.seed, drop=w.drop, delay=(0.001, w.delay), skew=w.skew)
    sim.run_for(0.6)
    admin = sim.client("admin")
    res = sim.wait("admin", admin.create(FILE, b"", sim.now), timeout=30)
    assert res.ok, res
    apps = Appenders(sim, w.clients, w.per_client)
    monitor = Monitor(sim)

    def step() -> bool:
        return monitor.ok() and apps.step()

    step()
    t0 = sim.now
    powered: set[str] = set()  # lost part of their log in a machine crash: a failure for the whole run
    full: set[str] = set()     # their disk is full: no log write succeeds
    for t, what, k in sorted(w.faults):
        sim.run_until(step, t0 + t)
        node = ids[k % len(ids)]
        out = {n for n in ids if not sim.nodes[n].up} | (set(ids) - sim.oracle()) | powered | full
        if what == "crash" and (len(out) < 2 or node in out):
            sim.crash(node)
        elif what == "power" and len(out) < 2 and node not in out and _held_elsewhere(
                sim, apps.acked, powered | {node}):
            sim.power_off(node)
            powered.add(node)
        elif what == "restart":
            sim.restart(node)
        elif what == "isolate" and len(out | {node}) <= 2:
            cut = {n for n in ids if sim.groups and n not in sim.groups[0]}
            sim.partition(*[{n} for n in sorted(cut | {node})])
        elif what == "heal":
            sim.heal()
        elif what == "full" and (len(out) < 2 or node in out):
            node = Ring(ids).replicas(FILE)[k % 3]  # an owner's disk: a full disk elsewhere changes nothing
            sim.nodes[node].storage.append = _disk_full  # type: ignore[method-assign]
            full.add(node)
        elif what == "trim" and apps.acked:
            # a trim below an index some client has seen acknowledged, as the task layer does
            below = 1 + max(apps.acked.values()) * (k + 1) // 6
            admin.trim(FILE, below, sim.now)
        elif what == "space" and full:
            node = sorted(full)[k % len(full)]
            del sim.nodes[node].storage.append
            full.discard(node)
    for node in full:
        del sim.nodes[node].storage.append
    sim.heal()
    for n in ids:
        sim.restart(n)
    done = sim.run_until(step, sim.now + 120)
    assert done, f"appends did not finish after every node came back: {apps.current} {describe(sim)}"
    assert not apps.errors, apps.errors
    sim.run_for(2.0)
    res = sim.wait("admin", admin.merge(FILE, sim.now), timeout=60)
    assert res.ok, res
    sim.run_for(settle)
    monitor()
    for key, index in apps.acked.items():
        if index >= first_of(sim):
            assert monitor.history[index][2:4] == list(key), f"acked {key}@{index} not in the committed history"
    return Outcome(sim, apps.acked, apps.order, Ring(ids).replicas(FILE), apps.trimmed)


def first_of(sim: Sim) -> int:
    """The file's first index on its owners (the highest: a trim reaches a replica a little later)."""
    return max(sim.nodes[n].storage.first(FILE) for n in Ring(list(sim.nodes)).replicas(FILE))


def _disk_full(name: str, entries: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def _held_elsewhere(sim: Sim, acked: dict[tuple[str, int], int], lost: set[str]) -> bool:
    """Every acknowledged append is in some log outside ``lost``: a machine crash of the victim is then
    within two failures even for appends a just-restarted node has not caught up on yet."""
    logs = [(sim.nodes[n].storage.first(FILE), sim.log(n, FILE)) for n in sim.nodes if n not in lost]
    return all(any(first > index or (first + len(log) > index and log[index - first][2:4] == list(key))
                   for first, log in logs) for key, index in acked.items())


def check(o: Outcome) -> None:
    """Every invariant the file must keep after a run (see tests/test_hydfs_props.py)."""
    sim = o.sim
    # copies on nodes that no longer own the file go once the owners have it (offers may be lost)
    sim.run_until(lambda: sorted(sim.holders(FILE)) == sorted(o.owners), sim.now + 30)
    logs = {n: sim.log(n, FILE) for n in o.owners}
    first = logs[o.owners[0]]
    for n, log in logs.items():
        assert log == first, f"replica {n} differs from {o.owners[0]}: {describe(sim)}"
    assert sorted(sim.holders(FILE)) == sorted(o.owners), (sim.holders(FILE), o.owners)
    starts = {sim.nodes[n].storage.first(FILE) for n in o.owners}
    assert len(starts) == 1, f"owners start at different indexes: {describe(sim)}"
    start = starts.pop()
    assert not first or first[0][1] == start
    seen: dict[tuple[str, int], int] = {}
    for _term, index, cid, seq, *_rest in first:
        assert (cid, seq) not in seen, f"({cid}, {seq}) appears twice: {seen[(cid, seq)]} and {index}"
        seen[(cid, seq)] = index
    for key, index in o.acked.items():
        if index >= start:
            assert seen.get(key) == index, f"acknowledged append {key}@{index} is at {seen.get(key)}"
        else:
            assert key not in seen, f"acknowledged append {key}@{index} is below the start {start} and still there"
    for key in o.trimmed:
        assert key not in seen, f"{key} was answered 'trimmed' but is in the retained log"
    for cid, seqs in o.order.items():
        positions = [seen[(cid, s)] for s in seqs if (cid, s) in seen]
        assert positions == sorted(positions), f"{cid}'s appends out of order: {positions}"
    reader = sim.client("reader")
    res = sim.wait("reader", reader.get(FILE, sim.now), timeout=30)
    assert res.ok, res
    assert [(i, d) for i, d in res.entries] == [(e[1], e[4]) for e in first[:len(res.entries)]]
    assert (res.entries[-1][0] if res.entries else 0) >= max(o.acked.values(), default=0)


def describe(sim: Sim) -> str:
    out = []
    for n, node in sorted(sim.nodes.items()):
        meta = node.storage.meta(FILE)
        leader = node.core.primaries.get(FILE) if node.core else None
        lead = leader.describe() if leader else None
        out.append(f"{n} up={node.up} last={node.storage.last(FILE)} meta={meta} lead={lead}")
    return "\n".join(out)


# ----------------------------------------------------------------- the properties

PROPS = settings(max_examples=100, derandomize=True, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

def workloads(kinds: list[str], until: float = 8.0, drops: tuple[float, ...] = (0.0, 0.05, 0.2),
              delays: tuple[float, ...] = (0.005, 0.05, 0.3),
              skews: tuple[float, ...] = (0.0, 0.1, 0.5)) -> st.SearchStrategy[Workload]:
    """Up to 5 clients and 8 faults of ``kinds`` in the first ``until`` seconds, on 3-6 nodes."""
    faults = st.lists(st.tuples(st.floats(0, until, allow_nan=False), st.sampled_from(kinds), st.integers(0, 5)),
                      max_size=8)
    return st.builds(Workload, nodes=st.integers(3, 6), clients=st.integers(1, 5), per_client=st.integers(1, 12),
                     drop=st.sampled_from(drops), delay=st.sampled_from(delays), seed=st.integers(0, 2**16),
                     faults=faults, skew=st.sampled_from(skews))


def check_seeds(w: Workload, n: int) -> None:
    """The workload under ``n`` network seeds (runs are ~10 ms each)."""
    for k in range(n):
        check(run(replace(w, seed=w.seed * n + k)))


@PROPS
@given(w=workloads(["crash", "crash", "restart", "restart", "isolate", "heal"], drops=(0.0, 0.05, 0.2, 0.3),
                   delays=(0.005, 0.05, 0.3, 0.8), skews=(0.0, 0.1, 0.5, 1.5)))
def test_any_interleaving_with_two_failures(w: Workload) -> None:
    """Up to 5 clients, up to 2 nodes down (crashed, or cut off) at once, drops, delays and
    disagreeing membership views: after everything is back and merged, every owner holds the same
    bytes, every acknowledged append is there exactly once at the index it was acknowledged at, each
    client's appends are in its order, no node ever committed a different history, and no copy is
    left on a non-owner."""
    check_seeds(w, 3)


@PROPS
@given(w=workloads(["power", "power", "crash", "restart", "restart", "isolate", "heal"]))
def test_machine_crashes_that_lose_unflushed_tails(w: Workload) -> None:
    """``fsync = "interval"``: a machine crash cuts a node's logs back to some point since its last
    flush. Such a node counts as failed for the rest of the run (it lost acknowledged entries); with
    it, at most one more node down at a time. The same invariants as above hold."""
    check_seeds(w, 2)


@PROPS
@given(w=workloads(["full", "full", "space", "crash", "restart", "isolate", "heal"], until=1.5))  # while appends run
def test_full_disks_come_and_go(w: Workload) -> None:
    """Disks fill (no log write succeeds) and get space again, alongside crashes and partitions, at
    most 2 nodes out at once counting full ones. A full replica leaves the in-sync set and rejoins
    later; appends refused by a full primary are retried under their key. The same invariants hold."""
    check_seeds(w, 2)


@PROPS
@given(nodes=st.integers(3, 5), victims=st.sampled_from([(0, 1), (0, 2), (1, 2)]), slow=st.integers(0, 2),
       before=st.integers(1, 5), after=st.integers(1, 3), drop=st.sampled_from([0.0, 0.1]),
       skew=st.sampled_from([0.0, 0.5]), seed=st.integers(0, 2**16))
def test_nothing_acknowledged_is_lost_with_two_of_three_owners_down(
        nodes: int, victims: tuple[int, int], slow: int, before: int, after: int, drop: float, skew: float,
        seed: int) -> None:
    """One owner lags (slow links) while appends are acknowledged; then two owners die at once -
    including the primary or not, the laggard surviving or not. The file stays appendable and a read
    returns every acknowledged append at its index. (A fixed 2-of-3 write quorum fails this.)"""
    ids = node_ids(nodes)
    sim = Sim(ids, seed=seed, drop=drop, delay=(0.001, 0.02), skew=skew)
    sim.run_for(sim.config.settle + skew + 0.5)  # a node vouches for nothing before it settles
    admin = sim.client("admin")
    assert sim.wait("admin", admin.create(FILE, b"", sim.now)).ok
    owners = Ring(ids).replicas(FILE)
    dead = [owners[k] for k in victims]
    if owners[slow] not in dead:
        sim.slow[owners[slow]] = 0.5
    monitor = Monitor(sim)
    first = Appenders(sim, 3, before)
    assert sim.run_until(lambda: monitor.ok() and first.step(), sim.now + 60)
    for n in dead:
        sim.crash(n)
    sim.slow.clear()
    second = Appenders(sim, 2, after)
    for c in second.clients:  # fresh client ids, so both rounds' keys are distinct
        c.client_id = "late-" + c.client_id
    second.left = {c.client_id: after for c in second.clients}
    second.order = {c.client_id: [] for c in second.clients}
    assert sim.run_until(lambda: monitor.ok() and second.step(), sim.now + 60), "not appendable with 2 owners down"
    res = sim.wait("admin", admin.get(FILE, sim.now), timeout=30)
    assert res.ok
    for (cid, seq), index in {**first.acked, **second.acked}.items():
        assert res.entries[index - 1] == (index, f"{cid}:{seq};".encode()), f"lost {cid}:{seq}@{index}"
    for n in dead:
        sim.restart(n)
    sim.run_for(sim.config.settle + 4.0)
    monitor()
    assert all(sim.log(n, FILE) == sim.log(owners[0], FILE) for n in owners)

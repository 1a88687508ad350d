"""How fast a job's output moves again after a worker node is SIGKILLed (issue 10).

    python bench/recovery.py [--quick] [--kills N] [--rate R] [--lines N] [--no-baseline] [--gap S]
                             [--commit REV] [--seed N] [--out DIR]

Goal: output moves again within 3 s of a worker node's SIGKILL, p99 over 10 kills (goal 2 s), and
the job's total slowdown. On a local 5-node cluster (temporary directory, `rainstorm cluster up`):

- the job: keep the status-500 lines of a seeded access log (``ip,timestamp,method,path,status,bytes``,
  shared with bench/streaming.py), running count per path, ``--tasks 3``, the source paced with
  ``--rate`` lines/s per source task so the job runs ~35 s;
- baseline: the job without kills; job time = from `rainstorm submit` to `rainstorm wait` returning;
- kills: the same job (new names, as many runs as needed), a worker (never the controller's leader) that
  hosts an unfinished task is SIGKILLed by `rainstorm cluster kill`, restarted once the job moved on,
  and the next kill comes when all nodes are alive again plus ``--gap`` (2 s);
- per kill: detected = node-1's `members` shows it failed; moved = the leader's ``task moved`` log
  line; started = the replacement instance's ``started_at``; recovered = its ``first_commit_at``
  (output moving again), each the last over the tasks the node held, in seconds after the kill;
- every run's output must hold, per path, the counts 1..n exactly once (n known from the data);
- gossip: the nodes' SWIM counters (``node.info`` -> gossip) around every kill; a suspicion outside
  a kill's window, or one a live node refuted, or a ``member fail`` log line of a live node, is false.

Polling (status, members, counters, every 0.2 s) is done in-process with the same RPCs the CLI
sends: a `rainstorm` process per poll costs ~0.5 s of CPU on a 2-core machine the nodes keep busy.
Results: docs/bench/recovery/results.{json,md} (bench/out/recovery/quick with --quick).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine, median, pct  # noqa: E402
from bench.streaming import JOBS, BenchError, Cluster, DataSet, child_env, console, generate, rainstorm_bin, say  # noqa: E402
from net.rpc import RpcClient  # noqa: E402
from net.wire import derive_key  # noqa: E402

JOB_FILE = JOBS / "rainstorm_count.py"   # FilteredTransform(is_500, path), AggregateByKey(path, "count")
LEADER = "node-1"
NODES, TASKS = 5, 3
FULL_LINES, QUICK_LINES = 400_000, 120_000
FULL_RATE, QUICK_RATE = 4000.0, 2000.0
POLL = 0.2                 # seconds between status / members polls while a kill recovers
RECOVERY_TIMEOUT = 60.0    # a kill whose tasks have not committed again by then is reported as such
GAP = 2.0                  # after every node is alive again, before the next kill (--gap)
BAR_S, GOAL_S = 3.0, 2.0
GOSSIP_KEYS = ("suspected", "declared_failed", "refuted")
Counters = dict[str, dict[str, int] | None]


# -- talking to the cluster -------------------------------------------------------------------------
class Probe:
    """One event loop and one RPC connection pool for every poll (see the module docstring: why)."""

    def __init__(self, cluster_dir: Path) -> None:
        self.dir = cluster_dir
        data = json.loads((cluster_dir / "cluster.json").read_text())
        self.addr = {n["id"]: n["address"] for n in data["nodes"]}
        self.runner = asyncio.Runner()
        self.client = RpcClient(derive_key(data["secret"]))

    def call(self, node: str, method: str, args: dict[str, Any] | None = None, timeout: float = 2.0) -> Any:
        """The answer, or None: a node that is down (we killed it) is an expected answer here."""
        try:
            return self.runner.run(self.client.call(self.addr[node], method, args, timeout=timeout))
        except Exception:
            return None

    def job(self, name: str) -> dict[str, Any] | None:
        """What `rainstorm status NAME --json` prints (the controller's ``control.jobs`` row, latest run)."""
        for j in [j for j in self.call(LEADER, "control.jobs") or [] if j.get("latest")]:
            if j["name"] == name:
                return dict(j)
        return None

    def members(self) -> dict[str, str] | None:
        """What `rainstorm members --json` shows: node-1's view, id -> state."""
        rows = self.call(LEADER, "node.members")
        return None if rows is None else {r["id"]: r["state"] for r in rows}

    def counters(self) -> Counters:
        """Each node's SWIM counters (None: it did not answer)."""
        out: Counters = {}
        for node in self.addr:
            info = self.call(node, "node.info")
            out[node] = None if info is None else {k: int(info.get("gossip", {}).get(k, 0)) for k in GOSSIP_KEYS}
        return out

    def pid(self, node: str) -> int | None:
        """The node's current process id (cluster.json is rewritten by every restart)."""
        data = json.loads((self.dir / "cluster.json").read_text())
        return next((n.get("pid") for n in data["nodes"] if n["id"] == node), None)

    def close(self) -> None:
        self.runner.run(self.client.close())
        self.runner.close()


def pid_alive(pid: int | None) -> bool:
    """Running and not a zombie (the nodes are not our children: init reaps them, or not)."""
    if not pid:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


# -- the records ------------------------------------------------------------------------------------
@dataclass
class Kill:
    run: str
    node: str
    at: float                                  # wall clock when the node's process was gone
    load1: float                               # the machine's 1-minute load average then (it is shared)
    tasks: dict[str, int]                      # the job's unfinished tasks on the node -> their epoch then
    cli_s: float = 0.0                         # how long `rainstorm cluster kill` took (interpreter start)
    detect_s: float | None = None              # node-1's members view shows it failed
    leader_fail_s: float | None = None         # node-1's "member fail" log line
    moved_s: float | None = None               # the leader's last "task moved" line for these tasks
    started_s: float | None = None             # the last replacement instance's started_at
    recovery_s: float | None = None            # the last replacement instance's first_commit_at
    to: dict[str, str] = field(default_factory=dict)
    restarted_at: float | None = None          # back in node-1's view, plus the gap before the next kill
    gossip: dict[str, dict[str, Any]] = field(default_factory=dict)   # "recovery" / "restart": window_gossip
    note: str = ""


@dataclass
class JobRun:
    name: str
    kills: list[Kill] = field(default_factory=list)
    void: list[Kill] = field(default_factory=list)   # killed after its tasks finished: not counted
    seconds: float | None = None
    start: float = 0.0                         # wall clock of the submit
    end: float = 0.0
    gossip: dict[str, int] = field(default_factory=lambda: dict.fromkeys(GOSSIP_KEYS, 0))
    false_suspicions: int = 0                  # outside kill windows, or refuted by a live node in one
    false_fails: list[str] = field(default_factory=list)   # "member fail" lines about a live node
    mismatch: str | None = None
    order_note: str | None = None
    error: str | None = None
    wait_failures: list[str] = field(default_factory=list)


# -- gossip accounting ------------------------------------------------------------------------------
def delta(before: Counters, after: Counters, restarted: str | None = None) -> dict[str, dict[str, int]]:
    """Per node, counters gained between two snapshots; a restarted process counts from zero."""
    out: dict[str, dict[str, int]] = {}
    for node, now in after.items():
        if now is None:
            continue
        old = before.get(node) if node != restarted else None
        d = {k: now[k] - (old or {}).get(k, 0) for k in GOSSIP_KEYS}
        out[node] = now if any(v < 0 for v in d.values()) else d   # restarted without our knowing
    return out


def add(total: dict[str, int], per_node: dict[str, dict[str, int]]) -> None:
    for d in per_node.values():
        for k in GOSSIP_KEYS:
            total[k] += d[k]


def window_gossip(per_node: dict[str, dict[str, int]], victim: str) -> dict[str, Any]:
    """A part of a kill window: suspicions of the victim are expected, of live nodes not (they refute
    them; the victim's own refutations after its restart are its rejoin, not a false suspicion)."""
    by = {n: d["refuted"] for n, d in sorted(per_node.items()) if n != victim and d["refuted"]}
    return {"suspected": sum(d["suspected"] for d in per_node.values()),
            "declared_failed": sum(d["declared_failed"] for d in per_node.values()),
            "false": sum(by.values()), "refuted_by": by,
            "rejoin_refuted": per_node.get(victim, {}).get("refuted", 0)}


# -- one kill ---------------------------------------------------------------------------------------
def pick(probe: Probe, name: str, rng: random.Random, last: str | None) -> tuple[str, dict[str, int]] | None:
    """A worker with unfinished tasks of the job, not the one killed last when there is a choice.
    None once a source task is done: the job is about to end, and a kill then measures little."""
    j = probe.job(name)
    if j is None or j["state"] != "running" or any(t["stage"] == 0 and t["done"] for t in j["tasks"]):
        return None
    hosts: dict[str, dict[str, int]] = defaultdict(dict)
    ctl = (probe.call(LEADER, "control.leader") or {}).get("leader")   # the controller's leader: not a worker kill
    for t in j["tasks"]:
        if not t["done"] and t["node"] not in (LEADER, ctl):
            hosts[t["node"]][t["task"]] = t["epoch"]
    names = sorted(hosts)
    if len(names) > 1 and last in names:
        names.remove(last)
    if not names:
        return None
    node = rng.choice(names)
    return node, hosts[node]


def sigkill(cluster: Cluster, probe: Probe, node: str) -> tuple[float, float]:
    """`rainstorm cluster kill NODE`; the kill time is when the pid vanished (watched every 2 ms),
    not when the command returned. Returns (kill time, command seconds)."""
    pid = probe.pid(node)
    t0 = time.time()
    proc = subprocess.Popen([*rainstorm_bin(), "cluster", "kill", node, "--dir", str(cluster.dir)],
                            cwd=cluster.dir, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    gone: float | None = None
    while proc.poll() is None:
        if pid and gone is None and not pid_alive(pid):
            gone = time.time()
        time.sleep(0.002)
    done = time.time()
    _out, err = proc.communicate()
    if proc.returncode != 0:
        raise BenchError(f"`rainstorm cluster kill {node}` failed: {err.strip()[-200:]}")
    return (gone or done), done - t0


def watch(probe: Probe, name: str, k: Kill) -> None:
    """Poll until node-1 sees the node failed and every task it held committed at a new epoch."""
    pending = dict(k.tasks)
    first: dict[str, float] = {}
    started: dict[str, float] = {}
    deadline = time.time() + RECOVERY_TIMEOUT
    while time.time() < deadline and (pending or k.detect_s is None):
        now = time.time()
        if k.detect_s is None and (probe.members() or {}).get(k.node) == "failed":
            k.detect_s = now - k.at
        j = probe.job(name)
        for t in (j or {}).get("tasks", []):
            old = pending.get(t["task"])
            if old is None:
                continue
            if t["epoch"] == old and t["done"]:      # it had finished just before the kill: not moved
                del pending[t["task"]]
                k.tasks.pop(t["task"])
            elif t["epoch"] > old and t["reported_epoch"] == t["epoch"] and t["first_commit_at"]:
                first[t["task"]], started[t["task"]] = t["first_commit_at"], t["started_at"]
                k.to[t["task"]] = t["node"]
                del pending[t["task"]]
        if j is not None and j["state"] != "running":
            break
        time.sleep(POLL)
    if pending:
        k.note = f"not committed again within {RECOVERY_TIMEOUT:g} s: {', '.join(sorted(pending))}"
    elif first:
        k.recovery_s = max(first.values()) - k.at
        k.started_s = max(started.values()) - k.at
    if k.detect_s is None:
        k.note = (k.note + "; " if k.note else "") + "node-1 never showed it failed"


def restart(cluster: Cluster, probe: Probe, node: str, gap: float) -> float:
    """`rainstorm cluster restart NODE`, then every node alive in node-1's view, then ``gap`` seconds."""
    cluster.cli("cluster", "restart", node, timeout=90)
    deadline = time.time() + 60
    while time.time() < deadline:
        view = probe.members() or {}
        if len(view) == NODES and all(s == "alive" for s in view.values()):
            break
        time.sleep(0.2)
    else:
        raise BenchError(f"{node} restarted but node-1 does not see every node alive: {probe.members()}")
    time.sleep(gap)
    return time.time()


# -- one job run ------------------------------------------------------------------------------------
def submit(cluster: Cluster, name: str, rate: float) -> None:
    cluster.cli("submit", str(JOB_FILE), "--src", "access", "--dest", name, "--tasks", str(TASKS),
                "--name", name, "--rate", f"{rate:g}", timeout=120)


def warm_up(probe: Probe, name: str, submitted: float) -> bool:
    """Kill only once every task's instance has committed and 3 s passed: a kill, not a start, is timed."""
    deadline = time.time() + 60
    while time.time() < deadline:
        j = probe.job(name)
        if j is not None and j["state"] != "running":
            return False
        if j and time.time() - submitted >= 3 and all(
                t["done"] or (t["reported_epoch"] == t["epoch"] and t["first_commit_at"]) for t in j["tasks"]):
            return True
        time.sleep(0.2)
    return False


def kill_loop(cluster: Cluster, probe: Probe, run: JobRun, wanted: int, rng: random.Random,
              prev: Counters, gap: float) -> Counters:
    """Up to ``wanted`` kills in this run; returns the last counter snapshot (for the gossip totals)."""
    last: str | None = None
    while len(run.kills) < wanted:
        choice = pick(probe, run.name, rng, last)
        if choice is None:
            break
        node, tasks = choice
        before = probe.counters()
        outside = delta(prev, before)
        add(run.gossip, outside)
        run.false_suspicions += sum(d["suspected"] for d in outside.values())
        at, cli_s = sigkill(cluster, probe, node)
        k = Kill(run.name, node, at, os.getloadavg()[0], tasks, cli_s)
        run.kills.append(k)
        say(f"  killed {node} (tasks {', '.join(sorted(tasks))}); watching...")
        watch(probe, run.name, k)
        recovered = probe.counters()    # splits the window: suspicions while recovering / while restarting
        k.restarted_at = restart(cluster, probe, node, gap)
        prev = probe.counters()
        for part, d in (("recovery", delta(before, recovered)), ("restart", delta(recovered, prev, restarted=node))):
            add(run.gossip, d)
            k.gossip[part] = window_gossip(d, node)
            run.false_suspicions += k.gossip[part]["false"]
        if not k.tasks:   # they finished between the pick and the kill (the job's end): nothing to time
            run.kills.remove(k)
            run.void.append(k)
            say(f"  {node}: void, its tasks had finished before the kill")
            continue
        say(f"  {node}: detected {fmt(k.detect_s)} s, recovered {fmt(k.recovery_s)} s"
            + (f" ({k.note})" if k.note else ""))
        last = node
    return prev


def run_job(cluster: Cluster, probe: Probe, name: str, rate: float, kills: int, rng: random.Random,
            timeout: float, gap: float = GAP) -> JobRun:
    """Submit, kill up to ``kills`` times, wait; the job time and the gossip counters of the run."""
    run = JobRun(name)
    prev = probe.counters()
    run.start = time.time()
    t0 = time.perf_counter()
    try:
        submit(cluster, name, rate)
        if kills and warm_up(probe, name, run.start):
            prev = kill_loop(cluster, probe, run, kills, rng, prev, gap)
        run.wait_failures = cluster.wait(name, t0 + timeout)
        run.seconds = time.perf_counter() - t0
    except BenchError as exc:
        run.error = str(exc)
        say(f"[red]{name}: {exc}[/red]")
    run.end = time.time()
    end = probe.counters()
    add(run.gossip, tail := delta(prev, end))
    run.false_suspicions += sum(d["suspected"] for d in tail.values())
    return run


# -- checking the output ----------------------------------------------------------------------------
def check_exact(path: Path, want: dict[str, int], complete: bool = True) -> tuple[str | None, str | None]:
    """(mismatch, order note): every path's counts must be exactly 1..n, each once; of a job that
    did not finish, 1..m for some m <= n (a duplicate or a gap is wrong either way)."""
    seen: dict[str, list[int]] = defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                key, n = json.loads(line)
                seen[key].append(int(n))
    bad, unordered = [], 0
    for key in sorted(want.keys() | seen.keys()):
        got, n = seen.get(key, []), want.get(key, 0)
        n = n if complete else min(n, len(got))
        if sorted(got) != list(range(1, n + 1)):
            dup = len(got) - len(set(got))
            missing = len(set(range(1, n + 1)) - set(got))
            bad.append(f"{key}: {len(got)} counts, want 1..{n} ({dup} duplicated, {missing} missing)")
        elif got != sorted(got):
            unordered += 1
    mismatch = f"{len(bad)} of {len(want)} paths wrong: " + "; ".join(bad[:3]) if bad else None
    order = f"{unordered} paths' counts are complete but out of order in the file" if unordered else None
    return mismatch, order


def verify(cluster: Cluster, run: JobRun, data: DataSet, work: Path) -> None:
    """The run's output against the counts known from the data (what there is of it, if it failed)."""
    try:
        out = cluster.get(run.name, work / f"{run.name}.jsonl")
    except BenchError as exc:
        run.error = f"{run.error}; output not read: {exc}" if run.error else str(exc)
        return
    run.mismatch, run.order_note = check_exact(out, data.counts, complete=run.error is None)
    if run.mismatch:
        say(f"[bold red on white] COUNTS WRONG [/] {run.name}: {run.mismatch}")


# -- the node logs ----------------------------------------------------------------------------------
LOGFMT = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def log_lines(cluster_dir: Path) -> Iterator[dict[str, Any]]:
    """Every logfmt line of every node log, with ``t`` the wall-clock seconds of its ``ts``."""
    for log in sorted(cluster_dir.glob("node-*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if not line.startswith("ts="):
                continue
            rec: dict[str, Any] = {k: v[1:-1] if v.startswith('"') else v for k, v in LOGFMT.findall(line)}
            try:
                rec["t"] = datetime.strptime(rec["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
            except (KeyError, ValueError):
                continue
            yield rec


def read_logs(cluster_dir: Path, runs: list[JobRun]) -> None:
    """From the logs: the leader's detection and move times per kill, and fail lines of live nodes."""
    lines = list(log_lines(cluster_dir))
    # node-1's failure verdicts, and the moves the controller's leader (wherever it was) logged
    leader = [x for x in lines if x.get("node") == LEADER or x.get("msg") == "task moved"]
    all_fails = [x for x in lines if x.get("msg") == "member fail"]
    for k in (k for r in runs for k in r.kills):
        explain(k, leader)
    kills = [k for r in runs for k in r.kills + r.void]   # a void kill's node was down all the same
    for x in all_fails:
        legit = any(k.node == x.get("peer") and k.at - 0.01 <= x["t"] <= (k.restarted_at or x["t"]) for k in kills)
        run = next((r for r in runs if r.start <= x["t"] <= r.end), None)
        if not legit and run is not None:
            run.false_fails.append(f"{x['node']} held {x.get('peer')} failed at {x['ts']}")


def explain(k: Kill, leader: list[dict[str, Any]]) -> None:
    """The leader's view of one kill: when it logged the node failed, when it moved the node's tasks
    (their first move, to epoch + 1), and whether a live node was held failed before they recovered
    (its tasks, maybe the replacements, move again: a slow recovery then is a false failure's)."""
    after = [x for x in leader if x["t"] >= k.at - 0.01]
    fails = [x["t"] for x in after if x.get("msg") == "member fail" and x.get("peer") == k.node]
    k.leader_fail_s = min(fails) - k.at if fails else None
    moved = [x["t"] for x in after if x.get("msg") == "task moved" and x.get("task") in k.tasks
             and x.get("from") == k.node and x.get("epoch") == str(k.tasks[x["task"]] + 1)]
    k.moved_s = max(moved) - k.at if moved else None
    end = k.at + (k.recovery_s if k.recovery_s is not None else RECOVERY_TIMEOUT)
    live = sorted({x["peer"] for x in after if x.get("msg") == "member fail" and x.get("peer") != k.node
                   and x["t"] <= end})
    again = sorted({x["from"] for x in after if x.get("msg") == "task moved" and x.get("task") in k.tasks
                    and x.get("from") != k.node and x["t"] <= end})
    if live:
        text = f"live {', '.join(live)} held failed meanwhile" + (
            f"; replacements moved again off {', '.join(again)}" if again else "")
        k.note = f"{k.note}; {text}" if k.note else text


# -- report -----------------------------------------------------------------------------------------
def fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def r3(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def kill_rows(runs: list[JobRun]) -> list[dict[str, Any]]:
    rows = []
    for i, k in enumerate((k for r in runs for k in r.kills), 1):
        rows.append({"n": i, "run": k.run, "node": k.node, "tasks": sorted(k.tasks), "to": k.to,
                     "detected_s": r3(k.detect_s), "leader_fail_s": r3(k.leader_fail_s), "moved_s": r3(k.moved_s),
                     "started_s": r3(k.started_s), "recovered_s": r3(k.recovery_s), "kill_cli_s": r3(k.cli_s),
                     "load1": round(k.load1, 1),
                     "gossip": k.gossip, "note": k.note})
    return rows


def summary(runs: list[JobRun], base: JobRun | None) -> dict[str, Any]:
    kills = [k for r in runs for k in r.kills]
    rec = [k.recovery_s for k in kills if k.recovery_s is not None]
    det = [k.detect_s for k in kills if k.detect_s is not None]
    base_s = base.seconds if base else None
    return {
        "kills": len(kills), "recovered": len(rec), "void": sum(len(r.void) for r in runs),
        "recovery_p50_s": median(rec) if rec else None, "recovery_p99_s": pct(rec, 99) if rec else None,
        "recovery_max_s": max(rec) if rec else None,
        "detection_p50_s": median(det) if det else None, "detection_max_s": max(det) if det else None,
        "baseline_s": base_s,
        "runs": [{"name": r.name, "kills": len(r.kills), "seconds": r.seconds,
                  "slowdown": round(r.seconds / base_s, 2) if r.seconds and base_s else None} for r in runs],
        "meets_bar": bool(rec) and len(rec) == len(kills) and pct(rec, 99) <= BAR_S,
        "meets_goal": bool(rec) and len(rec) == len(kills) and pct(rec, 99) <= GOAL_S,
    }


COLUMNS = ["#", "run", "node", "tasks", "load", "detected", "fail log", "moved", "started", "recovered", "to",
           "suspicions (false)", "note"]
NUMERIC = {"#", "tasks", "load", "detected", "fail log", "moved", "started", "recovered"}


def cells(r: dict[str, Any]) -> list[str]:
    """One kill as table cells (the console and the markdown table show the same)."""
    g = r["gossip"]
    rec, rst = g.get("recovery", {}), g.get("restart", {})
    susp = (f"{rec.get('suspected', 0)} + {rst.get('suspected', 0)} "
            f"({rec.get('false', 0)} + {rst.get('false', 0)})")
    times = [fmt(r[c]) for c in ("detected_s", "leader_fail_s", "moved_s", "started_s", "recovered_s")]
    return [str(r["n"]), r["run"], r["node"], str(len(r["tasks"])), f"{r['load1']:.1f}", *times,
            ", ".join(sorted(set(r["to"].values()))), susp, r["note"]]


def show(rows: list[dict[str, Any]], lines: list[tuple[str, str]]) -> None:
    t = Table(title="recovery after SIGKILL of a worker node (seconds after the kill)")
    for col in COLUMNS:
        t.add_column(col, justify="right" if col in NUMERIC else "left")
    for r in rows:
        t.add_row(*cells(r), style="bold red" if r["recovered_s"] is None or r["recovered_s"] > BAR_S else None)
    console.print(t)
    t2 = Table(title="summary")
    t2.add_column("measure")
    t2.add_column("value", justify="right")
    for label, value in lines:
        t2.add_row(label, value)
    console.print(t2)


def gossip_text(r: JobRun) -> str:
    g = r.gossip
    text = f"suspected {g['suspected']}, declared failed {g['declared_failed']}, refuted {g['refuted']}"
    false = r.false_suspicions + len(r.false_fails)
    return text + (f"; FALSE: {r.false_suspicions} suspicions, {len(r.false_fails)} fail lines" if false else
                   "; none of a live node")


def summary_lines(s: dict[str, Any], runs: list[JobRun], base: JobRun | None) -> list[tuple[str, str]]:
    out = [("kills (recovered)", f"{s['kills']} ({s['recovered']})"
            + (f"; {s['void']} more void (the job's tasks there had finished)" if s["void"] else "")),
           ("recovery p50 / p99 / max (s)",
            f"{fmt(s['recovery_p50_s'])} / {fmt(s['recovery_p99_s'])} / {fmt(s['recovery_max_s'])}"),
           ("detection p50 / max (s)", f"{fmt(s['detection_p50_s'])} / {fmt(s['detection_max_s'])}"),
           (f"p99 within {BAR_S:g} s (goal {GOAL_S:g} s)",
            ("yes" if s["meets_bar"] else "NO") + (", goal met" if s["meets_goal"] else ", goal missed")),
           ("baseline job time (s)", fmt(s["baseline_s"], 1))]
    for r in s["runs"]:
        out.append((f"job time, {r['name']}: {r['kills']} kill{'' if r['kills'] == 1 else 's'} (s)",
                    f"{fmt(r['seconds'], 1)}" + (f" ({r['slowdown']:.2f}x)" if r["slowdown"] else "")))
    for r in ([base] if base else []) + runs:
        out.append((f"gossip, {r.name}", gossip_text(r)))
    return out


def markdown(report: dict[str, Any]) -> str:
    s = report["summary"]
    out = ["# Recovery after a worker node's SIGKILL (issue 10)", "",
           f"`{report['command']}`, {report['started']}. {report['machine']}; load average "
           f"{report['load_before']} before, {report['load_after']} after (other work shares the machine). "
           f"Nodes ran {code_text(report['code'])}"
           + (f"; **{CODE_CHANGED}**" if report["code"]["hash"] != report["code_after"]["hash"] else "") + ".", "",
           f"Job: {report['lines']:,} lines (`{report['data']}`), keep status 500, running count per path, "
           f"{NODES} nodes, `--tasks {TASKS}`, `--rate {report['rate']:g}` per source task. Goal: output moves "
           f"again within {BAR_S:g} s of the kill, p99 over the kills (goal {GOAL_S:g} s).", "",
           "| " + " | ".join(COLUMNS) + " |",
           "|" + "|".join("---:" if c in NUMERIC else "---" for c in COLUMNS) + "|"]
    out += ["| " + " | ".join(c.replace("|", "/") for c in cells(r)) + " |" for r in report["kills"]]
    out += ["", "| measure | value |", "|---|---:|"]
    out += [f"| {a} | {b} |" for a, b in report["summary_lines"]]
    out += ["", "*load*: the machine's 1-minute load average at the kill (2 cores, shared with other work). "
            "Times are seconds after the kill (the moment the node's pid vanished): *detected* = node-1's "
            "`members` view shows it failed (polled every 0.2 s); *fail log* = node-1's `member fail` line; "
            "*moved* = the leader's last `task moved` line for the node's tasks; *started* / *recovered* = the "
            "last replacement instance's `started_at` / `first_commit_at` (its first committed batch: the output "
            "moves again). *suspicions*: the SWIM `suspected` counters summed over the nodes, from the kill to "
            f"the recovery + from then to the restart (node alive everywhere again, plus {report['gap']:g} s); "
            "in brackets the suspicions of live nodes (their `refuted` counters), i.e. false ones. Between kills "
            "nothing is down: every suspicion there is false too (the gossip lines of the summary count them all).",
            ""]
    for r in report["runs"]:
        if r["false_suspicions"] or r["false_fails"]:
            out.append(f"- **false suspicions in {r['name']}**: {r['false_suspicions']} suspicions of live nodes"
                       + (f"; `member fail` of a live node: {'; '.join(r['false_fails'][:5])}" if r["false_fails"]
                          else "; none declared failed"))
        if r["order_note"]:
            out.append(f"- {r['name']}: {r['order_note']} (exactly once all the same)")
    out.append("")
    if s["kills"] < report["kills_wanted"]:
        out += [f"Only {s['kills']} of {report['kills_wanted']} kills happened.", ""]
    bad = [r for r in report["runs"] if r["mismatch"] or r["error"]]
    out += [f"**{r['name']}**: {r['mismatch'] or r['error']}" for r in bad] or [
        "Every run's output held each path's counts 1..n exactly once."]
    return "\n".join(out) + "\n"


# -- main -------------------------------------------------------------------------------------------
def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--kills", type=int, help="kills in all (default 10; 3 with --quick)")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_LINES:,} lines at {QUICK_RATE:g}/s, 3 kills")
    p.add_argument("--rate", type=float, help="source lines per second per source task")
    p.add_argument("--lines", type=int, help="lines of the source")
    p.add_argument("--no-baseline", action="store_true", help="skip the failure-free run")
    p.add_argument("--seed", type=int, default=1, help="seed of the choice of nodes to kill")
    p.add_argument("--gap", type=float, default=GAP, help="seconds between every node alive again and the "
                   "next kill (HyDFS lets a rejoined node lead only after [hydfs] settle, 3 s)")
    p.add_argument("--commit", help="run the nodes on this commit's code (a snapshot), not the working tree")
    p.add_argument("--out", type=Path, help="where results.json / results.md go")
    a = p.parse_args()
    a.kills = a.kills if a.kills is not None else (3 if a.quick else 10)
    a.lines = a.lines or (QUICK_LINES if a.quick else FULL_LINES)
    a.rate = a.rate or (QUICK_RATE if a.quick else FULL_RATE)
    a.out = a.out or (ROOT / "bench/out/recovery/quick" if a.quick else ROOT / "docs/bench/recovery")
    if a.kills < 0 or a.rate <= 0:
        p.error("--kills must be >= 0 and --rate > 0")
    return a


CODE_CHANGED = ("the code under the nodes changed during the run: nodes restarted after the edit ran other code "
                "(--commit REV runs them all on one commit)")


CODE = ("gossip", "hydfs", "rainstorm", "cli.py")   # what a node process imports


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def code_state(root: Path = ROOT, commit: str | None = None) -> dict[str, Any]:
    """The commit, the modified files and a hash of the code the nodes run. The working tree is
    edited by others meanwhile: a node restarted after an edit runs other code than its peers."""
    h = hashlib.sha256()
    for f in sorted(p for d in CODE for p in ([root / d] if d.endswith(".py") else (root / d).rglob("*.py"))):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    modified = [] if commit else git("status", "--short", "--", *CODE).splitlines()
    return {"head": git("rev-parse", "--short", commit or "HEAD"), "snapshot": bool(commit), "modified": modified,
            "hash": h.hexdigest()[:12]}


def code_text(code: dict[str, Any]) -> str:
    if code["snapshot"]:
        return f"a snapshot of {code['head']}"
    return f"the working tree at {code['head']}" + (f" with {len(code['modified'])} modified files ("
                                                    + ", ".join(code["modified"]) + ")" if code["modified"] else "")


def snapshot(commit: str, dest: Path) -> Path:
    """The node code of ``commit`` in ``dest``, put first on the nodes' PYTHONPATH (the children
    inherit it): every node, restarted ones too, then runs that commit whatever the tree holds."""
    dest.mkdir()
    archive = subprocess.run(["git", "archive", commit, *CODE], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(dest), *filter(None, [os.environ.get("PYTHONPATH")])])
    return dest


def load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def experiment(a: argparse.Namespace, cluster: Cluster, data: DataSet, work: Path) -> tuple[JobRun | None,
                                                                                          list[JobRun]]:
    """The baseline run, then kill runs until ``--kills`` kills happened (or a run had none)."""
    nominal = a.lines / TASKS / a.rate
    timeout = max(120.0, 4 * nominal)
    rng = random.Random(a.seed)
    probe = Probe(cluster.dir)
    try:
        base = None
        if not a.no_baseline:
            say(f"baseline: {a.lines:,} lines at {a.rate:g} lines/s per source task (~{nominal:.0f} s paced)")
            base = run_job(cluster, probe, "recovery-base", a.rate, 0, rng, timeout)
            verify(cluster, base, data, work)
            say(f"baseline: {fmt(base.seconds, 1)} s; gossip {gossip_text(base)}")
        runs: list[JobRun] = []
        while sum(len(r.kills) for r in runs) < a.kills:
            name = f"recovery-kill-{len(runs) + 1}"
            left = a.kills - sum(len(r.kills) for r in runs)
            say(f"{name}: up to {left} kills")
            run = run_job(cluster, probe, name, a.rate, left, rng, timeout + left * 40, a.gap)
            runs.append(run)
            verify(cluster, run, data, work)
            say(f"{name}: {len(run.kills)} kills, {fmt(run.seconds, 1)} s; gossip {gossip_text(run)}")
            if not run.kills or run.error:
                break
        return base, runs
    finally:
        probe.close()


def main() -> int:
    a = parse()
    ctx: dict[str, Any] = {"command": "python bench/recovery.py " + " ".join(sys.argv[1:]),
                           "started": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
                           "load_before": load()}
    say(f"{ctx['machine']}; load {ctx['load_before']}")
    data = generate(a.lines)
    say(f"data: {data.path.relative_to(ROOT)}, {data.n500:,} status-500 lines over {len(data.counts)} paths")
    cluster = Cluster(NODES, offset=3)
    named = cluster.dir.with_name(cluster.dir.name.replace("bench-streaming-", "bench-recovery-"))
    cluster.dir = cluster.dir.rename(named)   # its rainstorm.toml (the ports) comes along
    code_root = snapshot(a.commit, cluster.dir / "code") if a.commit else ROOT
    ctx["code"] = code_state(code_root, a.commit)
    say(f"nodes run {code_text(ctx['code'])}")
    work = cluster.dir / "outputs"
    work.mkdir()
    base: JobRun | None = None
    runs: list[JobRun] = []
    try:
        say(f"starting {NODES} nodes in {cluster.dir}")
        cluster.up()
        cluster.upload(data, "access")
        base, runs = experiment(a, cluster, data, work)
    except BenchError as exc:
        say(f"[bold red]FAILED[/] {exc}")
        runs.append(JobRun("setup", error=str(exc)))
    finally:
        cluster.down()
        for node in cluster.dir.glob("node-*"):   # the nodes' data: big, and not needed to read what happened
            if node.is_dir():
                shutil.rmtree(node, ignore_errors=True)
    read_logs(cluster.dir, ([base] if base else []) + runs)
    ctx["code_after"] = code_state(code_root, a.commit)
    return report(a, ctx, data, base, runs, cluster.dir)


def report(a: argparse.Namespace, ctx: dict[str, Any], data: DataSet, base: JobRun | None, runs: list[JobRun],
           cluster_dir: Path) -> int:
    """Print the tables, write results.json / results.md; exit 1 on wrong counts or a failed run."""
    rows = kill_rows(runs)
    s = summary(runs, base)
    lines = summary_lines(s, runs, base)
    console.print()
    show(rows, lines)
    rep = {**ctx, "load_after": load(), "lines": data.lines,
           "data": str(data.path.relative_to(ROOT)), "rate": a.rate, "gap": a.gap, "kills_wanted": a.kills,
           "cluster_dir": str(cluster_dir), "kills": rows, "summary": s, "summary_lines": lines,
           "runs": [asdict(r) for r in ([base] if base else []) + runs]}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(rep, indent=2) + "\n")
    (a.out / "results.md").write_text(markdown(rep))
    say(f"wrote {a.out / 'results.json'} and {a.out / 'results.md'}; node logs in {cluster_dir}")
    all_runs = ([base] if base else []) + runs
    for r in all_runs:
        if r.mismatch:
            console.print(f"[bold red on white] COUNTS WRONG [/] {r.name}: {r.mismatch}")
        if r.error:
            console.print(f"[bold red]FAILED[/] {r.name}: {r.error}")
        if r.false_suspicions or r.false_fails:
            console.print(f"[bold red]FALSE SUSPICIONS[/] {r.name}: {gossip_text(r)} {r.false_fails[:3]}")
        if r.order_note:
            console.print(f"[yellow]{r.name}: {r.order_note}[/yellow]")
    if s["kills"] < a.kills:
        console.print(f"[bold red]only {s['kills']} of {a.kills} kills happened[/]")
    if ctx["code"]["hash"] != ctx["code_after"]["hash"]:
        console.print(f"[bold red]{CODE_CHANGED}[/]")
    return 1 if any(r.mismatch or r.error for r in all_runs) or s["recovered"] < s["kills"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""Several "hosts" on one Linux machine: network namespaces on a bridge, faults made with iptables, and
a RainStorm cluster with one node per namespace.

Why namespaces: on 127.0.0.1 every node shares one network stack, so a partition or packet loss
between two nodes cannot be made. Here each host has its own stack, address and firewall, so a cut
is a real one (TCP connections hang, datagrams vanish) while the processes run unchanged.

Layout of one :class:`Net` (``<tag>``: 6 random hex digits, fresh for each Net)::

    root namespace: the test process ("the client"), rsmh<tag>c  10.231.K.1/24
                                                          │ veth
    netns rsmh-<tag>-sw: bridge rsmhb<tag> ── rsmh<tag>s ─┘
                           ├── rsmh<tag>v1 ── veth ── rsmh<tag>p1 in netns rsmh-<tag>-h1   10.231.K.11
                           ├── rsmh<tag>v2 ── veth ── rsmh<tag>p2 in netns rsmh-<tag>-h2   10.231.K.12
                           └── ...

The bridge sits in a namespace of its own (the "switch"), not in the root namespace: where
``net.bridge.bridge-nf-call-iptables`` is on (Docker turns it on and sets the root FORWARD policy to
DROP), frames crossing a root-namespace bridge go through the root firewall, which is not ours to
change. The switch namespace's firewall is empty. The root namespace holds one interface of ours,
the client's end of its veth. ``K`` is picked from the tag, skipping any /24 already routed on this
machine or used by another live Net. Every name fits Linux's 15-character interface limit.

Faults are iptables rules inside the host namespaces, in two chains of our own (``RSMH_IN`` jumped to
from INPUT, ``RSMH_OUT`` from OUTPUT), so :meth:`Net.heal` flushes exactly what was added. Traffic on
a host's ``lo`` (a node talking to its own Redis) is never touched.

Nothing outside a Net's own names is ever changed. Each Net writes ``/tmp/rsmh/<tag>.json`` (its
names, its owner's pid and start time) *before* creating anything; :func:`sweep` removes the
resources of state files whose owner is dead (a crashed or SIGKILLed test run), and nothing else.

API (kept stable: tests/multihost/test_deploy.py builds on it):

- :func:`available` -> None, or why namespaces cannot be made here (tests skip with it).
- :func:`sweep` -> what it removed of earlier dead runs.
- :class:`Net` ``(n_hosts)``, a context manager: ``hosts`` (:class:`Host`: ``name``, ``ns``,
  ``ip``), ``host(name)``, ``client_ip``, ``client_reaches``, ``exec``, ``run``, ``kill``,
  ``cut_host``, ``cut_link``, ``drop``, ``heal``, ``faults``, ``rules``, ``leftovers``, ``close``.
- :class:`Cluster` ``(net, workdir, voters=None, config=None)``: one ``rainstorm node`` per host at
  ``<ip>:NODE_PORT`` with its redis-server at ``<ip>:REDIS_PORT``; ``start``, ``names``, ``addr``,
  ``reachable``, ``call``, ``infos``, ``views``, ``control``, ``wait_converged``,
  ``controller_leader``, ``leading``, ``gossip_stats``, ``cli``, ``running``, ``kill``, ``stop``,
  ``restart``, ``dfs``, ``read``, ``submit``, ``job``, ``wait_job``, ``appender`` (-> :class:`Appender`),
  ``data_dir``, ``log_path``, ``tail``, ``tails``, ``close``; :func:`live_clusters`.
- :func:`wait_until` (a bounded wait on a condition), :func:`expected_output` (a job's failure-free
  result), :func:`check_output` (a finished job's destination is exactly that), :data:`COUNT_JOB` and
  :func:`sign_rows` (a standard job and its source), :data:`HarnessError`, :data:`WaitTimeout`.

A HyDFS appender for clients on either side of a cut runs as
``python -m tests.multihost.harness append --at IP:PORT --name F --prefix P ...`` (see
:meth:`Cluster.appender`): one JSON line per append, acknowledged or not.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import collections
import contextlib
import fcntl
import json
import os
import random
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import IO, Any, TypeVar

T = TypeVar("T")

STATE_DIR = Path("/tmp/rsmh")
CHAIN_IN, CHAIN_OUT = "RSMH_IN", "RSMH_OUT"
NODE_PORT = 7000
REDIS_PORT = 7200
REPO = Path(__file__).resolve().parents[2]
RAINSTORM = Path(sys.prefix) / "bin" / "rainstorm"
SUBNET_PREFIX = "10.231"


class HarnessError(RuntimeError):
    """A harness command (ip, iptables, a node start) failed; the message carries its stderr."""


class WaitTimeout(AssertionError):
    """A bounded wait ran out. An AssertionError, so a test reports it as a failure that names what
    it waited for (never a hang)."""


# -- small helpers ------------------------------------------------------------------------------------
def _sh(argv: Sequence[str], timeout: float = 15.0, input: str | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a root-namespace command (ip, iptables) with a bound; raise with its stderr if it fails."""
    try:
        res = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=input)
    except subprocess.TimeoutExpired:
        raise WaitTimeout(f"`{shlex.join(argv)}` did not finish within {timeout:g}s") from None
    if check and res.returncode != 0:
        raise HarnessError(f"`{shlex.join(argv)}` failed ({res.returncode}): {res.stderr.strip()}")
    return res


def wait_until(cond: Callable[[], T | None], timeout: float, what: str, step: float = 0.1) -> T:
    """Poll ``cond`` until it returns something true and return that; after ``timeout`` seconds raise
    :class:`WaitTimeout` naming ``what`` (and the last exception ``cond`` raised, if any)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            got = cond()
            if got:
                return got
        except Exception as exc:  # a node may be unreachable for a moment while we poll
            last = exc
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}"
                              + (f" (last error: {type(last).__name__}: {last})" if last else ""))
        time.sleep(step)


def _start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot): a pid plus this names one process
    for ever, so a recycled pid is never taken for a live owner."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19]) if fields[0] != "Z" else None
    except (OSError, IndexError, ValueError):
        return None


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Serializes allocation and sweeping across concurrent test runs on this machine."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / "lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _netns_list() -> list[str]:
    res = _sh(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in res.stdout.splitlines() if line.strip()]


def _links() -> list[str]:
    res = _sh(["ip", "-o", "link", "show"], check=False)
    out = []
    for line in res.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            out.append(parts[1].strip().split("@")[0])
    return out


def _ns_pids(ns: str) -> list[int]:
    res = _sh(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in res.stdout.split() if p.isdigit()]


def _kill_ns_processes(ns: str, timeout: float = 10.0) -> list[int]:
    """SIGKILL every process living in netns ``ns`` (ours by construction) and wait until they are gone."""
    killed: list[int] = []
    deadline = time.monotonic() + timeout
    while True:
        pids = [p for p in _ns_pids(ns) if _start_time(p) is not None]
        if not pids:
            return killed
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        if time.monotonic() > deadline:
            raise HarnessError(f"processes {pids} in netns {ns} survived SIGKILL for {timeout:g}s")
        time.sleep(0.05)


def _remove(namespaces: Iterable[str], links: Iterable[str]) -> list[str]:
    """Kill the processes in, and delete, the given namespaces and links if they exist; returns what
    it removed. Missing ones are fine (already gone)."""
    removed: list[str] = []
    present_ns = set(_netns_list())
    for ns in namespaces:
        if ns in present_ns:
            _kill_ns_processes(ns)
            _sh(["ip", "netns", "del", ns], check=False)
            removed.append(f"netns {ns}")
    present = set(_links())
    for link in links:
        if link in present:
            _sh(["ip", "link", "del", link], check=False)   # a veth may vanish with its peer's namespace
            removed.append(f"link {link}")
    return removed


# -- availability and the sweep ---------------------------------------------------------------------------
@lru_cache(maxsize=1)
def available() -> str | None:
    """None if this process can make namespaces, veths, a bridge and iptables rules with the
    ``statistic`` match; else the reason (the multihost tests skip with it)."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "not root (network namespaces and iptables need root: run the tests with sudo)"
    for tool in ("ip", "iptables", "iptables-restore"):
        if shutil.which(tool) is None:
            return f"no `{tool}` on PATH (install iproute2 and iptables)"
    probe = f"rsmh-probe-{os.getpid()}"
    try:
        res = _sh(["ip", "netns", "add", probe], check=False)
        if res.returncode != 0:
            return f"`ip netns add` refused: {res.stderr.strip()}"
        steps = [
            ["ip", "-n", probe, "link", "add", "rsmhpa", "type", "veth", "peer", "name", "rsmhpb"],
            ["ip", "-n", probe, "link", "add", "rsmhpbr", "type", "bridge"],
            ["ip", "netns", "exec", probe, "iptables", "-w", "-A", "INPUT", "-m", "statistic", "--mode",
             "random", "--probability", "0.5", "-j", "DROP"],
        ]
        for argv in steps:
            res = _sh(argv, check=False)
            if res.returncode != 0:
                return f"`{shlex.join(argv)}` refused: {res.stderr.strip()}"
    except (OSError, WaitTimeout, HarnessError) as exc:
        return f"cannot probe namespaces: {exc}"
    finally:
        _sh(["ip", "netns", "del", probe], check=False)
    return None


def _read_states() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted(STATE_DIR.glob("*.json")):
        try:
            out.append((path, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    return out


def _owner_alive(state: dict[str, Any]) -> bool:
    pid, started = state.get("owner_pid"), state.get("owner_start")
    return isinstance(pid, int) and _start_time(pid) == started


def sweep() -> list[str]:
    """Remove what earlier runs left behind: for every state file under /tmp/rsmh whose owner process
    is dead, its namespaces (and their processes; the switch namespace takes the bridge and veths
    with it) and its root-namespace link, then the file; also probe namespaces of dead processes.
    Resources of live runs and anything not named in a state file are never touched. Returns what
    was removed (for a log line)."""
    if not STATE_DIR.exists():
        return []
    removed: list[str] = []
    with _locked():
        for path, state in _read_states():
            if _owner_alive(state):
                continue
            removed += _remove(state.get("namespaces", []), state.get("links", []))
            path.unlink(missing_ok=True)
        for ns in _netns_list():
            if ns.startswith("rsmh-probe-") and ns[len("rsmh-probe-"):].isdigit():
                pid = int(ns[len("rsmh-probe-"):])
                if _start_time(pid) is None:
                    removed += _remove([ns], [])
    return removed


# -- the network --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Host:
    """One simulated machine: ``name`` ("h1"...), its namespace, address, and both ends of its veth
    (``veth`` on the bridge in the switch namespace, ``ifname`` inside the host's namespace)."""

    name: str
    ns: str
    ip: str
    veth: str
    ifname: str


HostRef = Host | str


class Net:
    """``n_hosts`` namespaces on a bridge (in a switch namespace), the test client's veth on it too;
    made at construction, removed by :meth:`close` (also on ``with`` exit and, as a last resort, at
    interpreter exit)."""

    def __init__(self, n_hosts: int) -> None:
        if not 1 <= n_hosts <= 40:
            raise ValueError("n_hosts must be 1..40")
        self.closed = False
        self._procs: list[subprocess.Popen[Any]] = []
        self._faults: list[str] = []
        self._cut: dict[str, bool] = {}       # host name -> the test client stays reachable
        self._dirty: set[str] = set()         # hosts that may hold fault rules
        with _locked():
            self.tag, octet = self._allocate()
            self.subnet = f"{SUBNET_PREFIX}.{octet}.0/24"
            self.client_ip = f"{SUBNET_PREFIX}.{octet}.1"
            self.switch = f"rsmh-{self.tag}-sw"        # the namespace holding the bridge
            self.bridge = f"rsmhb{self.tag}"            # in the switch namespace
            self.client_veth = f"rsmh{self.tag}c"       # root namespace end of the client's veth
            self.hosts = [Host(f"h{i}", f"rsmh-{self.tag}-h{i}", f"{SUBNET_PREFIX}.{octet}.{10 + i}",
                               f"rsmh{self.tag}v{i}", f"rsmh{self.tag}p{i}") for i in range(1, n_hosts + 1)]
            self.state_file = STATE_DIR / f"{self.tag}.json"
            self.state_file.write_text(json.dumps({
                "tag": self.tag, "owner_pid": os.getpid(), "owner_start": _start_time(os.getpid()),
                "subnet": self.subnet, "namespaces": [self.switch, *(h.ns for h in self.hosts)],
                "links": [self.client_veth], "created": time.time()}))
        atexit.register(_close_at_exit, weakref.ref(self))
        try:
            self._create()
        except BaseException:
            with contextlib.suppress(Exception):
                self.close()
            raise

    # -- construction
    @staticmethod
    def _allocate() -> tuple[str, int]:
        """A tag no state file, namespace or link uses, and a /24 no route, address or live Net uses."""
        used_tags, used_octets = set(), set()
        for _, st in _read_states():
            used_tags.add(st.get("tag"))
            with contextlib.suppress(AttributeError, IndexError, ValueError):
                used_octets.add(int(str(st.get("subnet")).split(".")[2]))
        routed = _sh(["ip", "-4", "-o", "addr", "show"]).stdout + _sh(["ip", "-4", "route", "show", "table",
                                                                         "all"]).stdout
        names = " ".join(_netns_list() + _links())
        for _ in range(100):
            tag = secrets.token_hex(3)
            if tag in used_tags or tag in names:
                continue
            start = int(tag, 16) % 254
            for k in range(254):
                octet = (start + k) % 254 + 1
                if octet not in used_octets and f"{SUBNET_PREFIX}.{octet}." not in routed:
                    return tag, octet
            raise HarnessError(f"no free /24 in {SUBNET_PREFIX}.0.0/16")
        raise HarnessError("no free tag")

    def _create(self) -> None:
        sw, peer = self.switch, f"rsmh{self.tag}s"
        _sh(["ip", "netns", "add", sw])
        _sh(["ip", "-n", sw, "link", "add", self.bridge, "type", "bridge"])
        _sh(["ip", "-n", sw, "link", "set", self.bridge, "up"])
        _sh(["ip", "link", "add", self.client_veth, "type", "veth", "peer", "name", peer, "netns", sw])
        _sh(["ip", "-n", sw, "link", "set", peer, "master", self.bridge])
        _sh(["ip", "-n", sw, "link", "set", peer, "up"])
        _sh(["ip", "addr", "add", f"{self.client_ip}/24", "dev", self.client_veth])
        _sh(["ip", "link", "set", self.client_veth, "up"])
        rules = f"*filter\n:{CHAIN_IN} - [0:0]\n:{CHAIN_OUT} - [0:0]\n-A INPUT -j {CHAIN_IN}\n" \
                f"-A OUTPUT -j {CHAIN_OUT}\nCOMMIT\n"
        for h in self.hosts:
            _sh(["ip", "netns", "add", h.ns])
            _sh(["ip", "-n", sw, "link", "add", h.veth, "type", "veth", "peer", "name", h.ifname, "netns", h.ns])
            _sh(["ip", "-n", sw, "link", "set", h.veth, "master", self.bridge])
            _sh(["ip", "-n", sw, "link", "set", h.veth, "up"])
            _sh(["ip", "-n", h.ns, "link", "set", "lo", "up"])
            _sh(["ip", "-n", h.ns, "addr", "add", f"{h.ip}/24", "dev", h.ifname])
            _sh(["ip", "-n", h.ns, "link", "set", h.ifname, "up"])
            _sh(["ip", "netns", "exec", h.ns, "iptables-restore", "-w"], input=rules)
        def up(h: Host) -> bool:
            return "LOWER_UP" in _sh(["ip", "-n", h.ns, "-o", "link", "show", h.ifname]).stdout

        for h in self.hosts:
            wait_until(partial(up, h), 10, f"{h.name}'s interface to come up")
        wait_until(lambda: "LOWER_UP" in _sh(["ip", "-o", "link", "show", self.client_veth]).stdout, 10,
                   "the client's interface to come up")

    # -- lookup
    def host(self, ref: HostRef) -> Host:
        """The Host for a Host or a name ("h2")."""
        if isinstance(ref, Host):
            return ref
        for h in self.hosts:
            if h.name == ref:
                return h
        raise KeyError(f"no host {ref!r} in net {self.tag} (hosts: {[h.name for h in self.hosts]})")

    def client_reaches(self, ref: HostRef) -> bool:
        """Whether the root namespace (the test process) can talk to that host under the current faults."""
        name = self.host(ref).name
        return name not in self._cut or self._cut[name]

    # -- processes
    def exec(self, host: HostRef | None, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``host``'s namespace (``ip netns exec``), or in the root namespace when
        ``host`` is None. Always in a new session (its own process group), so :meth:`kill` and
        :meth:`close` get its children too; the process is remembered for teardown."""
        self._check_open()
        cmd = list(argv) if host is None else ["ip", "netns", "exec", self.host(host).ns, *argv]
        popen_kwargs["start_new_session"] = True
        proc: subprocess.Popen[Any] = subprocess.Popen(cmd, **popen_kwargs)
        self._procs.append(proc)
        return proc

    def run(self, host: HostRef | None, argv: Sequence[str], timeout: float = 30.0, input: str | None = None,
            env: dict[str, str] | None = None, cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` to completion in ``host``'s namespace (root when None) and return its output;
        past ``timeout`` the whole process group is killed and :class:`WaitTimeout` says what hung."""
        proc = self.exec(host, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                         stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            out, err = proc.communicate()
            where = "root namespace" if host is None else self.host(host).name
            raise WaitTimeout(f"{where}: `{shlex.join(argv)}` did not finish within {timeout:g}s"
                              + (f"; stderr: {err.strip()[-400:]}" if err.strip() else "")) from None
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def kill(self, proc: subprocess.Popen[Any], sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
        """Send ``sig`` to the process group of a process :meth:`exec` started (a group outlives its
        leader's exit, and its id is not reused while any member lives); after SIGKILL, reap it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        if sig == signal.SIGKILL:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                raise HarnessError(f"pid {proc.pid} survived SIGKILL for {timeout:g}s") from None

    # -- faults
    def _iptables(self, host: Host, lines: list[str]) -> None:
        """Apply rules to a host in one atomic ``iptables-restore`` (one process, one commit)."""
        self._dirty.add(host.name)
        _sh(["ip", "netns", "exec", host.ns, "iptables-restore", "-w", "--noflush"],
            input="*filter\n" + "".join(line + "\n" for line in lines) + "COMMIT\n")

    def cut_host(self, ref: HostRef, keep_client: bool = False) -> None:
        """Isolate a host: no TCP or UDP to or from any other host, nor the test client unless
        ``keep_client`` (then the test process can still watch it). Its ``lo`` keeps working."""
        self._check_open()
        h = self.host(ref)
        spare = f" ! -s {self.client_ip}/32" if keep_client else ""
        spare_out = f" ! -d {self.client_ip}/32" if keep_client else ""
        self._iptables(h, [f"-A {CHAIN_IN} -i {h.ifname}{spare} -j DROP",
                           f"-A {CHAIN_OUT} -o {h.ifname}{spare_out} -j DROP"])
        self._cut[h.name] = self._cut.get(h.name, True) and keep_client
        self._faults.append(f"cut {h.name}" + (" (client kept)" if keep_client else ""))

    def cut_link(self, a: HostRef, b: HostRef) -> None:
        """Cut only the link between two hosts, both directions; every other pair still talks."""
        self._check_open()
        ha, hb = self.host(a), self.host(b)
        for x, y in ((ha, hb), (hb, ha)):
            self._iptables(x, [f"-A {CHAIN_IN} -s {y.ip}/32 -j DROP", f"-A {CHAIN_OUT} -d {y.ip}/32 -j DROP"])
        self._faults.append(f"cut link {ha.name}-{hb.name}")

    def drop(self, percent: float, hosts: Iterable[HostRef] | None = None, keep_client: bool = False) -> None:
        """Lose ``percent`` % of the packets arriving at every host (or the listed ones), chosen at random
        per packet (iptables ``statistic``): between two such hosts each direction loses that share.
        The test client's packets to them are lost too unless ``keep_client``."""
        self._check_open()
        if not 0 < percent <= 100:
            raise ValueError("percent must be in (0, 100]")
        targets = [self.host(h) for h in hosts] if hosts is not None else self.hosts
        spare = f" ! -s {self.client_ip}/32" if keep_client else ""
        for h in targets:
            self._iptables(h, [f"-A {CHAIN_IN} -i {h.ifname}{spare} -m statistic --mode random "
                               f"--probability {percent / 100:.6f} -j DROP"])
        self._faults.append(f"drop {percent:g}% at {','.join(h.name for h in targets)}")

    def heal(self) -> None:
        """Remove every fault rule (our chains are flushed on every host that got a rule, then checked
        empty). Flushing is one process per such host, so the faults are gone within milliseconds of
        each other; take a heal's time before calling this."""
        self._check_open()
        hosts = [h for h in self.hosts if h.name in self._dirty]
        for h in hosts:
            self._iptables(h, [f"-F {CHAIN_IN}", f"-F {CHAIN_OUT}"])
        left = {h.name: r for h in hosts if (r := self.rules(h))}
        if left:
            raise HarnessError(f"rules left after heal: {left}")
        self._dirty.clear()
        self._cut.clear()
        self._faults.clear()

    def faults(self) -> list[str]:
        """The faults in force, in the order they were made (for messages)."""
        return list(self._faults)

    def rules(self, ref: HostRef) -> list[str]:
        """The fault rules in force on a host (iptables -S lines of our two chains)."""
        h = self.host(ref)
        res = _sh(["ip", "netns", "exec", h.ns, "iptables", "-w", "-S"])
        return [line for line in res.stdout.splitlines() if line.startswith((f"-A {CHAIN_IN} ", f"-A {CHAIN_OUT} "))]

    # -- teardown
    def leftovers(self) -> list[str]:
        """What of this Net still exists: namespaces, root-namespace links, started processes still
        running, and processes inside its namespaces. Empty after a successful :meth:`close`."""
        ns = [n for n in _netns_list() if n.startswith(f"rsmh-{self.tag}-")]
        links = [link for link in _links() if self.tag in link]
        procs = [f"pid {p.pid}" for p in self._procs if p.poll() is None]
        inside = [f"pid {p} in {n}" for n in ns for p in _ns_pids(n)]
        return [*(f"netns {n}" for n in ns), *(f"link {link}" for link in links), *procs, *inside]

    def close(self) -> None:
        """Kill every process started here (SIGKILL to each process group, then anything left inside
        the namespaces), delete the namespaces, veths and bridge, and the state file. Safe to call
        twice; raises :class:`HarnessError` if something could not be removed."""
        if self.closed:
            return
        self.closed = True
        for proc in self._procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        # the switch last: with it go the bridge, the hosts' veths and the client's veth
        _remove([*(h.ns for h in self.hosts), self.switch], [self.client_veth])
        left = self.leftovers()
        if left:
            raise HarnessError(f"net {self.tag}: could not remove {left}")
        self.state_file.unlink(missing_ok=True)

    def _check_open(self) -> None:
        if self.closed:
            raise HarnessError(f"net {self.tag} is closed")

    def __enter__(self) -> Net:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Net({self.tag}, {self.subnet}, {len(self.hosts)} hosts)"


def _close_at_exit(ref: weakref.ref[Net]) -> None:
    net = ref()
    if net is not None and not net.closed:
        with contextlib.suppress(Exception):
            net.close()


# -- the RainStorm cluster ------------------------------------------------------------------------------------
_LIVE: weakref.WeakSet[Cluster] = weakref.WeakSet()


def live_clusters() -> list[Cluster]:
    """Clusters started and not closed yet (the conftest prints their node logs when a test fails)."""
    return [c for c in list(_LIVE) if not c.closed]


def _base_env() -> dict[str, str]:
    """The caller's environment without RAINSTORM_* (a developer's shell must not steer the nodes)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RAINSTORM_")}


class Appender:
    """A HyDFS appender process (see :meth:`Cluster.appender`); :meth:`results` waits for it and
    returns one dict per append: ``{"p": payload, "ok": bool, "index": int, "t": unix time}``, or
    ``{"p", "ok": False, "error": str}`` for an append that was not acknowledged."""

    def __init__(self, net: Net, proc: subprocess.Popen[Any], out: Path, bound: float, where: str) -> None:
        self.net, self.proc, self.out, self.bound, self.where = net, proc, out, bound, where

    def rows(self) -> list[dict[str, Any]]:
        """What it reported so far (complete lines only; it may still be running)."""
        text = self.out.read_text()
        return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines() if line.startswith("{")]

    def acked_since(self, t: float) -> int:
        """How many appends it sent at or after UNIX time ``t`` were acknowledged so far."""
        return sum(1 for r in self.rows() if r["ok"] and r["t"] >= t)

    def results(self) -> list[dict[str, Any]]:
        """Wait (bounded) for it to finish on its own; every append it made."""
        try:
            self.proc.wait(self.bound)
        except subprocess.TimeoutExpired:
            self.net.kill(self.proc)
            raise WaitTimeout(f"appender {self.where} still ran after {self.bound:g}s") from None
        if self.proc.returncode != 0:
            err = self.out.with_suffix(".err").read_text()[-800:]
            raise HarnessError(f"appender {self.where} exited {self.proc.returncode}: {err}")
        return self.rows()

    def stop(self) -> list[dict[str, Any]]:
        """Kill it now; every append it reported (one in flight is neither: it may land, at most once)."""
        self.net.kill(self.proc)
        err = self.out.with_suffix(".err").read_text().strip()
        if err:
            raise HarnessError(f"appender {self.where} wrote to stderr: {err[-800:]}")
        return self.rows()


class Cluster:
    """One ``rainstorm node`` per host of ``net``: host hN is node ``hN`` at ``<its ip>:7000`` with its
    redis-server at ``<its ip>:7200``, data and log (``node.log``) under ``workdir/hN``. Voters default
    to h1,h2,h3 (h1 alone with fewer than 3 hosts: a second voter would add a node that must answer
    without surviving one more failure). ``config``: rainstorm.toml text given to every node and CLI.

    Requests from the test process go to hosts the client can reach under the current faults, so a
    host cut off (without ``keep_client``) is skipped rather than waited on."""

    def __init__(self, net: Net, workdir: str | Path, voters: Sequence[str] | None = None,
                 config: str | None = None, secret: str | None = None) -> None:
        self.net = net
        self.dir = Path(workdir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        names = [h.name for h in net.hosts]
        self.voters = list(voters) if voters else names[:3 if len(names) >= 3 else 1]
        self.secret = secret or secrets.token_hex(16)
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = self.dir / "rainstorm.toml"
            self.config_path.write_text(config)
        self.procs: dict[str, subprocess.Popen[Any]] = {}
        self.closed = False

    # -- addresses
    @property
    def names(self) -> list[str]:
        return [h.name for h in self.net.hosts]

    def addr(self, ref: HostRef) -> str:
        return f"{self.net.host(ref).ip}:{NODE_PORT}"

    def data_dir(self, ref: HostRef) -> Path:
        return self.dir / self.net.host(ref).name

    def log_path(self, ref: HostRef) -> Path:
        return self.data_dir(ref) / "node.log"

    def reachable(self, hosts: Iterable[HostRef] | None = None) -> list[str]:
        """Host names (of ``hosts``, default all) the test process can talk to now."""
        return [self.net.host(h).name for h in (hosts if hosts is not None else self.names)
                if self.net.client_reaches(h)]

    # -- processes
    def _env(self) -> dict[str, str]:
        env = {**_base_env(), "RAINSTORM_SECRET": self.secret}
        if self.config_path is not None:
            env["RAINSTORM_CONFIG"] = str(self.config_path)
        return env

    def _spawn(self, ref: HostRef, join: list[str]) -> None:
        h = self.net.host(ref)
        data = self.data_dir(h)
        data.mkdir(parents=True, exist_ok=True)
        argv = ["env", f"RAINSTORM_SECRET={self.secret}", str(RAINSTORM), "node", "start", "--bind", self.addr(h),
                "--id", h.name, "--data", str(data), "--redis-port", str(REDIS_PORT), "--voters", ",".join(self.voters)]
        if join:
            argv += ["--join", ",".join(join)]
        if self.config_path is not None:
            argv += ["--config", str(self.config_path)]
        with open(data / "node.log", "ab") as log:
            log.write(f"--- harness: start {h.name} at {time.strftime('%H:%M:%S')} ---\n".encode())
            log.flush()
            self.procs[h.name] = self.net.exec(h, argv, stdout=log, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, env=_base_env(), cwd=data)

    def start(self, timeout: float = 60.0) -> Cluster:
        """Start every node (h1 first; the others join it) and wait until they converge."""
        first = self.net.hosts[0]
        for i, h in enumerate(self.net.hosts):
            self._spawn(h, [] if i == 0 else [self.addr(first)])
        _LIVE.add(self)
        self.wait_converged(timeout)
        return self

    def running(self, ref: HostRef) -> bool:
        proc = self.procs.get(self.net.host(ref).name)
        return proc is not None and proc.poll() is None

    def kill(self, ref: HostRef) -> None:
        """SIGKILL the node and its redis-server (its process group): a crash."""
        proc = self.procs.get(self.net.host(ref).name)
        if proc is not None:
            self.net.kill(proc)

    def stop(self, ref: HostRef, timeout: float = 20.0) -> None:
        """SIGTERM: a graceful leave (others record ``left``); SIGKILL if it takes longer than ``timeout``."""
        proc = self.procs.get(self.net.host(ref).name)
        if proc is None or proc.poll() is not None:
            return
        self.net.kill(proc, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.net.kill(proc)
            raise WaitTimeout(f"{self.net.host(ref).name} did not stop within {timeout:g}s of SIGTERM") from None
        self.net.kill(proc)    # its redis-server, if it outlived the node

    def restart(self, ref: HostRef, timeout: float = 45.0) -> None:
        """Kill the node if it runs, start it again (joining every other host) and wait until it answers
        and every host the client reaches sees it alive."""
        h = self.net.host(ref)
        self.kill(h)
        self._spawn(h, [self.addr(o) for o in self.net.hosts if o.name != h.name])
        if not self.net.client_reaches(h):
            return

        def seen() -> bool:
            views = self.views(self.reachable())
            return all(v is not None and v.get(h.name) == "alive" for v in views.values())

        wait_until(seen, timeout, f"{h.name} to be back and alive in every reachable view", step=0.2)

    # -- RPC from the test process
    def _rpc(self, body: Callable[[Any], Awaitable[T]]) -> T:
        from rainstorm.locate import run_rpc

        return run_rpc(self.secret, body)

    def call(self, ref: HostRef, method: str, args: dict[str, Any] | None = None, timeout: float = 3.0) -> Any:
        """One RPC to one node (``node.info``, ``node.members``, ``control.leader``, ...)."""
        addr = self.addr(ref)
        return self._rpc(lambda c: c.call(addr, method, args, timeout=timeout))

    def _gather(self, hosts: Iterable[HostRef] | None, method: str, timeout: float) -> dict[str, Any]:
        names = self.reachable(hosts)

        async def body(client: Any) -> dict[str, Any]:
            async def one(n: str) -> Any:
                try:
                    return await client.call(self.addr(n), method, None, timeout=timeout)
                except Exception:
                    return None

            got = await asyncio.gather(*(one(n) for n in names))
            return dict(zip(names, got, strict=True))

        return self._rpc(body)

    def infos(self, hosts: Iterable[HostRef] | None = None, timeout: float = 2.0) -> dict[str, dict[str, Any] | None]:
        """``node.info`` of every reachable host (of ``hosts``) at once; None for one that did not answer."""
        return self._gather(hosts, "node.info", timeout)

    def views(self, hosts: Iterable[HostRef] | None = None, timeout: float = 2.0) -> dict[str, dict[str, str] | None]:
        """Each reachable host's membership view, ``{member id: state}``; None if it did not answer."""
        raw = self._gather(hosts, "node.members", timeout)
        return {n: None if rows is None else {m["id"]: m["state"] for m in rows} for n, rows in raw.items()}

    def control(self, method: str, args: dict[str, Any] | None = None, timeout: float = 15.0,
                via: Iterable[HostRef] | None = None) -> Any:
        """A ``control.*`` request through the first reachable node (of ``via``) that answers; every
        node forwards to the controller's leader."""
        from rainstorm.locate import call_any

        addrs = [self.addr(n) for n in self.reachable(via)]
        return self._rpc(lambda c: call_any(c, addrs, f"control.{method}", args, timeout=timeout))

    def leading(self, hosts: Iterable[HostRef] | None = None) -> set[str]:
        """Hosts whose node says it leads the controller now (it holds a lease)."""
        return {n for n, i in self.infos(hosts).items() if i and i["controller"]["leading"]}

    def controller_leader(self, hosts: Iterable[HostRef] | None = None) -> str | None:
        """The controller's leader among ``hosts`` (default all reachable): the one host that says it
        leads, named as leader by every one of them that answers; None while that is not so."""
        infos = self.infos(hosts)
        lead = {n for n, i in infos.items() if i and i["controller"]["leading"]}
        if len(lead) != 1:
            return None
        (leader,) = lead
        named = {i["controller"]["leader"] for i in infos.values() if i}
        return leader if named == {leader} else None

    def gossip_stats(self, hosts: Iterable[HostRef] | None = None) -> dict[str, dict[str, int]]:
        """Per reachable host, what its gossip counted since it started: ``suspected`` (suspicions it
        raised), ``declared_failed`` (members it declared failed), ``refuted`` (suspicions of itself it
        refuted)."""
        return {n: dict(i["gossip"]) for n, i in self.infos(hosts).items() if i}

    def wait_converged(self, timeout: float = 45.0, hosts: Iterable[HostRef] | None = None) -> float:
        """Wait until every one of ``hosts`` (default all) sees exactly those hosts alive, all name the
        same controller leader (one of them, and it leads), and HyDFS on each acts on a committed view
        of exactly those hosts (``node.info`` ``hydfs_view``, when the node has one). Returns the
        seconds it took."""
        want = {self.net.host(h).name for h in (hosts if hosts is not None else self.names)}
        unreachable = sorted(n for n in want if not self.net.client_reaches(n))
        if unreachable:
            raise ValueError(f"cannot watch {unreachable}: cut off from the test client")
        last: list[str] = []

        def converged() -> bool:
            views = self.views(want)
            last[:] = [f"{n}: " + ("no answer" if v is None else
                                    ",".join(sorted(m for m, s in v.items() if s == "alive")))
                       for n, v in sorted(views.items())]
            if not all(v is not None and {m for m, s in v.items() if s == "alive"} == want for v in views.values()):
                return False
            infos = self.infos(want)
            leader = self.controller_leader(want)
            last.append(f"leader: {leader}")
            # HyDFS acts on the controller's committed live set ([control] hydfs_view): that too
            hydfs = {n: i.get("hydfs_view") for n, i in infos.items() if i}
            stale = {n: v for n, v in hydfs.items() if v is not None and set(v) != want}
            if stale:
                last.append(f"hydfs views: {stale}")
            return leader is not None and not stale

        t0 = time.monotonic()
        try:
            wait_until(converged, timeout, f"{sorted(want)} to see each other alive with one controller leader",
                       step=0.2)
        except WaitTimeout as exc:
            raise WaitTimeout(f"{exc}; last views: {'; '.join(last)}") from None
        return time.monotonic() - t0

    # -- the CLI
    def cli(self, argv: Sequence[str], at: HostRef | None = None, inside: HostRef | None = None,
            timeout: float = 60.0, check: bool = False) -> subprocess.CompletedProcess[str]:
        """``rainstorm <argv> --at <ip>:7000`` run from the root namespace, or from inside a host's
        namespace with ``inside`` (a client on that side of a cut). ``at`` defaults to ``inside``, else
        the first host the client reaches. ``check``: raise :class:`HarnessError` on a non-zero exit."""
        target = self.net.host(at or inside or self.reachable()[0])
        cmd = [str(RAINSTORM), *argv]
        if "--at" not in argv:
            cmd += ["--at", self.addr(target)]
        res = self.net.run(inside, cmd, timeout, env=self._env(), cwd=self.dir)
        if check and res.returncode != 0:
            raise HarnessError(f"`rainstorm {shlex.join(argv)}` at {target.name} exited {res.returncode}: "
                               f"{res.stderr.strip()[-600:]}")
        return res

    # -- HyDFS
    def dfs(self, fn: Callable[[Any], Awaitable[T]], via: Iterable[HostRef] | None = None,
            timeout: float = 30.0) -> T:
        """Run ``fn(client)`` with a :class:`hydfs.api.Client` seeded with the reachable hosts (of ``via``)."""
        from hydfs.api import Client

        seeds = [self.addr(n) for n in self.reachable(via)]

        async def body(rpc: Any) -> T:
            client = Client(rpc, seeds, timeout=timeout)
            try:
                return await fn(client)
            finally:
                await client.close()

        return self._rpc(body)

    def read(self, name: str, via: Iterable[HostRef] | None = None, timeout: float = 30.0) -> bytes:
        """A HyDFS file's committed bytes."""
        return self.dfs(lambda c: c.get(name), via, timeout)

    def appender(self, name: str, prefix: str, inside: HostRef | None = None, at: Iterable[HostRef] | None = None,
                 duration: float = 10.0, interval: float = 0.1, timeout: float = 5.0, count: int = 100_000) -> Appender:
        """Start a process that appends ``<prefix>-<i>\\n`` to HyDFS file ``name``, one append at a time
        every ``interval`` s for ``duration`` s (at most ``count``), each waiting up to ``timeout`` s
        for its acknowledgement. It runs inside ``inside``'s namespace (root when None) and talks to
        ``at`` (default: ``inside``, else every reachable host)."""
        seeds = [self.addr(h) for h in (at if at is not None else [inside] if inside is not None else self.reachable())]
        out = self.dir / f"appender-{prefix}.jsonl"
        argv = [sys.executable, "-m", "tests.multihost.harness", "append", "--at", ",".join(seeds), "--name", name,
                "--prefix", prefix, "--duration", str(duration), "--interval", str(interval),
                "--timeout", str(timeout), "--count", str(count)]
        env = {**self._env(), "PYTHONPATH": str(REPO)}
        with open(out, "w") as f, open(out.with_suffix(".err"), "w") as err:
            proc = self.net.exec(inside, argv, stdout=f, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=REPO)
        where = f"{prefix} ({'root' if inside is None else self.net.host(inside).name})"
        return Appender(self.net, proc, out, duration + timeout + 30.0, where)

    # -- jobs
    def submit(self, job_text: str, src: str, dest: str, name: str, tasks: int = 3, rate: float | None = None,
               via: HostRef | None = None) -> None:
        """``rainstorm submit`` of a job file with this text (written under the cluster's directory)."""
        jobs = self.dir / "jobs"
        jobs.mkdir(exist_ok=True)
        path = jobs / f"{name}.py"
        path.write_text(job_text)
        argv = ["submit", str(path), "--src", src, "--dest", dest, "--tasks", str(tasks), "--name", name]
        if rate is not None:
            argv += ["--rate", str(rate)]
        self.cli(argv, at=via, check=True)

    def job(self, name: str, via: Iterable[HostRef] | None = None) -> dict[str, Any]:
        """The latest run of job ``name`` as ``control.jobs`` shows it (tasks with node, epoch, done...)."""
        runs = [j for j in self.control("jobs", via=via) if j["name"] == name and j["latest"]]
        if not runs:
            raise KeyError(f"no job {name!r}")
        return dict(runs[0])

    def wait_job(self, name: str, timeout: float = 120.0, via: Iterable[HostRef] | None = None) -> dict[str, Any]:
        """Wait until the latest run of ``name`` is no longer running; returns it."""
        def ended() -> dict[str, Any] | None:
            j = self.job(name, via)
            return j if j["state"] != "running" else None

        return wait_until(ended, timeout, f"job {name} to end", step=0.5)

    # -- logs and teardown
    def tail(self, ref: HostRef, lines: int = 40) -> str:
        """The last ``lines`` lines of a node's log."""
        try:
            with open(self.log_path(ref), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 200 * lines))
                text = f.read().decode(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def tails(self, lines: int = 40) -> str:
        return "\n".join(f"===== {n} ({self.log_path(n)}) =====\n{self.tail(n, lines)}" for n in self.names)

    def close(self) -> None:
        """SIGKILL every node and its redis-server (the Net removes the hosts)."""
        self.closed = True
        _LIVE.discard(self)
        for proc in self.procs.values():
            self.net.kill(proc)


COUNT_JOB = '''
from rainstorm import AggregateByKey, FilteredTransform, args

def is_stop(key, value):
    return args.get("pattern", "Stop") in value

def sign_and_post(key, value):
    f = value.split(",")
    return key, f"{f[2]},{f[3]}"      # rows with too few columns raise IndexError: dead letters

stages = [
    FilteredTransform(is_stop, sign_and_post),
    AggregateByKey(lambda key, value: value.split(",")[1], "count"),
]
'''
"""A two-stage job (filter, then a count per group) whose exact result is known: each group's values
must be 1..n, and the rows with too few columns are dead letters (tests/test_stream_cluster.py)."""


def sign_rows(n: int, seed: int = 7) -> list[str]:
    """``n`` lines of a synthetic sign inventory for :data:`COUNT_JOB` (every 500th is malformed)."""
    r = random.Random(seed)
    rows = []
    for i in range(n):
        if i % 500 == 17:
            rows.append(f"{i},Stop,broken")
        else:
            rows.append(f"{i},{r.choice(['Stop', 'Yield', 'Speed Limit'])},{r.choice(['Wood', 'U-Channel', 'Round'])},"
                        f"{r.choice(['Regulatory', 'Warning', 'Guide'])},Main St")
    return rows


def check_output(cluster: Cluster, job_text: str, rows: Sequence[str], src: str, dest: str,
                 via: Iterable[HostRef] | None = None) -> int:
    """Assert that HyDFS file ``dest`` (and ``dest.deadletters``) hold exactly the failure-free result
    of the job over ``rows``, as multisets of lines; for a count job also that each group counts 1..n.
    Returns the number of output lines."""
    want, want_dead = expected_output(job_text, rows, src)
    got = cluster.read(dest, via).decode().splitlines()
    missing, extra = want - collections.Counter(got), collections.Counter(got) - want
    assert not missing and not extra, (f"{dest} differs from the failure-free result: {sum(missing.values())} "
                                       f"lines missing (e.g. {list(missing)[:3]}), {sum(extra.values())} extra "
                                       f"(e.g. {list(extra)[:3]})")
    if '"count"' in job_text:
        groups: dict[str, list[int]] = collections.defaultdict(list)
        for line in got:
            k, v = json.loads(line)
            groups[k].append(v)
        assert groups and all(sorted(v) == list(range(1, len(v) + 1)) for v in groups.values()), dest
    dead = collections.Counter(cluster.read(f"{dest}.deadletters", via).decode().splitlines())
    assert dead == want_dead, f"{dest}.deadletters differs: {dead - want_dead} extra, {want_dead - dead} missing"
    return len(got)


def expected_output(job_text: str, rows: Sequence[str], src: str,
                    args: dict[str, str] | None = None) -> tuple[collections.Counter[str], collections.Counter[str]]:
    """A job's failure-free result over ``rows`` (the source file's lines): the destination lines and
    the dead-letter lines as multisets (rainstorm.stream.reference runs every stage in one process)."""
    from rainstorm.stream.jobfile import load_job
    from rainstorm.stream.reference import run_reference

    want, dead = run_reference(load_job(job_text, args or {}), src, list(rows))
    return collections.Counter(x.decode() for x in want), collections.Counter(x.decode() for x in dead)


# -- the appender process -------------------------------------------------------------------------------------
def _append_main(argv: list[str]) -> int:
    """Append numbered lines to a HyDFS file and print one JSON line per append (flushed, so what was
    acknowledged is on record even if the process is killed)."""
    from hydfs.api import Client
    from rainstorm.locate import run_rpc

    p = argparse.ArgumentParser(prog="python -m tests.multihost.harness append")
    p.add_argument("--at", required=True, help="HOST:PORT of nodes, comma-separated")
    p.add_argument("--name", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--count", type=int, default=100_000)
    a = p.parse_args(argv)
    secret = os.environ.get("RAINSTORM_SECRET")
    if not secret:
        print("RAINSTORM_SECRET is not set", file=sys.stderr)
        return 2

    def emit(row: dict[str, Any], out: IO[str] = sys.stdout) -> None:
        out.write(json.dumps(row) + "\n")
        out.flush()

    async def body(rpc: Any) -> None:
        client = Client(rpc, a.at.split(","), timeout=a.timeout)
        end = time.monotonic() + a.duration
        try:
            for i in range(a.count):
                if time.monotonic() >= end:
                    break
                payload = f"{a.prefix}-{i:05d}"
                t = time.time()
                try:
                    index = await client.append(a.name, (payload + "\n").encode())
                    emit({"p": payload, "ok": True, "index": index, "t": t, "took": round(time.time() - t, 3)})
                except Exception as exc:   # not acknowledged: it may or may not land (at most once)
                    emit({"p": payload, "ok": False, "t": t, "error": f"{type(exc).__name__}: {exc}"})
                await asyncio.sleep(a.interval)
        finally:
            await client.close()

    run_rpc(secret, body)
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "append":
        sys.exit(_append_main(sys.argv[2:]))
    print("usage: python -m tests.multihost.harness append --at HOST:PORT --name F --prefix P [...]", file=sys.stderr)
    sys.exit(2)

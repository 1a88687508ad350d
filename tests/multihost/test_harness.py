"""The harness itself: hosts reach each other over TCP and UDP, each fault cuts exactly what it says,
loss is about what was asked, heal restores everything, and teardown (and the sweep after a crash)
leaves nothing behind.

Reachability is measured, not assumed: every host (and the test client in the root namespace) runs
a small TCP+UDP echo server, and a probe from every source tries every destination.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.multihost import harness
from tests.multihost.harness import Cluster, Net, wait_until

pytestmark = pytest.mark.multihost

ECHO = r"""
import socket, sys, threading
ip, port = sys.argv[1], int(sys.argv[2])
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind((ip, port)); t.listen(64)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((ip, port))
def tcp():
    while True:
        c, _ = t.accept()
        c.settimeout(2)
        try:
            c.sendall(c.recv(64))
        except OSError:
            pass
        c.close()
threading.Thread(target=tcp, daemon=True).start()
print("ready", flush=True)
while True:
    d, a = u.recvfrom(2048)
    u.sendto(d, a)
"""

PROBE = r"""
import json, socket, sys, threading
port, res = int(sys.argv[1]), {}
def one(ip):
    tcp = udp = False
    try:
        with socket.create_connection((ip, port), timeout=0.7) as s:
            s.settimeout(0.7); s.sendall(b"t"); tcp = s.recv(8) == b"t"
    except OSError:
        pass
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(0.3)
    for _ in range(3):
        try:
            u.sendto(b"u", (ip, port)); udp = u.recvfrom(8)[0] == b"u"; break
        except OSError:
            pass
    res[ip] = [tcp, udp]
ts = [threading.Thread(target=one, args=(ip,)) for ip in sys.argv[2:]]
[t.start() for t in ts]; [t.join() for t in ts]
print(json.dumps(res))
"""

COUNT = r"""
import socket, sys, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((sys.argv[1], int(sys.argv[2])))
u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
print("ready", flush=True)
# stops 1 s after the last datagram (the sender is done), or at the deadline
n, end, last = 0, time.monotonic() + float(sys.argv[3]), None
u.settimeout(0.1)
while time.monotonic() < end and (last is None or time.monotonic() - last < 1.0):
    try:
        d, _ = u.recvfrom(64)
    except OSError:
        continue
    if d == b"x":
        n, last = n + 1, time.monotonic()
print(n, flush=True)
"""

SEND = r"""
import socket, sys, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[3])):
    u.sendto(b"x", (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.002)
"""

CLIENT = "client"


def _ready(out: Path, what: str) -> None:
    wait_until(lambda: "ready" in out.read_text(), 10, f"{what} to listen", step=0.05)


def _echo_everywhere(net: Net, tmp: Path, port: int) -> None:
    """An echo server on every host and on the client's bridge address."""
    for name, ip in [*((h.name, h.ip) for h in net.hosts), (CLIENT, net.client_ip)]:
        out = tmp / f"echo-{net.tag}-{name}.out"
        with open(out, "w") as f:
            net.exec(None if name == CLIENT else name, [sys.executable, "-c", ECHO, ip, str(port)], stdout=f,
                     stderr=subprocess.STDOUT)
        _ready(out, f"the echo server on {name}")


def _matrix(net: Net, port: int) -> dict[tuple[str, str], tuple[bool, bool]]:
    """(source, destination) -> (TCP works, UDP works) for every pair of hosts and the client."""
    ips = {h.name: h.ip for h in net.hosts} | {CLIENT: net.client_ip}
    name_of = {ip: n for n, ip in ips.items()}
    out: dict[tuple[str, str], tuple[bool, bool]] = {}
    probes = {src: net.exec(None if src == CLIENT else src,
                            [sys.executable, "-c", PROBE, str(port), *(ip for n, ip in ips.items() if n != src)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for src in ips}   # all sources at once: a cut pair costs its timeouts only once
    for src, proc in probes.items():
        stdout, stderr = proc.communicate(timeout=20)
        assert proc.returncode == 0, stderr
        for ip, (tcp, udp) in json.loads(stdout).items():
            out[(src, name_of[ip])] = (tcp, udp)
    return out


def _check(net: Net, port: int, blocked: Callable[[str, str], bool]) -> None:
    """Every pair works over TCP and UDP exactly when ``blocked`` says it is not cut."""
    got = _matrix(net, port)
    wrong = {pair: r for pair, r in got.items() if r != ((False, False) if blocked(*pair) else (True, True))}
    assert not wrong, f"faults {net.faults()}: unexpected (tcp, udp) for {wrong}"


def _port() -> int:
    return random.randrange(20000, 30000)


def test_reach_cut_host_and_heal(make_net: Callable[[int], Net], tmp_path: Path) -> None:
    net, port = make_net(4), _port()
    _echo_everywhere(net, tmp_path, port)
    _check(net, port, lambda a, b: False)
    # cut h2: nobody reaches it, it reaches nobody, the client included
    net.cut_host("h2")
    _check(net, port, lambda a, b: "h2" in (a, b))
    net.heal()
    _check(net, port, lambda a, b: False)
    # cut h3 but keep the test client: only the client still talks with it
    net.cut_host("h3", keep_client=True)
    assert net.client_reaches("h3")
    _check(net, port, lambda a, b: "h3" in (a, b) and CLIENT not in (a, b))
    net.heal()
    assert all(not net.rules(h) for h in net.hosts) and not net.faults()
    _check(net, port, lambda a, b: False)


def test_cut_link_cuts_only_that_pair(make_net: Callable[[int], Net], tmp_path: Path) -> None:
    net, port = make_net(3), _port()
    _echo_everywhere(net, tmp_path, port)
    net.cut_link("h1", "h3")
    _check(net, port, lambda a, b: {a, b} == {"h1", "h3"})
    net.heal()
    _check(net, port, lambda a, b: False)


def _udp_count(net: Net, src: str, dst: str, n: int, tmp: Path) -> int:
    """Send ``n`` datagrams from src to dst (2 ms apart); how many arrived."""
    port, ip = _port(), net.host(dst).ip
    out = tmp / f"count-{net.tag}-{time.monotonic_ns()}.out"
    with open(out, "w") as f:
        counter = net.exec(dst, [sys.executable, "-c", COUNT, ip, str(port), str(n * 0.002 + 10.0)], stdout=f,
                           stderr=subprocess.STDOUT, text=True)
    _ready(out, f"the UDP counter on {dst}")
    res = net.run(src, [sys.executable, "-c", SEND, ip, str(port), str(n)], timeout=30)
    assert res.returncode == 0, res.stderr
    counter.wait(30)
    return int(out.read_text().split()[-1])


def test_drop_loses_about_the_share_asked_and_heal_restores(make_net: Callable[[int], Net], tmp_path: Path) -> None:
    net, n = make_net(2), 600
    assert _udp_count(net, "h1", "h2", n, tmp_path) == n    # no loss on a clean veth
    net.drop(50)
    got = [_udp_count(net, "h1", "h2", n, tmp_path), _udp_count(net, "h2", "h1", n, tmp_path)]
    print(f"drop(50): {got} of {n} datagrams arrived in each direction")
    # binomial(600, 0.5): mean 300, sd 12.2; 220..380 is 6.5 sd either way (flaky once in ~10^10)
    assert all(220 <= g <= 380 for g in got), got
    net.heal()
    assert _udp_count(net, "h1", "h2", n, tmp_path) == n


def test_close_leaves_nothing_behind(tmp_path: Path) -> None:
    net = Net(2)
    try:
        tag = net.tag
        # a process group with a child, and a process that left its group (setsid) inside a namespace
        group = net.exec("h1", ["sh", "-c", "sleep 300 & sleep 300"])
        net.exec("h2", ["setsid", "sleep", "300"])
        wait_until(lambda: len(harness._ns_pids(net.host("h1").ns)) >= 2 and harness._ns_pids(net.host("h2").ns),
                   10, "the sleepers to start")
        pids = harness._ns_pids(net.host("h1").ns) + harness._ns_pids(net.host("h2").ns)
        assert net.leftovers()
    finally:
        net.close()
    assert net.leftovers() == []
    assert not [n for n in harness._netns_list() if tag in n]
    assert not [link for link in harness._links() if tag in link]
    assert all(harness._start_time(p) is None for p in pids), pids
    assert group.poll() is not None
    assert not net.state_file.exists()
    net.close()   # twice is fine


SPAWN_AND_HANG = """
import sys, time
from tests.multihost.harness import Net
net = Net(2)
net.exec("h1", ["sleep", "300"])
print(net.tag, flush=True)
time.sleep(300)
"""


def test_sweep_removes_only_dead_runs(tmp_path: Path) -> None:
    """A run SIGKILLed with its hosts up leaves them behind; the sweep removes them, and leaves a live
    run's alone."""
    live = Net(1)
    try:
        crashed = subprocess.Popen([sys.executable, "-c", SPAWN_AND_HANG], stdout=subprocess.PIPE, text=True,
                                   cwd=harness.REPO, start_new_session=True)
        try:
            assert crashed.stdout is not None
            tag = crashed.stdout.readline().strip()
            assert tag, "the crashing run did not make its net"
        finally:
            crashed.send_signal(signal.SIGKILL)
            crashed.wait(10)
        assert [n for n in harness._netns_list() if tag in n]
        removed = harness.sweep()
        assert any(tag in r for r in removed), removed
        assert not [n for n in harness._netns_list() if tag in n]
        assert not [link for link in harness._links() if tag in link]
        assert not (harness.STATE_DIR / f"{tag}.json").exists()
        assert live.leftovers() and live.state_file.exists()   # the live run is untouched
    finally:
        live.close()
    assert live.leftovers() == []


def test_cluster_kill_restart_stop_and_a_cli_inside_a_host(make_ns_cluster: Callable[..., Cluster]) -> None:
    """The Cluster helpers the other tests build on: a CLI run inside a host's namespace, SIGKILL (the
    others declare it failed), restart (alive again everywhere), SIGTERM (the others record a leave)."""
    c = make_ns_cluster(3)
    leader = c.controller_leader()
    assert leader in c.names and c.voters == c.names
    res = c.cli(["members", "--json"], inside="h2", check=True)
    assert {m["id"]: m["state"] for m in json.loads(res.stdout)["members"]} == dict.fromkeys(c.names, "alive")
    victim = next(h for h in reversed(c.names) if h != leader)
    others = [h for h in c.names if h != victim]

    def everyone_holds(state: str) -> bool:
        return all(v and v.get(victim) == state for v in c.views(others).values())

    c.kill(victim)
    assert not c.running(victim)
    wait_until(lambda: everyone_holds("failed"), 15, f"{victim} to be declared failed after SIGKILL")
    c.restart(victim)
    c.wait_converged(30)
    assert c.running(victim)
    c.stop(victim)
    wait_until(lambda: everyone_holds("left"), 15, f"{victim} to be recorded as left after SIGTERM")
    assert "node stopped" in c.tail(victim, 5)

"""The Ansible playbook (deploy/ansible) deploys four hosts, and the cluster it brings up runs a job.

Each network namespace of a :class:`harness.Net` is one host. Ansible reaches it through a local
connection whose Python interpreter is a wrapper running ``ip netns exec <ns> python3``, so every
module runs inside that host's namespace. The hosts share this machine's file system, so each gets
its own prefix, config and data directories. There is no systemd as PID 1 here: the role runs with
``rainstorm_service_manager: none`` (the unit is written, systemd is not asked anything) and the
test starts each node with exactly the unit's ExecStart, User and WorkingDirectory inside its
namespace. A second run of the playbook must report no change on any host.

The wheel and the wheelhouse are built in the root namespace, which reaches the package registry;
the hosts install from the wheelhouse with ``--no-index``, as hosts without internet do.
"""

from __future__ import annotations

import collections
import json
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.multihost import harness

pytestmark = pytest.mark.multihost

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "deploy" / "ansible"
ANSIBLE_PLAYBOOK = Path(sys.prefix) / "bin" / "ansible-playbook"
ANSIBLE_VAULT = Path(sys.prefix) / "bin" / "ansible-vault"
SECRET = "deploy-test-" + "7" * 24
# what systemd gives a service besides the unit's Environment= lines
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"



def _rows(n: int) -> list[str]:
    kinds, posts, cats = ["Stop", "Yield", "Speed Limit"], ["Wood", "U-Channel", "Round"], ["Regulatory", "Warning"]
    return [f"{i},Stop,broken" if i % 500 == 17 else
            f"{i},{kinds[i * 7 % 3]},{posts[i * 5 % 3]},{cats[i * 3 % 2]},Main St" for i in range(n)]


def _run(argv: list[str], what: str, timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    """A root-namespace step that must succeed; its output ends up in the failure message."""
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} did not finish within {timeout:g}s")
    if res.returncode != 0:
        pytest.fail(f"{what} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def _build(tmp: Path) -> tuple[Path, Path]:
    """The wheel of this checkout (built from a copy, so the repository gets no build/ directory) and
    a wheelhouse of its dependencies, as docs/deploy.md has the operator build them."""
    src = tmp / "src"
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "wheel", "--no-deps", "-w", str(tmp / "dist"), str(src)], "building the wheel", 300)
    (wheel,) = (tmp / "dist").glob("rainstorm-*.whl")
    _run([*pip, "wheel", "-w", str(tmp / "wheelhouse"), str(wheel)], "building the wheelhouse", 300)
    return wheel, tmp / "wheelhouse"


def _inventory(tmp: Path, net: harness.Net, wheel: Path, wheelhouse: Path) -> tuple[Path, Path]:
    """hosts.yml (one host per namespace, each with its own paths and interpreter wrapper) and a real
    ansible-vault file holding the secret; returns the inventory directory and the vault password file."""
    inv = tmp / "inventory"
    (inv / "group_vars" / "rainstorm").mkdir(parents=True)
    python = Path(sys.base_prefix) / "bin" / "python3"
    hosts: dict[str, Any] = {}
    for h in net.hosts:
        wrapper = tmp / "bin" / f"python-{h.name}"
        wrapper.parent.mkdir(exist_ok=True)
        wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {h.ns} {python} "$@"\n')
        wrapper.chmod(0o755)
        root = tmp / "hosts" / h.name
        (root / "systemd").mkdir(parents=True)   # /etc/systemd/system: there on any systemd host
        hosts[h.name] = {"ansible_host": h.ip, "ansible_python_interpreter": str(wrapper),
                         "rainstorm_prefix": str(root / "opt"), "rainstorm_config_dir": str(root / "etc"),
                         "rainstorm_data_dir": str(root / "data"), "rainstorm_unit_dir": str(root / "systemd")}
    group_vars = {
        "ansible_connection": "local", "ansible_become": False,
        "rainstorm_manage_packages": False, "rainstorm_service_manager": "none", "rainstorm_redis": "embedded",
        "rainstorm_user": "root", "rainstorm_group": "root", "rainstorm_create_user": False,
        "rainstorm_python": str(python), "rainstorm_wheel": str(wheel), "rainstorm_wheelhouse": str(wheelhouse),
        "rainstorm_port": harness.NODE_PORT, "rainstorm_redis_port": harness.REDIS_PORT,
    }
    # JSON is YAML: no quoting questions for paths
    (inv / "hosts.yml").write_text(json.dumps({"rainstorm": {"hosts": hosts}}, indent=1))
    (inv / "group_vars" / "rainstorm" / "main.yml").write_text(json.dumps(group_vars, indent=1))
    password = tmp / "vault-password"
    password.write_text("test-vault-password\n")
    password.chmod(0o600)
    vault = inv / "group_vars" / "rainstorm" / "vault.yml"
    vault.write_text(f"vault_rainstorm_secret: {SECRET}\n")
    _run([str(ANSIBLE_VAULT), "encrypt", "--vault-password-file", str(password), str(vault)], "ansible-vault", 60)
    assert vault.read_text().startswith("$ANSIBLE_VAULT;")
    return inv, password


RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def _playbook(tmp: Path, inv: Path, password: Path, run: str) -> dict[str, dict[str, int]]:
    """Run site.yml; returns the recap per host (ok, changed, unreachable, failed)."""
    env = {**os.environ, "ANSIBLE_PIPELINING": "1", "ANSIBLE_HOME": str(tmp / "ansible-home"),
           "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-local"), "ANSIBLE_REMOTE_TEMP": str(tmp / "ansible-remote"),
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_RETRY_FILES_ENABLED": "0"}
    res = _run([str(ANSIBLE_PLAYBOOK), "-i", str(inv), "--vault-password-file", str(password), "site.yml"],
               f"ansible-playbook ({run} run)", 600, cwd=PLAYBOOKS, env=env)
    (tmp / f"ansible-{run}.log").write_text(res.stdout + res.stderr)
    recap = {m[1]: dict(zip(("ok", "changed", "unreachable", "failed"), map(int, m.groups()[1:]), strict=True))
             for m in RECAP.finditer(res.stdout)}
    return recap


def _unit(path: Path) -> dict[str, list[str]]:
    """The settings of a systemd unit file, every value of each key in order."""
    out: dict[str, list[str]] = collections.defaultdict(list)
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out[key.strip()].append(value.strip())
    return out


def _start_node(net: harness.Net, h: harness.Host, unit: dict[str, list[str]], log: Path) -> subprocess.Popen[Any]:
    """The node as systemd would start it: the unit's ExecStart as its User/Group, in its
    WorkingDirectory, with its Environment and LimitNOFILE, inside the host's namespace."""
    argv = shlex.split(unit["ExecStart"][0])
    user, group = unit["User"][0], unit.get("Group", ["root"])[0]
    if user != "root":
        argv = ["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups", "--", *argv]
    env = {"PATH": SYSTEMD_PATH, "LANG": "C.UTF-8"}
    for line in unit.get("Environment", []):
        for pair in shlex.split(line):
            k, _, v = pair.partition("=")
            env[k] = v
    nofile = int(unit["LimitNOFILE"][0])

    def limits() -> None:   # as high as this container lets even root go
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(nofile, hard), hard))

    with open(log, "ab") as f:
        return net.exec(h, argv, cwd=unit["WorkingDirectory"][0], env=env, stdout=f, stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL, preexec_fn=limits)


def _tails(logs: dict[str, Path]) -> str:
    return "\n".join(f"===== {n} =====\n" + "\n".join(p.read_text(errors="replace").splitlines()[-25:])
                     for n, p in logs.items() if p.exists())


def test_playbook_deploys_a_cluster_that_runs_a_job(make_net: Callable[[int], harness.Net], tmp_path: Path) -> None:
    if not ANSIBLE_PLAYBOOK.exists():
        pytest.skip(f"no ansible-playbook in {ANSIBLE_PLAYBOOK.parent} (pip install -e '.[deploy]')")
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    net = make_net(4)
    wheel, wheelhouse = _build(tmp_path)
    timings["build"] = time.monotonic() - t0
    inv, password = _inventory(tmp_path, net, wheel, wheelhouse)

    t = time.monotonic()
    recap = _playbook(tmp_path, inv, password, "first")
    timings["first run"] = time.monotonic() - t
    names = [h.name for h in net.hosts]
    assert sorted(recap) == names, recap
    assert all(r["failed"] == 0 and r["unreachable"] == 0 and r["changed"] > 0 for r in recap.values()), recap

    # what the role wrote, host by host
    roots = {h.name: tmp_path / "hosts" / h.name for h in net.hosts}
    for h in net.hosts:
        root = roots[h.name]
        secret = root / "etc" / "secret"
        assert secret.stat().st_mode & 0o777 == 0o600 and secret.read_text().strip() == SECRET
        cfg = tomllib.loads((root / "etc" / "rainstorm.toml").read_text())
        others = [f"{o.ip}:{harness.NODE_PORT}" for o in net.hosts[:3] if o.name != h.name]
        assert cfg["node"] == {"bind": f"{h.ip}:{harness.NODE_PORT}", "id": h.name, "join": others,
                               "data": str(root / "data"), "secret_file": str(secret),
                               "redis_port": harness.REDIS_PORT}, cfg
        assert cfg["control"] == {"voters": names[:3]}, cfg
    unit_paths = {n: roots[n] / "systemd" / "rainstorm.service" for n in names}
    units = {n: _unit(p) for n, p in unit_paths.items()}
    assert units["h1"]["Restart"] == ["on-failure"] and units["h1"]["KillSignal"] == ["SIGTERM"]
    if shutil.which("systemd-analyze"):
        res = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit_paths["h1"])], capture_output=True,
                             text=True, timeout=60)
        complaints = [x for x in res.stderr.splitlines() if "rainstorm.service" in x]
        assert res.returncode == 0 and not complaints, res.stderr

    # the nodes, as the units would run them
    t = time.monotonic()
    logs = {h.name: tmp_path / f"{h.name}.log" for h in net.hosts}
    procs = {h.name: _start_node(net, h, units[h.name], logs[h.name]) for h in net.hosts}
    cluster = harness.Cluster(net, tmp_path / "client", secret=SECRET)
    try:
        cluster.wait_converged(60)
        timings["converged"] = time.monotonic() - t
        status = json.loads(cluster.cli(["cluster", "status", "--json"], check=True).stdout)["nodes"]
        assert sorted(r["id"] for r in status) == names
        assert all(r["state"] == "up" and r["membership"] == "alive" for r in status), status
        assert sorted(r["id"] for r in status if "voter" in r["roles"]) == names[:3], status

        # a job, from the CLI, through the nodes the playbook configured
        t = time.monotonic()
        rows = _rows(3000)
        src = tmp_path / "signs.csv"
        src.write_text("\n".join(rows) + "\n")
        cluster.cli(["dfs", "create", str(src), "signs"], check=True)
        time.sleep(3)  # a replica vouches for its files `settle` (3 s) after it joined
        cluster.submit(harness.COUNT_JOB, "signs", "counts", "count", tasks=3)
        cluster.cli(["wait", "count", "--timeout", "90"], check=True, timeout=120)
        want, want_dead = harness.expected_output(harness.COUNT_JOB, rows, "signs")
        got = collections.Counter(cluster.read("counts").decode().splitlines())
        assert got == want, f"{sum((want - got).values())} lines missing, {sum((got - want).values())} extra"
        dead = collections.Counter(cluster.read("counts.deadletters").decode().splitlines())
        assert dead == want_dead and len(dead) == 6
        timings["job"] = time.monotonic() - t
    except (AssertionError, harness.HarnessError) as exc:
        raise AssertionError(f"{exc}\n{_tails(logs)}") from None

    # the same inputs again: nothing changes, and the nodes were left alone
    t = time.monotonic()
    again = _playbook(tmp_path, inv, password, "second")
    timings["second run"] = time.monotonic() - t
    assert sorted(again) == names and all(r["changed"] == 0 and r["failed"] == 0 for r in again.values()), (
        again, (tmp_path / "ansible-second.log").read_text()[-4000:])
    assert all(p.poll() is None for p in procs.values()), _tails(logs)

    for p in procs.values():   # a graceful stop: KillMode=mixed sends SIGTERM to the node alone
        os.kill(p.pid, signal.SIGTERM)   # `ip netns exec` execs the node: same pid
    for n, p in procs.items():
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{n} did not stop within 30 s of SIGTERM\n{_tails(logs)}")
        net.kill(p)   # its redis-server, had it outlived the node
    print(f"deploy test timings: {', '.join(f'{k} {v:.1f}s' for k, v in timings.items())}, "
          f"total {time.monotonic() - t0:.1f}s")

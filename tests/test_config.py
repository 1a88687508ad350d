from pathlib import Path
from typing import Any

import pytest

from rainstorm.config import ConfigError, load


def test_defaults_without_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAINSTORM_CONFIG", raising=False)
    cfg = load()
    assert cfg.cluster.nodes == 5


def test_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "rainstorm.toml"
    path.write_text("[gossip]\nperiod = 1\nsuspicion = false\n[cluster]\nnodes = 3\n")
    cfg = load(path, {"cluster": {"nodes": 7}})
    assert cfg.gossip.period == 1.0 and isinstance(cfg.gossip.period, float)
    assert cfg.gossip.suspicion is False
    assert cfg.cluster.nodes == 7


@pytest.mark.parametrize("text,match", [
    ("[gossip]\nperiodd = 1\n", "unknown setting 'periodd'"),
    ("[gosip]\nperiod = 1\n", r"unknown section \[gosip\]"),
    ("[gossip]\nperiod = 'fast'\n", "period must be float"),
    ("[gossip]\nsuspicion = 1\n", "suspicion must be bool"),
    ("[gossip\n", "rainstorm.toml"),
    ("[node]\nredis_aof_rewrite_min = '8 mb'\n", "redis_aof_rewrite_min must be a size"),
])
def test_bad_files_name_the_problem(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "rainstorm.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load(path)


# -- [node]: everything `rainstorm node start` needs can come from the file ---------------------------------------
NODE_TOML = """
[node]
bind = "10.1.2.3:7000"
join = ["10.1.2.4:7000", "10.1.2.5:7000"]
id = "web-1"
data = "{data}"
redis_port = 7500
secret_file = "{secret}"
redis_server = "{redis}"
[control]
voters = ["web-1", "web-2", "web-3"]
"""


def _node_file(tmp_path: Path, **extra: str) -> Path:
    from rainstorm.redis_proc import find_binary

    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    path = tmp_path / "rainstorm.toml"
    path.write_text(NODE_TOML.format(data=tmp_path / "data", secret=secret, redis=find_binary()) + "".join(
        f"{k} = {v}\n" for k, v in extra.items()))
    return path


def test_node_settings_from_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cli import _node_spec

    monkeypatch.setenv("RAINSTORM_SECRET", "from-env")  # secret_file is set: the file's secret wins
    cfg = load(_node_file(tmp_path))
    spec = _node_spec(cfg, None, None, None, None, None, None, None)
    assert (spec.node_id, spec.bind, spec.join) == ("web-1", "10.1.2.3:7000", ["10.1.2.4:7000", "10.1.2.5:7000"])
    assert (spec.data_dir, spec.redis_port, spec.secret) == (tmp_path / "data", 7500, "s3cret")
    assert spec.config.control.voters == ["web-1", "web-2", "web-3"]


def test_flags_win_over_the_file(tmp_path: Path) -> None:
    from cli import _node_spec

    other = tmp_path / "other-secret"
    other.write_text("flag-secret")
    other.chmod(0o400)
    spec = _node_spec(load(_node_file(tmp_path)), "127.0.0.1:9000", "", tmp_path / "d2", 9300, "n9", "n9", other)
    assert (spec.node_id, spec.bind, spec.join) == ("n9", "127.0.0.1:9000", [])  # --join "": first node
    assert (spec.data_dir, spec.redis_port, spec.secret) == (tmp_path / "d2", 9300, "flag-secret")
    assert spec.config.control.voters == ["n9"]


def test_node_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cli import _node_spec

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAINSTORM_SECRET", "from-env")
    path = tmp_path / "rainstorm.toml"
    path.write_text('[node]\nbind = "127.0.0.1:7000"\n[control]\nvoters = ["127.0.0.1:7000"]\n')
    spec = _node_spec(load(path), None, None, None, None, None, None, None)
    assert (spec.node_id, spec.join, spec.redis_port, spec.secret) == ("127.0.0.1:7000", [], 7200, "from-env")
    assert spec.data_dir == tmp_path / "data-127.0.0.1-7000"  # absolute: redis runs in a directory of its own


@pytest.mark.parametrize("setup,needle", [
    ({"drop": "bind"}, "no address to bind: give --bind HOST:PORT or [node] bind"),
    ({"mode": 0o644}, "is open to group or others (mode 644); run `chmod 600"),
    ({"mode": 0o640}, "is open to group or others (mode 640)"),
    ({"secret": ""}, "is empty"),
    ({"secret": None}, "not found"),
    ({"set": 'bind = "nonsense"'}, "[node] bind: bad address 'nonsense': expected HOST:PORT"),
    ({"set": 'join = ["10.0.0.1"]'}, "[node] join: bad address '10.0.0.1'"),
    ({"set": 'join = "10.0.0.1:7000"'}, "[node]: join must be list"),
    ({"set": 'bind = "10.0.0.1:70000"'}, "port 70000 is out of range"),
    ({"set": 'redis_server = "/nonexistent/redis-server"'}, "redis_server /nonexistent/redis-server is not an "),
    ({"set": "redis_port = 'x'"}, "[node]: redis_port must be int"),
])
def test_node_start_errors_are_one_line(tmp_path: Path, setup: dict[str, Any], needle: str) -> None:
    from tests.conftest import run_cli

    path = _node_file(tmp_path)
    text = path.read_text()
    if "drop" in setup:
        text = "\n".join(x for x in text.splitlines() if not x.startswith(setup["drop"] + " "))
    if "set" in setup:
        key = setup["set"].split(" ")[0]
        text = text.replace("[node]\n", f"[node]\n{setup['set']}\n")
        text = "\n".join(x for x in text.splitlines() if not x.startswith(key + " ") or x == setup["set"])
    path.write_text(text)
    secret = tmp_path / "secret"
    if "mode" in setup:
        secret.chmod(setup["mode"])
    if "secret" in setup:
        if setup["secret"] is None:
            secret.unlink()
        else:
            secret.write_text(setup["secret"])
    res = run_cli("node", "start", "--config", str(path), cwd=tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr


def test_local_cluster_refuses_one_hosts_settings(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    (tmp_path / "rainstorm.toml").write_text('[node]\nbind = "10.0.0.1:7000"\nsecret_file = "/etc/s"\n')
    res = run_cli("cluster", "up", cwd=tmp_path)
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert res.stderr.startswith("error: [node] bind, secret_file: settings of one host's node")


def test_node_start_help_names_the_file(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    res = run_cli("node", "start", "--help", cwd=tmp_path, env={"COLUMNS": "200"})
    assert "rainstorm.toml can hold every setting" in res.stdout
    assert "([control] voters)" in res.stdout and "( voters)" not in res.stdout  # rich markup would eat it


def test_cli_reads_the_secret_file_of_a_nodes_host(tmp_path: Path) -> None:
    """$RAINSTORM_SECRET_FILE: a command on a node's host uses its secret file, with the node's checks."""
    from tests.conftest import run_cli

    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    env = {"RAINSTORM_SECRET_FILE": str(secret)}
    res = run_cli("members", "--at", "127.0.0.1:1", cwd=tmp_path, env=env)
    assert res.returncode == 1 and "run `chmod 600" in res.stderr and len(res.stderr.splitlines()) == 1
    secret.chmod(0o600)
    res = run_cli("members", "--at", "127.0.0.1:1", cwd=tmp_path, env=env)
    assert res.returncode == 1 and res.stderr.startswith("error: no node answered"), res.stderr

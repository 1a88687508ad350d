"""User mistakes: one line on stderr, non-zero exit, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli


@pytest.mark.parametrize("args,env,needle", [
    (["members"], {}, "no cluster found"),
    (["cluster", "status"], {}, "no local cluster"),
    (["cluster", "kill", "node-1"], {}, "no local cluster"),
    (["members", "--at", "127.0.0.1:1"], {}, "no cluster secret"),
    (["members", "--at", "127.0.0.1:1"], {"RAINSTORM_SECRET": "x"}, "no node answered"),
    (["cluster", "status", "--at", "127.0.0.1:1"], {"RAINSTORM_SECRET": "x"}, "no node answered"),
    (["node", "start", "--bind", "nonsense"], {"RAINSTORM_SECRET": "x"}, "bad address"),
    (["node", "start", "--bind", "127.0.0.1:7999"], {}, "no cluster secret"),
])
def test_one_clear_line(tmp_path: Path, args: list[str], env: dict[str, str], needle: str) -> None:
    res = run_cli(*args, cwd=tmp_path, env=env)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_bad_config_file(tmp_path: Path) -> None:
    (tmp_path / "rainstorm.toml").write_text("[cluster]\nnodes = 'five'\n")
    res = run_cli("cluster", "up", cwd=tmp_path)
    assert res.returncode != 0
    assert res.stderr.strip() == "error: [cluster]: nodes must be int"


def test_unknown_node_in_cluster_file(tmp_path: Path) -> None:
    d = tmp_path / ".rainstorm"
    d.mkdir()
    (d / "cluster.json").write_text('{"secret": "s", "nodes": [{"id": "node-1", "address": "127.0.0.1:1"}]}')
    res = run_cli("cluster", "kill", "node-9", cwd=tmp_path)
    assert res.returncode == 1
    assert res.stderr.strip() == "error: unknown node 'node-9'; nodes are node-1"

from pathlib import Path

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
])
def test_bad_files_name_the_problem(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "rainstorm.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load(path)

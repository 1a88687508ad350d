"""A full disk on real nodes: one clear error line from the CLI, nothing half-written, nothing lost.

The nodes' data lives on a 40 MiB tmpfs this test mounts (it needs the privilege to mount; without
it the test is skipped and says so)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LocalCluster, run_cli

pytestmark = pytest.mark.cluster


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mnt)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {res.stderr.strip() or res.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_is_one_clear_line_and_loses_nothing(small_disk: Path, tmp_path: Path) -> None:
    c = LocalCluster(small_disk / "cluster", 3, offset=9)
    try:
        blob = tmp_path / "f8"
        blob.write_bytes(os.urandom(8_000_000))    # 3 copies of 8 MB fit in 40 MiB; 6 do not
        env = {"RAINSTORM_SECRET": c.data["secret"]}
        at = ["--at", c.addr("node-1")]
        assert run_cli("dfs", "create", str(blob), "a", *at, cwd=tmp_path, env=env).returncode == 0
        res = run_cli("dfs", "create", str(blob), "b", *at, cwd=tmp_path, env=env)
        assert res.returncode != 0
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "could not write b" in lines[0] and "full or failing" in lines[0], res.stderr
        assert "Traceback" not in res.stderr
        listing = run_cli("dfs", "list", "--json", *at, cwd=tmp_path, env=env)
        assert '"a"' in listing.stdout and '"b"' not in listing.stdout    # the partial upload was removed
        back = tmp_path / "a.back"
        assert run_cli("dfs", "get", "a", str(back), *at, cwd=tmp_path, env=env).returncode == 0
        assert back.read_bytes() == blob.read_bytes()
    finally:
        c.down()

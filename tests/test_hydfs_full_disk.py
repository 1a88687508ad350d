"""A full disk on real nodes: one clear error line from the CLI, nothing half-written, nothing lost.

The nodes' data lives on a 40 MiB tmpfs this test mounts (it needs the privilege to mount; without
it the test is skipped and says so)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hydfs.ring import Ring
from tests.conftest import LocalCluster, fill, run_cli, small_tmpfs

pytestmark = pytest.mark.cluster


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "disk", "40m") as mnt:
        yield mnt


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


def test_a_replica_with_a_full_disk_leaves_the_in_sync_set_and_the_files_go_on(
        small_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only node-3's disk is small. Once it is full, the files it holds go on with the two others:
    creates and appends succeed, `ls` shows node-3 out of the in-sync set, reads are whole. The lag
    rule is set far out of reach, so only node-3's "I could not write" (sent although its own sync
    fails) can take it out of the sets in time."""
    toml = tmp_path / "rainstorm.toml"
    toml.write_text("[hydfs]\nlag_timeout = 600.0\n")
    monkeypatch.setenv("RAINSTORM_CONFIG", str(toml))   # the node processes inherit it
    root = tmp_path / "cluster"
    (root / "node-3").mkdir(parents=True)
    res = subprocess.run(["mount", "--bind", str(small_disk), str(root / "node-3")], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {res.stderr.strip() or res.returncode}")
    c = LocalCluster(root, 3, offset=10)
    try:
        env = {"RAINSTORM_SECRET": c.data["secret"]}
        at = ["--at", c.addr("node-1")]
        blobs = []
        for k in range(6):   # 6 x 8 MB: node-3's 40 MiB fill on the fifth
            blob = tmp_path / f"f{k}"
            blob.write_bytes(os.urandom(8_000_000))
            blobs.append(blob)
            r = run_cli("dfs", "create", str(blob), f"f{k}", *at, cwd=tmp_path, env=env)
            assert r.returncode == 0, r.stderr
        extra = tmp_path / "extra"
        extra.write_bytes(os.urandom(1_000_000))
        grew = []
        for k in range(len(blobs)):
            ls = json.loads(run_cli("dfs", "ls", f"f{k}", "--json", *at, cwd=tmp_path, env=env).stdout)
            r = run_cli("dfs", "append", str(extra), f"f{k}", *at, cwd=tmp_path, env=env)
            if ls["replicas"][0]["id"] == "node-3":  # its primary cannot write: one clear line
                assert r.returncode != 0 and r.stderr.strip() == (
                    f"error: HyDFS could not write f{k}: the disk of node-3 is full or failing"), r.stderr
                continue
            assert r.returncode == 0, r.stderr
            grew.append(k)
            ls = json.loads(run_cli("dfs", "ls", f"f{k}", "--json", *at, cwd=tmp_path, env=env).stdout)
            in_sync = {x["id"]: x["in_sync"] for x in ls["replicas"]}
            assert in_sync == {"node-1": True, "node-2": True, "node-3": False}, ls
        assert grew, "every file had node-3 as its primary: pick other names"
        st = json.loads(run_cli("cluster", "status", "--json", "--dir", str(root), cwd=tmp_path, env=env).stdout)
        assert {n["id"]: n["disk"] for n in st["nodes"]} == {"node-1": "ok", "node-2": "ok", "node-3": "failing"}
        for k, blob in enumerate(blobs):
            back = tmp_path / f"back{k}"
            assert run_cli("dfs", "get", f"f{k}", str(back), *at, cwd=tmp_path, env=env).returncode == 0
            assert back.read_bytes() == blob.read_bytes() + (extra.read_bytes() if k in grew else b"")
        # not one more byte fits on node-3 now, but it can still promise (the journal's reserve): the
        # creates it leads fail with the one line, the others succeed. Long names make their records
        # outgrow the page the journal had started (~9 KB of records), so the reserve is needed.
        fill(small_disk)
        ring = Ring(["node-1", "node-2", "node-3"])
        names = [f"g{k}-" + "n" * 400 for k in range(16)]
        small = tmp_path / "small"
        small.write_bytes(b"s" * 1000)
        for name in names:
            r = run_cli("dfs", "create", str(small), name, *at, cwd=tmp_path, env=env)
            if ring.primary(name) == "node-3":
                assert r.returncode != 0 and r.stderr.strip() == (
                    f"error: HyDFS could not write {name}: the disk of node-3 is full or failing"), r.stderr
            else:
                assert r.returncode == 0, r.stderr
                back = tmp_path / "small.back"
                assert run_cli("dfs", "get", name, str(back), *at, cwd=tmp_path, env=env).returncode == 0
                assert back.read_bytes() == small.read_bytes()
        assert {ring.primary(n) == "node-3" for n in names} == {True, False}
    finally:
        c.down()
        subprocess.run(["umount", "-l", str(root / "node-3")], capture_output=True)

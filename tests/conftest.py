"""Shared fixtures: real local clusters in a temporary directory, on ports no other run uses."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rainstorm import cluster as local
from rainstorm.config import Config
from rainstorm.locate import run_rpc


@contextlib.contextmanager
def small_tmpfs(mnt: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``mnt`` for the block (the test is skipped, saying why, where
    this process may not mount)."""
    mnt.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {res.stderr.strip() or res.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(disk: Path) -> Path:
    """Write a filler file until the file system under ``disk`` refuses a single byte more."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 16, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    with pytest.raises(OSError):
        (disk / "probe").write_bytes(b"x" * 4096)
    return filler


def free_base(offset: int = 0) -> int:
    # spread concurrent test runs over 10000-31999, below the kernel's ephemeral range (32768+) so an
    # outgoing connection never takes the port of a node that is down for a restart; up() still probes
    return 10000 + (os.getpid() * 37 + offset * 400) % 21000


class LocalCluster:
    def __init__(self, directory: Path, nodes: int, offset: int = 0) -> None:
        self.dir = directory
        cfg = Config()
        cfg.cluster.base_port = free_base(offset)
        cfg.cluster.redis_base_port = cfg.cluster.base_port + 200
        self.data = local.up(directory, nodes, cfg)

    def node(self, node_id: str) -> dict[str, Any]:
        return local.node_of(self.data, node_id)

    def addr(self, node_id: str) -> str:
        return self.node(node_id)["address"]

    def call(self, node_id: str, method: str, args: dict[str, Any] | None = None) -> Any:
        async def body(client: Any) -> Any:
            return await client.call(self.addr(node_id), method, args, timeout=3.0)

        return run_rpc(self.data["secret"], body)

    def control(self, method: str, args: dict[str, Any] | None = None, timeout: float = 15.0) -> Any:
        """A controller request through the first node that answers (every node forwards to the leader)."""
        from rainstorm.locate import call_any

        async def body(client: Any) -> Any:
            return await call_any(client, [n["address"] for n in self.data["nodes"]], f"control.{method}", args,
                                  timeout=timeout)

        return run_rpc(self.data["secret"], body)

    def leader(self) -> str | None:
        """The controller's leader as the first node that answers sees it."""
        from rainstorm.locate import call_any

        async def body(client: Any) -> Any:
            return await call_any(client, [n["address"] for n in self.data["nodes"]], "control.leader", {},
                                  timeout=2.0)

        return run_rpc(self.data["secret"], body).get("leader")

    def view(self, node_id: str) -> dict[str, dict[str, Any]]:
        return {m["id"]: m for m in self.call(node_id, "node.members")}

    def reload(self) -> None:
        data = local.read_cluster(self.dir)
        assert data is not None
        self.data = data

    def down(self) -> None:
        if local.read_cluster(self.dir) is not None:
            local.down(self.dir)


def wait_for(cond: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> float:
    """Poll ``cond`` until true; returns the seconds it took. Fails the test with ``what``."""
    start = time.monotonic()
    last_exc: Exception | None = None
    while time.monotonic() - start < timeout:
        try:
            if cond():
                return time.monotonic() - start
        except Exception as exc:  # a node may be briefly unreachable while we poll
            last_exc = exc
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc})"
                                                                              if last_exc else ""))


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    made: list[LocalCluster] = []

    def make(nodes: int = 5) -> LocalCluster:
        c = LocalCluster(tmp_path / f"c{len(made)}", nodes, offset=len(made))
        made.append(c)
        return c

    yield make
    for c in made:
        c.down()


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real `rainstorm` command in a subprocess, without any RAINSTORM_* of the caller's shell."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAINSTORM_")}
    return subprocess.run([sys.executable, "-m", "rainstorm", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={**base, **(env or {})})

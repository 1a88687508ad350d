"""Trim on a real local cluster: through ``hydfs.Client``, then SIGKILL a replica and restart it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from hydfs.api import Client, HydfsError
from rainstorm import cluster as local
from tests.conftest import pid_alive, run_cli, wait_for
from tests.test_hydfs_cluster import run

pytestmark = pytest.mark.cluster
NAME = "rs/trim/log/0.0"


def _log_file(c_dir: Path, node: str) -> Path:
    return c_dir / node / "hydfs" / (hashlib.sha256(NAME.encode()).hexdigest()[:40] + ".log")


def test_trim_then_a_killed_replica_restarts_with_the_retained_entries(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c = make_cluster(4)
    payload = [b"rec %03d " % i + b"x" * 4000 for i in range(30)]

    async def setup(new: Callable[..., Client]) -> list[str]:
        cl = new()
        await cl.create(NAME, payload[0])
        for p in payload[1:]:
            await cl.append(NAME, p)
        replicas = list((await cl.ls(NAME))["replicas"])
        for r in replicas:  # every copy vouched for, as in test_hydfs_cluster.py
            assert len(await cl.getfromreplica(r, NAME)) == sum(map(len, payload))
        assert await cl.trim(NAME, 21) == 21
        with pytest.raises(HydfsError) as err:
            await cl.trim(NAME, 40)
        assert err.value.code == "trim_range"
        assert [i for i, _ in await cl.get_entries(NAME)] == list(range(21, 32))  # 31: the marker
        assert (await cl.ls(NAME))["first"] == 21
        return replicas

    replicas = run(c, setup)
    env, at = {"RAINSTORM_SECRET": c.data["secret"]}, ["--at", c.addr("node-1")]
    shown = run_cli("dfs", "ls", NAME, "--json", *at, cwd=c.dir, env=env)
    assert shown.returncode == 0 and json.loads(shown.stdout)["first"] == 21, shown.stderr
    assert "from index 21" in run_cli("dfs", "ls", NAME, *at, cwd=c.dir, env=env).stdout
    victim = replicas[1]
    assert wait_for(lambda: _log_file(c.dir, victim).stat().st_size < 12 * 4100, 10, "the victim's log shrank")
    pid = c.node(victim)["pid"]
    local.kill(c.dir, victim)
    wait_for(lambda: not pid_alive(pid), 10, "the SIGKILLed node is gone")
    local.restart(c.dir, victim)
    c.reload()

    async def after(new: Callable[..., Client]) -> bytes | None:
        cl = new()
        assert [d for _, d in await cl.get_entries(NAME)] == [*payload[20:], b""]
        try:
            return await cl.getfromreplica(victim, NAME)
        except HydfsError:
            return None

    retained = b"".join(payload[20:])
    wait_for(lambda: run(c, after) == retained, 20, "the restarted replica serves the retained entries", step=0.5)
    assert _log_file(c.dir, victim).stat().st_size < 12 * 4100  # still trimmed on disk after the restart
    assert run(c, lambda new: new().append(NAME, b"next")) == 32

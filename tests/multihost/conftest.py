"""Fixtures for the multi-host tests: networks of namespaces and RainStorm clusters on them.

Every test here is skipped, with the reason, where namespaces cannot be made (not root, no `ip` or
`iptables`, a kernel or container that refuses `ip netns add`). Leftovers of crashed earlier runs are
swept once per session; every Net a test makes is closed after it and checked to leave nothing. When
a test fails, the last lines of every node log of its clusters are added to the report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.multihost import harness


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "multihost: needs root; runs hosts in Linux network namespaces")


@pytest.fixture(scope="session")
def _swept() -> list[str]:
    """Once per session, before the first Net: remove what dead earlier runs left behind."""
    removed = harness.sweep()
    if removed:
        print(f"multihost: removed leftovers of earlier runs: {removed}")
    return removed


@pytest.fixture(autouse=True)
def _namespaces(request: pytest.FixtureRequest) -> None:
    reason = harness.available()
    if reason is not None:
        pytest.skip(f"multihost tests need network namespaces: {reason}")
    request.getfixturevalue("_swept")


@pytest.fixture
def make_net() -> Iterator[Callable[[int], harness.Net]]:
    """``make_net(n)``: a Net of n hosts, closed after the test; the test fails if anything is left."""
    made: list[harness.Net] = []

    def make(n: int) -> harness.Net:
        net = harness.Net(n)
        made.append(net)
        return net

    yield make
    errors = []
    for net in made:
        try:
            net.close()
        except Exception as exc:   # close every Net even if one fails
            errors.append(f"{net}: {exc}")
        left = net.leftovers()
        if left:
            errors.append(f"{net} left {left}")
    assert not errors, errors


@pytest.fixture
def make_ns_cluster(make_net: Callable[[int], harness.Net],
                    tmp_path: Path) -> Iterator[Callable[..., harness.Cluster]]:
    """``make_ns_cluster(n=5, **kw)``: a Net of n hosts with a started, converged cluster on it
    (``kw`` go to :class:`harness.Cluster`). Nodes are killed, then the Net removed, after the test."""
    made: list[harness.Cluster] = []

    def make(n: int = 5, **kw: Any) -> harness.Cluster:
        net = make_net(n)
        c = harness.Cluster(net, tmp_path / f"ns{len(made)}", **kw)
        made.append(c)
        return c.start()

    yield make
    for c in made:
        c.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On a failure, add the tail of every node log of every live cluster to the report."""
    outcome: Any = yield
    rep = outcome.get_result()
    if rep.failed and call.when in ("setup", "call"):
        for c in harness.live_clusters():
            rep.sections.append((f"node logs (net {c.net.tag}, last 40 lines each)", c.tails(40)))

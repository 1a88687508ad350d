"""A node lifts its open-file soft limit: HyDFS keeps a descriptor per stored file."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest


def test_the_soft_open_file_limit_is_raised_to_the_hard_one() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"hard limit {hard} leaves nothing to raise")

    def low() -> None:  # the common desktop default, scaled down
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    code = ("import resource; from rainstorm.node import raise_open_file_limit; "
            "before = resource.getrlimit(resource.RLIMIT_NOFILE)[0]; got = raise_open_file_limit(); "
            "print(before, got, resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    out = subprocess.run([sys.executable, "-c", code], preexec_fn=low, capture_output=True, text=True, check=True)
    before, got, now = (int(x) for x in out.stdout.split())
    assert before == 256
    assert got == now and now > 256
    if hard != resource.RLIM_INFINITY:
        assert now == hard


def test_the_trimmer_gives_freed_heap_memory_back() -> None:
    """glibc keeps memory freed in the middle of its heap; a node's RSS rose with its caches' churn
    (the soak: 10-17 MB a node came back at one call). ``Trimmer.once`` hands it back."""
    import ctypes.util

    from rainstorm.node import Trimmer

    if "libc.so.6" not in (ctypes.util.find_library("c") or ""):
        pytest.skip("malloc_trim is glibc's")
    held = [bytes(100_000) + bytes([i % 256]) for i in range(600)]   # below the mmap threshold: heap
    kept = held[9::10]                                                 # every tenth stays: holes between
    del held
    t = Trimmer(0)
    freed = t.once()
    assert freed >= 20, freed
    assert t.stats["runs"] == 1 and t.stats["freed_mb"] >= 20 and len(kept) == 60

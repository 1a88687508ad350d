"""What every benchmark prints first: the machine it ran on."""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return f"{platform.node()}: {cpu}, {os.cpu_count()} cores{mem}, {platform.system()} {platform.release()}, " \
           f"Python {platform.python_version()}"


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); honest for small samples."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(p / 100 * len(s) + 0.5) - 1))
    return s[k]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")

"""RainStorm, memory check: keep the status-500 lines as they are (no state, one stage)."""

from rainstorm import FilteredTransform


def is_500(key: str, value: str) -> bool:
    return value.split(",", 5)[4] == "500"


stages = [FilteredTransform(is_500)]

"""RainStorm: running count of status-500 lines per path (line: ip,timestamp,method,path,status,bytes)."""

from rainstorm import AggregateByKey, FilteredTransform


def is_500(key: str, value: str) -> bool:
    return value.split(",", 5)[4] == "500"


def path(key: str, value: str) -> tuple[str, int]:
    return value.split(",", 4)[3], 1


stages = [
    FilteredTransform(is_500, path),
    AggregateByKey(lambda key, _value: key, "count"),  # the key is the path
]

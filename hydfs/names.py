"""HyDFS file names: checked once at the edge so no layer below sees a path trick."""

from __future__ import annotations

MAX_NAME = 1024


class BadName(ValueError):
    pass


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise BadName("a file name must be a non-empty string")
    if len(name.encode()) > MAX_NAME:
        raise BadName(f"file name longer than {MAX_NAME} bytes")
    if "\0" in name:
        raise BadName("file name contains NUL")
    if name.startswith("/"):
        raise BadName(f"file name {name!r} is absolute; HyDFS names are relative")
    if any(part in ("..", ".") for part in name.split("/")) or "//" in name or name.endswith("/"):
        raise BadName(f"file name {name!r} has an empty, '.' or '..' component")
    if any(ord(c) < 32 for c in name):
        raise BadName("file name contains a control character")
    return name

"""Tables derived from the log itself, and the preconditions checked against them.

Because the idempotency table and the fence table are functions of the entries, whatever carries
the entries (merge, re-replication, a new primary adopting a log) carries the tables too: a new
primary rebuilds them by one scan of its adopted log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from hydfs.entries import Entry
from hydfs.messages import FENCED, LEN_MISMATCH, OUT_OF_ORDER


class Tables:
    """(client id, seq) -> index, and fence key -> highest epoch, over a whole log."""

    __slots__ = ("dedup", "fences")

    def __init__(self) -> None:
        self.dedup: dict[tuple[str, int], int] = {}
        self.fences: dict[str, int] = {}

    def add(self, entries: Iterable[Entry]) -> None:
        for e in entries:
            self.dedup[(e.client_id, e.client_seq)] = e.index
            if e.fence is not None and e.epoch is not None and e.epoch > self.fences.get(e.fence, -1):
                self.fences[e.fence] = e.epoch


Checker = Callable[[dict[str, Any], Tables, int, str], str | None]


def _fence(cond: dict[str, Any], tables: Tables, last: int, client: str) -> str | None:
    return FENCED if cond["epoch"] < tables.fences.get(cond["fence"], -1) else None


def _expect_len(cond: dict[str, Any], tables: Tables, last: int, client: str) -> str | None:
    return LEN_MISMATCH if last != cond["expect_len"] else None


def _after(cond: dict[str, Any], tables: Tables, last: int, client: str) -> str | None:
    """A pipelining writer's appends land in its seq order: seq n must be ordered (committed or not)
    before the append that names it, as Kafka's idempotent producer checks its sequence numbers."""
    return None if (client, cond["after"]) in tables.dedup else OUT_OF_ORDER


# key that switches a check on -> the check, in the order they run (a final refusal before a
# transient one). The schema of each key lives in messages.COND_FIELDS.
CHECKS: dict[str, Checker] = {"fence": _fence, "expect_len": _expect_len, "after": _after}


def check(cond: dict[str, Any] | None, tables: Tables, last: int, client: str = "") -> str | None:
    """The first failing precondition's error code, or None. ``last`` = entries ordered before;
    ``client`` = the client id of the append's (client id, seq) key."""
    if not cond:
        return None
    for key, fn in CHECKS.items():
        if key in cond:
            err = fn(cond, tables, last, client)
            if err:
                return err
    return None


def fence_of(cond: dict[str, Any] | None) -> tuple[str | None, int | None]:
    if cond and "fence" in cond:
        return cond["fence"], cond["epoch"]
    return None, None

"""Tables derived from the log itself, and the preconditions checked against them.

Because the idempotency table and the fence table are functions of the entries, whatever carries
the entries (merge, re-replication, a new primary adopting a log) carries the tables too: a new
primary rebuilds them by one scan of its adopted log. A trim (docs/hydfs.md, "Trim") keeps them a
function of the *retained* log: its marker entry carries, per client, the highest seq it drops (the
client's *floor*) and the whole fence table, and the dedup table keeps only retained entries. A floor
goes once its client is fenced out: every one of its trimmed entries carried one fence key, and the
fence table has since passed the highest epoch they carried (a dead task instance), so any retry of
its is refused ``fenced`` anyway.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from itertools import takewhile
from typing import Any

from hydfs.entries import Entry, TrimMark
from hydfs.messages import FENCED, LEN_MISMATCH, OUT_OF_ORDER, TRIMMED


class Tables:
    """(client id, seq) -> index over the retained log, per client the highest trimmed seq, and fence
    key -> highest epoch over the whole log (trimmed entries included)."""

    __slots__ = ("dedup", "fenced", "fences", "floors", "order")

    def __init__(self) -> None:
        self.dedup: dict[tuple[str, int], int] = {}
        self.fences: dict[str, int] = {}
        self.floors: dict[str, int] = {}
        self.fenced: dict[str, tuple[str, int]] = {}   # TrimMark.fenced of the last marker
        # (index, dedup key, fence, epoch) by index: for prune, and for the next marker's floors
        self.order: deque[tuple[int, tuple[str, int], str | None, int | None]] = deque()

    def add(self, entries: Iterable[Entry]) -> None:
        for e in entries:
            key = (e.client_id, e.client_seq)
            self.dedup[key] = e.index
            self.order.append((e.index, key, e.fence, e.epoch))
            if e.fence is not None and e.epoch is not None and e.epoch > self.fences.get(e.fence, -1):
                self.fences[e.fence] = e.epoch
            if e.trim is not None:
                # markers are cumulative: the last one holds every floor still needed (pruned ones are gone)
                self.floors = dict(e.trim.floors)
                self.fenced = dict(e.trim.fenced)
                _merge(self.fences, e.trim.fences)

    def mark(self, below: int) -> TrimMark:
        """The marker of a trim below ``below``: the floors of the entries it drops merged into the
        floors so far, less those of clients fenced out since, and the fence table. Costs the dropped
        entries still in the table."""
        floors, fenced = dict(self.floors), dict(self.fenced)
        for _, (client, seq), fence, epoch in takewhile(lambda item: item[0] < below, self.order):
            if client not in floors:
                if fence is not None and epoch is not None:
                    fenced[client] = (fence, epoch)
            elif client in fenced and fenced[client][0] == fence and epoch is not None:
                fenced[client] = (fence, max(epoch, fenced[client][1]))
            else:
                fenced.pop(client, None)   # an unfenced entry, or another key: its floor stays for good
            if seq > floors.get(client, -1):
                floors[client] = seq
        for client, (fence, epoch) in list(fenced.items()):
            if self.fences.get(fence, -1) > epoch:
                del floors[client], fenced[client]
        return TrimMark(below, floors, dict(self.fences), fenced)

    def prune(self, first: int) -> None:
        """Forget the dedup entries of the entries a trim dropped (their floors stay)."""
        while self.order and self.order[0][0] < first:
            index, key, _, _ = self.order.popleft()
            if self.dedup.get(key) == index:
                del self.dedup[key]

    def trimmed(self, client: str, seq: int) -> bool:
        """An append under this key, not in the retained log, is at or below its client's floor: it was
        ordered once and trimmed since (a retry), or its writer broke the seq order the window needs."""
        return seq <= self.floors.get(client, -1)


def _merge(into: dict[str, int], table: dict[str, int]) -> None:
    for k, v in table.items():
        if v > into.get(k, -1):
            into[k] = v


Checker = Callable[[dict[str, Any], Tables, int, str], str | None]


def _fence(cond: dict[str, Any], tables: Tables, last: int, client: str) -> str | None:
    return FENCED if cond["epoch"] < tables.fences.get(cond["fence"], -1) else None


def _expect_len(cond: dict[str, Any], tables: Tables, last: int, client: str) -> str | None:
    return LEN_MISMATCH if last != cond["expect_len"] else None


def _after(cond: dict[str, Any], tables: Tables, last: int, client: str) -> str | None:
    """A pipelining writer's appends land in its seq order: seq n must be ordered (committed or not)
    before the append that names it, as Kafka's idempotent producer checks its sequence numbers. One at
    or below the client's floor was ordered before a trim dropped it."""
    n = cond["after"]
    return None if (client, n) in tables.dedup or tables.trimmed(client, n) else OUT_OF_ORDER


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


def refuse_trimmed(tables: Tables, client: str, seq: int) -> str | None:
    """The error for an append whose key the dedup table no longer knows because a trim dropped it."""
    return TRIMMED if tables.trimmed(client, seq) else None


def fence_of(cond: dict[str, Any] | None) -> tuple[str | None, int | None]:
    if cond and "fence" in cond:
        return cond["fence"], cond["epoch"]
    return None, None

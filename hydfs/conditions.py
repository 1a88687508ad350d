"""Tables derived from the log itself, and the preconditions checked against them.

Because the idempotency table and the fence table are functions of the entries, whatever carries
the entries (merge, re-replication, a new primary adopting a log) carries the tables too: a new
primary rebuilds them by one scan of its adopted log. A trim (docs/hydfs.md, "Trim") keeps them a
function of the *retained* log: its marker entry carries, per client, the highest seq it drops (the
client's *floor*) and the whole fence table, and the dedup table keeps only retained entries (each
client's latest ``DEDUP_WINDOW`` of them: see :class:`Tables`). A floor
goes once its client is fenced out: every one of its trimmed entries carried one fence key, and the
fence table has since passed the highest epoch they carried (a dead task instance), so any retry of
its is refused ``fenced`` anyway.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from hydfs.entries import Entry, TrimMark
from hydfs.messages import FENCED, LEN_MISMATCH, OUT_OF_ORDER, TRIMMED

DEDUP_WINDOW = 1024   # the latest appends per client whose index a retry gets back (see Tables)


class _Client:
    """One client's latest appends in the table (seq, index), oldest first, and what the table forgot
    of it: the highest seq and index it let go of, and the one fence its entries carried (if one)."""

    __slots__ = ("epoch", "evicted_index", "evicted_seq", "fence", "mixed", "recent")

    def __init__(self) -> None:
        self.recent: deque[tuple[int, int]] = deque()
        self.evicted_seq = self.evicted_index = -1
        self.fence: str | None = None
        self.epoch = -1
        self.mixed = False      # an unfenced entry, or two fence keys: its floor is never dropped


class Tables:
    """(client id, seq) -> index for each client's latest ``window`` appends in the retained log; per
    client the highest seq trimmed (``floors``, from the last marker) or let go of; and fence key ->
    highest epoch over the whole log (trimmed entries included).

    Why a window per client is enough: a client's appends land in its seq order (docs/hydfs.md), and it
    retries only what it has not seen acknowledged, at most its pipeline (the stream layer's
    ``inflight``, 4) behind its latest. So a key at or below the highest seq the table let go of was
    ordered, and is answered ``trimmed`` ("it landed; not appended again") like a trimmed one. Without
    this a file never trimmed (a source, an output) kept one table entry per append for ever."""

    __slots__ = ("clients", "dedup", "fenced", "fences", "floors", "window")

    def __init__(self, window: int | None = None) -> None:
        self.window = window or DEDUP_WINDOW
        self.dedup: dict[tuple[str, int], int] = {}
        self.fences: dict[str, int] = {}
        self.floors: dict[str, int] = {}
        self.fenced: dict[str, tuple[str, int]] = {}   # TrimMark.fenced of the last marker
        self.clients: dict[str, _Client] = {}

    def add(self, entries: Iterable[Entry]) -> None:
        for e in entries:
            c = self.clients.get(e.client_id)
            if c is None:
                c = self.clients[e.client_id] = _Client()
                c.fence = e.fence
            self.dedup[(e.client_id, e.client_seq)] = e.index
            c.recent.append((e.client_seq, e.index))
            if len(c.recent) > self.window:
                seq, index = c.recent.popleft()
                self._forget(e.client_id, seq, index)
                c.evicted_seq, c.evicted_index = max(c.evicted_seq, seq), max(c.evicted_index, index)
            if e.fence is None or e.epoch is None or e.fence != c.fence:
                c.mixed = True
            else:
                c.epoch = max(c.epoch, e.epoch)
            if e.fence is not None and e.epoch is not None and e.epoch > self.fences.get(e.fence, -1):
                self.fences[e.fence] = e.epoch
            if e.trim is not None:
                # markers are cumulative: the last one holds every floor still needed (pruned ones are gone)
                self.floors = dict(e.trim.floors)
                self.fenced = dict(e.trim.fenced)
                _merge(self.fences, e.trim.fences)

    def _forget(self, client: str, seq: int, index: int) -> None:
        if self.dedup.get((client, seq)) == index:
            del self.dedup[(client, seq)]

    def mark(self, below: int) -> TrimMark:
        """The marker of a trim below ``below``: per client with entries below it, the highest seq
        among them (or the highest it let go of, which is lower than its retained ones) merged into the
        floors so far, less the floors of clients fenced out since; and the fence table. Costs one step
        per client and per dropped entry still in the table."""
        floors, fenced = dict(self.floors), dict(self.fenced)
        for client, c in self.clients.items():
            dropped = -1 < c.evicted_index < below or bool(c.recent and c.recent[0][1] < below)
            if not dropped:
                continue    # nothing of this client is dropped that the table still knows of
            top = c.evicted_seq if -1 < c.evicted_index < below else -1
            for seq, index in c.recent:
                if index >= below:
                    break
                top = max(top, seq)
            if client not in floors:
                if not c.mixed and c.fence is not None:
                    fenced[client] = (c.fence, c.epoch)
            elif client in fenced and not c.mixed and fenced[client][0] == c.fence:
                fenced[client] = (c.fence, max(c.epoch, fenced[client][1]))
            else:
                fenced.pop(client, None)   # an unfenced entry, or another key: its floor stays for good
            if top > floors.get(client, -1):
                floors[client] = top
        for client, (fence, epoch) in list(fenced.items()):
            if self.fences.get(fence, -1) > epoch:
                del floors[client], fenced[client]
        return TrimMark(below, floors, dict(self.fences), fenced)

    def prune(self, first: int) -> None:
        """Forget the dedup entries of the entries a trim dropped (their floors stay), and the clients
        with nothing left in the retained log."""
        for client in list(self.clients):
            c = self.clients[client]
            while c.recent and c.recent[0][1] < first:
                seq, index = c.recent.popleft()
                self._forget(client, seq, index)
            if not c.recent and c.evicted_index < first:
                del self.clients[client]

    def trimmed(self, client: str, seq: int) -> bool:
        """An append under this key, not in the table, is at or below its client's floor or below what
        the table let go of: it was ordered once (a retry), or its writer broke the seq order."""
        c = self.clients.get(client)
        return seq <= self.floors.get(client, -1) or (c is not None and seq <= c.evicted_seq)


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

"""What the per-file protocol pieces (replica side, primary side) need from their node.

Kept as a Protocol so :mod:`hydfs.replica` and :mod:`hydfs.primary` can be read and tested without
the dispatch code in :mod:`hydfs.node_core`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

from hydfs.entries import Runs
from hydfs.storage import FileMeta, Storage, Version


@dataclass(frozen=True)
class CoreConfig:
    replicas: int = 3
    retry: float = 0.5            # resend an unanswered protocol message after this long
    offer_every: float = 1.0      # how often a holder reminds the primary it has a file
    scan_every: float = 0.25      # how often to look over all held files (takeover retries, offers)
    settle: float = 3.0           # after (re)joining, neither lead nor vouch for this long: must exceed
    #                               the time the membership layer needs to spread a change everywhere
    backoff: float = 0.3          # wait before retrying a failed takeover (times 1..2, randomised)
    sync_timeout: float = 2.0     # a new primary waits this long for replicas to catch up
    lag_timeout: float = 5.0      # an in-sync replica behind and not advancing this long leaves the set
    #                               (set from [hydfs] lag_timeout on real nodes)
    stall: float = 1.0            # this node did nothing this long (SIGSTOP, a starved loop): it may have
    #                               been declared failed meanwhile, so it acts as a node that was
    batch_entries: int = 256      # entries per append / fetch message
    batch_bytes: int = 1 << 20    # and bytes
    window_bytes: int = 8 << 20   # data sent to one replica ahead of its answers
    queue_limit: int = 10_000     # client requests a primary holds while it cannot serve
    read_limit: int = 1000        # entries per get reply
    range_bytes: int = 4 << 20    # data bytes per ranged-read reply (a reader asking for more loops)


@dataclass
class FileVol:
    """Per-file state a node rebuilds after a restart (never persisted)."""

    commit: int = 0          # highest index known acknowledged (reads stop here)
    trusted: bool = False    # got the current in-sync set from a primary since start / rejoin / declared
    #                          failed, while settled: we may vouch that no newer set exists
    confirmed: tuple[str, int] | None = None  # (primary, view epoch) that contacted us
    last_offer: float = -math.inf


@dataclass
class Report:
    """A node's durable state for one file, as a new primary collects it."""

    created: int | None
    deleted: tuple[int, int] | None
    last: int
    last_term: int
    runs: Runs
    ver: Version | None
    isr: tuple[str, ...]
    trusted: bool
    first: int = 1           # first retained index: a trim dropped the entries below it

    def key(self) -> tuple[int, int, int]:
        """Order of adoption: highest last term, then longest; a tombstone beats the log it ended. A trim
        does not change it: indexes stay, and only committed entries are ever trimmed."""
        if self.deleted is not None:
            return (self.deleted[0], self.deleted[1], 2)
        if self.created is not None:
            return (max(self.last_term, self.created), self.last, 1)
        return (0, 0, 0)

    @property
    def holds(self) -> bool:
        return self.created is not None or self.deleted is not None or self.ver is not None

    def fields(self) -> dict[str, Any]:
        return {"created": self.created, "deleted": list(self.deleted) if self.deleted else None,
                "last": self.last, "last_term": self.last_term, "runs": [[a, b] for a, b in self.runs],
                "ver": list(self.ver) if self.ver else None, "isr": list(self.isr),
                "trusted": self.trusted, "first": self.first}

    @classmethod
    def from_msg(cls, m: dict[str, Any]) -> Report:
        return cls(m["created"], m["deleted"], m["last"], m["last_term"], m["runs"], m["ver"],
                   m["isr"], m["trusted"], m.get("first") or 1)


def report_of(storage: Storage, name: str, meta: FileMeta | None, trusted: bool) -> Report:
    last, last_term = storage.last(name)
    m = meta or FileMeta()
    return Report(m.created, m.deleted, last, last_term, storage.runs(name) if last else [], m.ver, m.isr,
                  trusted, storage.first(name))


class Host(Protocol):
    node_id: str
    storage: Storage
    config: CoreConfig
    view_epoch: int

    def send(self, dest: str, msg: dict[str, Any]) -> None: ...

    def note(self, event: str, **fields: Any) -> None:
        """Something an operator may want in the node's log (the edge writes it; the simulator counts it)."""
        ...

    def vol(self, name: str) -> FileVol: ...

    def is_alive(self, node_id: str) -> bool: ...

    def replicas(self, name: str) -> list[str]: ...

    def primary_of(self, name: str) -> str | None: ...

    def settled(self) -> bool: ...

"""The in-memory Raft log: a snapshot boundary ``(snap_index, snap_term)`` and the entries after it.

Index 0 (term 0) is the empty log's boundary, so every log has a term at ``snap_index``; entries at or
before it are compacted into the snapshot and answer ``None``.
"""

from __future__ import annotations

from collections.abc import Iterable

from raft.messages import Entry

ENTRY_OVERHEAD = 16  # bytes an entry costs in a message besides its data, for the per-message budget


class RaftLog:
    def __init__(self, snap_index: int = 0, snap_term: int = 0, entries: Iterable[Entry] = ()) -> None:
        self.snap_index = snap_index
        self.snap_term = snap_term
        self.entries = [e for e in entries if e.index > snap_index]
        for k, e in enumerate(self.entries):
            if e.index != snap_index + 1 + k:
                raise ValueError(f"log entries not consecutive after {snap_index}: {e.index} at position {k}")

    @property
    def last_index(self) -> int:
        return self.snap_index + len(self.entries)

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snap_term

    def term(self, index: int) -> int | None:
        """The term at ``index``; None before the snapshot boundary or past the end."""
        if index == self.snap_index:
            return self.snap_term
        if index < self.snap_index or index > self.last_index:
            return None
        return self.entries[index - self.snap_index - 1].term

    def between(self, lo: int, hi: int) -> list[Entry]:
        """Entries ``lo..hi`` inclusive (clipped to what the log holds)."""
        base = self.snap_index + 1
        return self.entries[max(lo - base, 0):max(hi - base + 1, 0)]

    def batch(self, lo: int, max_entries: int, max_bytes: int) -> list[Entry]:
        """Entries from ``lo`` within a message's budget, but at least one if there is one."""
        out: list[Entry] = []
        size = 0
        for e in self.between(lo, lo + max_entries - 1):
            size += len(e.data) + ENTRY_OVERHEAD
            if out and size > max_bytes:
                break
            out.append(e)
        return out

    def append(self, entries: list[Entry]) -> None:
        if entries and entries[0].index != self.last_index + 1:
            raise ValueError(f"append at {entries[0].index} to a log ending at {self.last_index}")
        self.entries.extend(entries)

    def truncate_from(self, index: int) -> None:
        """Drop entries ``index..`` (a conflicting suffix)."""
        del self.entries[max(index - self.snap_index - 1, 0):]

    def compact(self, index: int, term: int) -> None:
        """Drop entries ``..index``: they are in a snapshot now."""
        del self.entries[:max(index - self.snap_index, 0)]
        self.snap_index, self.snap_term = index, term

    def up_to_date(self, last_index: int, last_term: int) -> bool:
        """A candidate's log ending at ``(last_index, last_term)`` is at least as up to date as ours (§5.4.1)."""
        return (last_term, last_index) >= (self.last_term, self.last_index)

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """The largest index <= ``index`` whose term is <= ``term`` (or the snapshot boundary).

        A follower answers a rejected append with it, and the leader maps the answer onto its own log:
        every entry in between has a term the other side cannot match, so one round trip skips a whole
        term of conflicting entries instead of one entry (etcd's fast backoff)."""
        index = min(index, self.last_index)
        while index > self.snap_index:
            t = self.term(index)
            if t is not None and t <= term:
                break
            index -= 1
        return index

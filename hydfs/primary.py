"""The primary side of one file: a takeover under a new term, then ordered, acknowledged appends.

Takeover (phases ``prepare`` -> ``fetch`` -> ``sync`` -> establish):
  1. raise the term and ask every possible holder for its state (``prepare``); each promises the
     term, so from then on it rejects the old primary;
  2. wait for a *witness*: take the newest in-sync set any responder knows (highest version); every
     live member of it must have answered, and one member must vouch it is current (``trusted``) -
     or all members answered. Then every acknowledged append is in some answer. A node vouches only
     after a primary gave it the current set since it last started, rejoined or was declared
     failed, and only once it has been alive ``settle`` seconds (no stale view of it as dead is
     left anywhere): a member is dropped from a set without its consent only when declared failed;
  3. adopt the best answer (highest last term, then longest; a tombstone beats the log it ended),
     fetch the missing suffix from its holder, truncate our own divergent suffix;
  4. bring the live replicas to exactly that log (they truncate any divergent suffix);
  5. install the term's first in-sync set on every live node of the old set, the new set and the
     responders; only then commit the adopted log and accept appends.

In-sync set (``isr``): an append is acknowledged once every member has it. It changes one step at
a time by a versioned ``set_isr`` that every live node of the old and new set persists before it
takes effect: a member the membership layer declared failed leaves; a replica joins once it has the
whole log; a member that no longer owns the file leaves once all owners are in. Writes pause while
a change is pending.

Trim (``c_trim``): a marker entry ordered like any append (fenced, idempotent, replicated); every
copy drops the entries below it once it knows the marker committed. A replica whose log ends below
our first entry is installed from it (the ``base`` of an append), and a takeover whose best answer
starts past our common prefix installs our own copy before it fetches.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from hydfs.conditions import Tables, check, fence_of, refuse_trimmed
from hydfs.context import Host, Report, report_of
from hydfs.entries import Entry, Runs, TrimMark, common_prefix, extend_runs, runs_upto, term_at
from hydfs.messages import (
    BUSY,
    DELETED,
    EXISTS,
    NOT_FOUND,
    NOT_PRIMARY,
    TRIM_RANGE,
    Msg,
    entries_wire,
    reply,
    runs_wire,
)
from hydfs.storage import FileMeta, Storage, Version, apply_trims

PREPARE, FETCH, SYNC, ACTIVE = "prepare", "fetch", "sync", "active"
WRITES = frozenset({"c_append", "c_create", "c_rm", "c_trim"})


def committed_range(storage: Storage, name: str, offset: int, length: int, commit: int,
                    cap: int) -> tuple[bytes, int]:
    """At most ``cap`` of the bytes ``[offset, offset + length)`` of a copy whose entries 1..commit are
    acknowledged, and the size of those entries' data."""
    size = storage.data_end(name, commit)
    off = min(offset, size)
    return storage.read_bytes(name, off, min(length, size - off, cap)), size


def get_reply(storage: Storage, name: str, m: Msg, commit: int, limit: int, max_bytes: int) -> Msg:
    """The answer to a page of ``get`` (``c_get``): entries from ``start`` (or the copy's first entry,
    if a trim dropped those before it) up to ``commit``, and the copy's first index."""
    first = storage.first(name)
    start = max(m["start"], first)
    stop = min(commit, start + min(max(m["limit"], 1), limit) - 1) + 1
    items = [[e.index, e.data] for e in storage.read(name, start, stop, max_bytes)]
    return reply(m["rid"], entries=items, commit=commit, first=first)


def range_reply(storage: Storage, name: str, m: Msg, commit: int, cap: int) -> Msg:
    """The answer to a ranged read (``c_read``): the committed bytes asked for, the committed size and
    ``commit`` (by which the client tells a copy staler than its own appends)."""
    data, size = committed_range(storage, name, m["off"], m["len"], commit, cap)
    return reply(m["rid"], data=data, size=size, commit=commit)


@dataclass
class Peer:
    match: int = -1            # confirmed identical prefix; -1 until the peer first answers
    next: int = 1              # next index to send (optimistic, rewound on timeout or mismatch)
    last: int = -1             # the peer's log length as it last reported it
    sent: float = -math.inf
    commit_sent: int = -1
    ver: Version | None = None
    trusted: bool = False
    isr_sent: float = -math.inf
    acks: int = 0              # answers received, so a merge can insist on a fresh one
    flight: deque[tuple[int, int]] = field(default_factory=deque)  # (last index, bytes) of batches unanswered
    flight_bytes: int = 0
    io_failed: bool = False    # its last answer: it could not write (full or failing disk)
    progress: float = 0.0      # when it was created, its match last advanced or it was last caught up
    first: int = 1             # its first index as it last reported it (behind ours: a trim it owes)

    def rewind(self, nxt: int) -> None:
        """Send again from ``nxt``: whatever was in flight is presumed lost."""
        self.next = nxt
        self.flight.clear()
        self.flight_bytes = 0

    def answered(self, match: int) -> None:
        while self.flight and self.flight[0][0] <= match:
            self.flight_bytes -= self.flight.popleft()[1]


@dataclass
class PendingCfg:
    ver: Version
    isr: tuple[str, ...]
    need: set[str]
    one_of: set[str] | None    # an old member that must persist it (None: satisfied)
    kind: str                  # establish | change | create
    sent: dict[str, float] = field(default_factory=dict)
    op: tuple[str, Msg] | None = None


@dataclass
class PendingDel:
    at: tuple[int, int]
    need: set[str]
    sent: dict[str, float] = field(default_factory=dict)
    op: tuple[str, int] | None = None


@dataclass
class Merge:
    src: str
    rid: int
    need: set[str]
    checked: int
    base: dict[str, int] = field(default_factory=dict)
    sent: dict[str, float] = field(default_factory=dict)


class FilePrimary:
    """Primary state for one file in one term. ``closed`` once it has stepped down."""

    def __init__(self, host: Host, name: str, min_term: int) -> None:
        self.h = host
        self.name = name
        self.me = host.node_id
        self.cfg = host.config
        meta = host.storage.meta(name) or FileMeta()
        self.term = max(meta.term, min_term) + 1
        meta.term, meta.leader = self.term, self.me
        host.storage.put_meta(name, meta)
        self.phase = PREPARE
        self.closed = False
        self.seen_term = self.term       # highest term anyone answered with
        self.open = False                # serving clients
        self.reports: dict[str, Report] = {self.me: report_of(host.storage, name, meta, host.vol(name).trusted)}
        self.probe: set[str] = set()
        self.sent: dict[str, float] = {}
        self.created: int | None = None
        self.deleted: tuple[int, int] | None = None
        self.last, self.last_term = 0, 0
        self.runs: Runs = []
        self.commit = 0
        self.ver: Version | None = None
        self.isr: tuple[str, ...] = ()
        self.seq = 0
        self.old_isr: tuple[str, ...] = ()
        self.responders: set[str] = set()
        self.peers: dict[str, Peer] = {}
        self.pending: PendingCfg | None = None
        self.pending_del: PendingDel | None = None
        self.tables = Tables()
        self.waiters: dict[int, list[tuple[str, int]]] = {}
        self.queue: deque[tuple[str, Msg]] = deque()
        self.merges: list[Merge] = []
        self.source = ""
        self.fetch_next = self.fetch_stop = 0
        self.sync_deadline = 0.0

    # ----------------------------------------------------------------- lifecycle

    def start(self, candidates: set[str], now: float) -> None:
        for x in sorted(candidates):
            self._probe(x, now)
        self._evaluate(now)

    def close(self) -> None:
        """Step down: every client still waiting is told to ask the primary again."""
        if self.closed:
            return
        self.closed = True
        hint = self.h.primary_of(self.name)
        for idx in sorted(self.waiters):
            for src, rid in self.waiters[idx]:
                self.h.send(src, reply(rid, NOT_PRIMARY, primary=hint))
        self.waiters.clear()
        for src, m in self.queue:
            self.h.send(src, reply(m["rid"], NOT_PRIMARY, primary=hint))
        self.queue.clear()
        for mg in self.merges:
            self.h.send(mg.src, reply(mg.rid, NOT_PRIMARY, primary=hint))
        self.merges.clear()
        if self.pending and self.pending.op:
            src, m = self.pending.op
            self.h.send(src, reply(m["rid"], NOT_PRIMARY, primary=hint))
        if self.pending_del and self.pending_del.op:
            src, rid = self.pending_del.op
            self.h.send(src, reply(rid, NOT_PRIMARY, primary=hint))

    def _higher(self, term: int) -> bool:
        if term > self.term:
            self.seen_term = max(self.seen_term, term)
            self.close()
            return True
        return False

    def _refused(self, m: Msg, mismatch_ok: bool = False) -> bool:
        """An answer for our term that says a replica will not follow us: step down (True)."""
        if m["term"] != self.term:
            return True  # about an older takeover of ours; ignore it
        if self._higher(m["promised"]):
            return True
        if not m["ok"] and not (mismatch_ok and m.get("runs") is not None):
            # Promised this very term to another primary (a takeover raced ours): retry above it.
            self.seen_term = max(self.seen_term, m["promised"])
            self.close()
            return True
        return False

    def on_view(self, candidates: set[str], now: float) -> None:
        """Membership changed (and we are still the primary in our view)."""
        alive = self.h.is_alive
        if self.phase == PREPARE:
            for x in sorted(candidates):
                self._probe(x, now)
            self._evaluate(now)
        elif self.phase == FETCH:
            if not alive(self.source):
                self.close()
        else:
            self._sync_peers(now)
            if self.pending:
                p = self.pending
                p.need = {x for x in p.need if alive(x)}
                if p.one_of is not None and not any(alive(x) for x in p.one_of):
                    self.close()  # no old member left to carry the new set forward: retry later
                    return
                self._cfg_progress(now)
            if self.pending_del:
                self.pending_del.need = {x for x in self.pending_del.need if alive(x)}
                self._del_progress(now)
            for mg in self.merges:
                mg.need = {x for x in mg.need if alive(x)}
            self._merges_progress()
            if self.phase == SYNC:
                self._check_sync(now)
            else:
                self._reconfigure(now)

    def tick(self, now: float) -> None:
        if self.closed:
            return
        due = now - self.cfg.retry
        if self.phase == PREPARE:
            for x in sorted(self.probe):
                if x not in self.reports and self.h.is_alive(x) and self.sent.get(x, -math.inf) <= due:
                    self._send_prepare(x, now)
        elif self.phase == FETCH:
            if self.sent.get(self.source, -math.inf) <= due:
                self._send_fetch(now)
        else:
            for p in self.peers.values():
                if p.match >= self.last:
                    p.progress = now
            if self.open and self.pending is None and any(self._failing(x, now) for x in self.isr):
                self._reconfigure(now)
            for x, p in self.peers.items():
                if p.sent <= due and (p.match < self.last or p.last != self.last):
                    p.rewind(p.match + 1 if p.match >= 0 else self.last + 1)
                    self._pump(x, now, force=True)
                elif (p.commit_sent < self.commit or self._owes_trim(p)) and p.sent <= now - self.cfg.retry / 2:
                    self._pump(x, now, force=True)
                self._refresh_isr(x, p, now)
            if self.pending:
                for x in sorted(self.pending.need | (self.pending.one_of or set())):
                    if self.pending.sent.get(x, -math.inf) <= due:
                        self._send_set_isr(x, self.pending, now)
            if self.pending_del:
                for x in sorted(self.pending_del.need):
                    if self.pending_del.sent.get(x, -math.inf) <= due:
                        self._send_delete(x, now)
            for mg in self.merges:
                for x in sorted(mg.need):
                    if mg.sent.get(x, -math.inf) <= due:
                        mg.sent[x] = now
                        self._version_check(x, now)
            if self.phase == SYNC:
                self._check_sync(now)

    # ----------------------------------------------------------------- takeover

    def _probe(self, x: str, now: float) -> None:
        if x == self.me or x in self.probe:
            return
        self.probe.add(x)
        if self.h.is_alive(x):
            self._send_prepare(x, now)

    def _send_prepare(self, x: str, now: float) -> None:
        self.sent[x] = now
        self.h.send(x, {"t": "prepare", "f": self.name, "term": self.term})

    def on_prepared(self, src: str, m: Msg, now: float) -> None:
        if self._refused(m) or self.phase != PREPARE:
            return
        self.probe.add(src)
        self.reports[src] = Report.from_msg(m)
        self._evaluate(now)

    def _evaluate(self, now: float) -> None:
        """Adopt once the answers are known to contain every acknowledged append."""
        if self.phase != PREPARE or self.closed:
            return
        reps, alive = self.reports, self.h.is_alive
        newest = max((r.ver for r in reps.values() if r.ver is not None), default=None)
        if newest is not None:
            isr = next(r.isr for r in reps.values() if r.ver == newest)
            for x in isr:
                self._probe(x, now)
            if any(x not in reps and alive(x) for x in isr):
                return
            vouched = any(x in isr and r.ver == newest and r.trusted for x, r in reps.items())
            if not vouched and not all(x in reps for x in isr):
                return
            if not vouched and any(x not in reps and alive(x) for x in self.probe):
                # Nobody vouches: every member restarted. Under fsync = "interval" a member whose
                # machine crashed may have lost acknowledged appends that a live non-member (a
                # replica that was catching up) still holds, so hear every live holder first.
                return
            self.old_isr = isr
        elif any(x not in reps and alive(x) for x in self.probe):
            return
        self.responders = {x for x, r in reps.items() if r.holds and x != self.me}
        best_node, best = max(reps.items(), key=lambda kv: (kv[1].key(), kv[0] == self.me))
        kind = best.key()[2]
        meta = self._meta()
        self.ver, self.isr = newest, self.old_isr
        self.seq = newest[1] + 1 if newest and newest[0] == self.term else 0
        if kind == 0:
            self._become_open(now)
        elif kind == 2:
            assert best.deleted is not None
            self._tombstone(meta, best.deleted)
            need = {x for x in set(self.old_isr) | self.responders if x != self.me and alive(x)}
            self.phase = ACTIVE
            self.pending_del = PendingDel(best.deleted, need)
            for x in sorted(need):
                self._send_delete(x, now)
            self._del_progress(now)
        else:
            own = reps[self.me]
            self.created = best.created
            if own.created != best.created or own.deleted is not None:
                self.h.storage.truncate(self.name, 0)
                meta.created, meta.deleted = best.created, None
                self.h.storage.put_meta(self.name, meta)
                common = 0
            else:
                common = common_prefix(own.runs, own.last, best.runs, best.last)
                self.h.storage.truncate(self.name, common)
            if best.first > common + 1:
                # The best copy no longer holds what follows our common prefix (a committed trim
                # dropped it): start from its first entry, as a replica would be installed.
                self.h.storage.install(self.name, best.first, runs_upto(best.runs, best.first - 1))
                common = best.first - 1
            self._load_tail()
            if best_node != self.me and best.last > common:
                self.phase, self.source = FETCH, best_node
                self.fetch_next, self.fetch_stop = common + 1, best.last + 1
                self._send_fetch(now)
            else:
                self._start_sync(now)

    def _send_fetch(self, now: float) -> None:
        self.sent[self.source] = now
        self.h.send(self.source, {"t": "fetch", "f": self.name, "term": self.term, "start": self.fetch_next,
                                  "stop": self.fetch_stop})

    def on_fetched(self, src: str, m: Msg, now: float) -> bool:
        if self.phase != FETCH or src != self.source or m["term"] != self.term:
            return True
        if not m["ok"]:
            self.close()
            return True
        entries: list[Entry] = m["entries"]
        if m["start"] != self.fetch_next:
            return True  # a duplicate of an earlier answer
        if entries and entries[0].index > self.fetch_next:
            self.close()  # the source trimmed what we asked for since it answered: take over again
            return True
        if not entries or entries[0].index != self.fetch_next or entries[-1].index >= self.fetch_stop or any(
                e.index != self.fetch_next + k for k, e in enumerate(entries)) or entries[0].term < self.last_term:
            return False
        self.h.storage.append(self.name, entries)
        self._load_tail()
        self.fetch_next = self.last + 1
        if self.fetch_next >= self.fetch_stop:
            self._start_sync(now)
        else:
            self._send_fetch(now)
        return True

    def _start_sync(self, now: float) -> None:
        self.phase = SYNC
        self.sync_deadline = now + self.cfg.sync_timeout
        self._sync_peers(now)
        self._check_sync(now)

    def _check_sync(self, now: float) -> None:
        if self.phase != SYNC or self.pending:
            return
        targets = self._targets()
        caught = [x for x in targets if self._caught_up(x)]
        if len(caught) < len(targets) and now < self.sync_deadline:
            return
        new_isr = tuple(sorted({self.me, *caught}))
        old = set(self.old_isr)
        need = {x for x in old | self.responders | set(new_isr) if x != self.me and self.h.is_alive(x)}
        one_of = None if (not old or self.me in old) else old
        self._start_cfg(new_isr, need, "establish", now, one_of=one_of)

    # ----------------------------------------------------------------- in-sync set changes

    def _start_cfg(self, isr: tuple[str, ...], need: set[str], kind: str, now: float,
                   one_of: set[str] | None = None, op: tuple[str, Msg] | None = None) -> None:
        ver = (self.term, self.seq)
        self.seq += 1
        meta = self._meta()
        meta.ver, meta.isr = ver, isr
        if kind == "create":
            self.h.storage.truncate(self.name, 0)
            meta.created, meta.deleted = self.created, None
        self.h.storage.put_meta(self.name, meta)
        # A change is not in effect until the others persisted it: should we step down before that (a
        # higher term answered), our own copy of it must not vouch in our next takeover, or a set of
        # ourselves alone that never took effect would let us adopt our log without hearing the others
        # (the system simulator's partition schedules found this: a primary healed from a cut proposed
        # {itself}, was refused, and then truncated what the majority had acknowledged meanwhile).
        self.h.vol(self.name).trusted = kind != "change"
        self.pending = PendingCfg(ver, isr, need, one_of, kind, op=op)
        for x in sorted(need | (one_of or set())):
            self._send_set_isr(x, self.pending, now)
        self._cfg_progress(now)

    def _send_set_isr(self, x: str, p: PendingCfg, now: float) -> None:
        p.sent[x] = now
        self.h.send(x, {"t": "set_isr", "f": self.name, "term": self.term, "ver": list(p.ver), "isr": list(p.isr),
                        "created": self.created, "commit": self.commit})

    def on_isr_ack(self, src: str, m: Msg, now: float) -> None:
        if self._refused(m):
            return
        p = self.pending
        if m["ok"] and p and m["ver"] == p.ver:
            if src in self.peers:
                self.peers[src].trusted = m["trusted"]
            p.need.discard(src)
            if p.one_of is not None and src in p.one_of:
                p.one_of = None
            self._cfg_progress(now)
        elif m["ok"] and src in self.peers and m["ver"] == self.ver:
            self.peers[src].ver, self.peers[src].trusted = self.ver, m["trusted"]

    def _cfg_progress(self, now: float) -> None:
        p = self.pending
        if p is None or p.need or p.one_of is not None:
            return
        self.pending = None
        self.ver, self.isr = p.ver, p.isr
        self.h.vol(self.name).trusted = True
        self.h.note("isr", file=self.name, term=self.term, kind=p.kind, isr=",".join(p.isr), last=self.last)
        for x in p.isr:
            if x in self.peers:
                self.peers[x].ver = p.ver
        if p.kind == "establish":
            self.commit = self.last
            self.h.vol(self.name).commit = self.commit
            self.tables = Tables()
            first = self._apply_trims()
            for start in range(first, self.last + 1, self.cfg.batch_entries):
                self.tables.add(self.h.storage.read(self.name, start, start + self.cfg.batch_entries))
            self._become_open(now)
            return
        if p.kind == "create":
            for x in p.isr:
                if x in self.peers:
                    self.peers[x].match, self.peers[x].next, self.peers[x].last = 0, 1, 0
            if p.op:
                src, m = p.op
                self._append(src, m, now)
        self._sync_peers(now)
        self._advance_commit()
        self._drain(now)
        self._reconfigure(now)

    def _reconfigure(self, now: float) -> None:
        """One step towards: in-sync set = the live owners of the file."""
        if not self.open or self.pending or self.pending_del or self.created is None or self.closed:
            return
        alive = self.h.is_alive
        owners = set(self._targets())
        isr = set(self.isr)
        # Who may leave without persisting the new set: a member the membership layer (the controller's
        # committed view) declared failed, and one that answered it could not write, which stopped
        # vouching for the file before it said so. A member that is only slow or silent must persist
        # its own removal, or it could later vouch for the old set in a takeover: a primary cut off
        # from its replicas would otherwise drop them for lag, acknowledge appends alone, and lose
        # them to the majority's takeover (docs/partitions.md).
        gone = {x for x in isr if x != self.me and (not alive(x) or self._io_failed(x))}
        dead = gone | {x for x in isr if x != self.me and self._failing(x, now)}
        new: set[str] | None = None
        if dead:
            new = isr - dead
        else:
            adds = {x for x in owners - isr if self._caught_up(x)}
            if adds:
                new = isr | adds
            else:
                extra = {x for x in isr if x != self.me and x not in owners}
                if extra and owners <= isr:
                    new = isr - extra
        if new is None:
            return
        need = {x for x in isr | new if x != self.me and alive(x) and x not in gone}
        self._start_cfg(tuple(sorted(new | {self.me})), need, "change", now)

    def _refresh_isr(self, x: str, p: Peer, now: float) -> None:
        """A member that restarted vouches again only after it hears the current set from us."""
        if (self.open and self.pending is None and x in self.isr and self.ver is not None
                and (p.ver != self.ver or not p.trusted) and p.isr_sent <= now - self.cfg.retry and p.match >= 0):
            p.isr_sent = now
            self.h.send(x, {"t": "set_isr", "f": self.name, "term": self.term, "ver": list(self.ver),
                            "isr": list(self.isr), "created": self.created, "commit": self.commit})

    # ----------------------------------------------------------------- replication

    def _targets(self) -> list[str]:
        """The other live owners of the file in our view."""
        return [x for x in self.h.replicas(self.name) if x != self.me]

    def _caught_up(self, x: str) -> bool:
        p = self.peers.get(x)
        return p is not None and p.match == self.last and p.last == self.last

    def _sync_peers(self, now: float) -> None:
        alive = self.h.is_alive
        want = {x for x in (*self._targets(), *self.isr) if x != self.me and alive(x)}
        if self.pending:
            want |= {x for x in self.pending.isr if x != self.me and alive(x)}
        for x in list(self.peers):
            if x not in want:
                del self.peers[x]
        if self.created is None:
            return
        for x in sorted(want - self.peers.keys()):
            p = self.peers[x] = Peer(next=self.last + 1, progress=now)
            r = self.reports.get(x)
            if r is not None and self.phase == SYNC and r.created == self.created and r.deleted is None:
                p.match = common_prefix(self.runs, self.last, r.runs, r.last)
                p.last = r.last
                p.rewind(p.match + 1)
            self._pump(x, now, force=True)

    def _pump(self, x: str, now: float, force: bool = False) -> None:
        """Send the peer what it lacks, several batches ahead of its answers up to ``window_bytes``
        (a far-behind replica is copied at the speed of the wire, not of round trips); if ``force``,
        at least a heartbeat."""
        p = self.peers[x]
        if self.created is None or (p.io_failed and not force):
            return  # a peer that could not write is tried again once per retry, with one batch
        sent = False
        first = self.h.storage.first(self.name)
        while (p.next <= self.last and p.match >= 0 and not (sent and p.io_failed)
               and (not p.flight or p.flight_bytes < self.cfg.window_bytes)):
            base: Runs | None = None
            if p.next < first:  # it lacks entries we dropped: it is installed from our first entry
                p.next = first
                base = runs_upto(self.runs, first - 1)
            stop = min(self.last + 1, p.next + self.cfg.batch_entries)
            entries = self.h.storage.read(self.name, p.next, stop, self.cfg.batch_bytes)
            self._send_append(x, p.next - 1, entries, now, base)
            size = sum(len(e.data) for e in entries)
            p.flight.append((entries[-1].index, size))
            p.flight_bytes += size
            p.next = entries[-1].index + 1
            sent = True
        if force and not sent:
            self._send_append(x, self.last, [], now)

    def _send_append(self, x: str, prev: int, entries: list[Entry], now: float,
                     base: Runs | None = None) -> None:
        p = self.peers.get(x)
        if p is not None:
            p.sent, p.commit_sent = now, self.commit
        assert self.created is not None
        self.h.send(x, {"t": "append", "f": self.name, "term": self.term, "created": self.created, "prev": prev,
                        "prev_term": term_at(self.runs, self.last, prev), "entries": entries_wire(entries),
                        "commit": self.commit, "top": self.last,
                        "base": runs_wire(base) if base is not None else None})

    def _version_check(self, x: str, now: float) -> None:
        """One empty append at our end: a replica that agrees answers ok with our length."""
        if self.created is not None:
            self._send_append(x, self.last, [], now)

    def on_append_ack(self, src: str, m: Msg, now: float) -> None:
        if m.get("io"):
            self._write_failed(src, now)
            return
        if self._refused(m, mismatch_ok=True):
            return
        p = self.peers.get(src)
        if p is None or self.phase in (PREPARE, FETCH):
            return
        p.last, p.ver, p.trusted = m["last"], m["ver"], m["trusted"]
        p.first = m.get("first") or 1
        p.acks += 1
        if m["ok"]:
            if m["match"] > self.last:
                return
            p.io_failed = False
            if m["match"] > p.match:
                p.progress = now
            p.match = max(p.match, m["match"])
            p.answered(p.match)
            if p.next <= p.match:
                p.rewind(p.match + 1)
        elif m["runs"] is not None:
            p.match = common_prefix(self.runs, self.last, m["runs"], m["last"])
            p.rewind(p.match + 1)
        else:
            return
        self._pump(src, now)
        if self.phase == SYNC:
            self._check_sync(now)
            return
        self._advance_commit()
        self._merges_progress()
        self._refresh_isr(src, p, now)
        self._reconfigure(now)

    def _owes_trim(self, p: Peer) -> bool:
        """A caught-up replica that has not carried out a trim we did: the message that told it the
        marker's commit may have been lost, and no other is due, so it is told again (a heartbeat)."""
        return p.match == self.last and p.first < self.h.storage.first(self.name)

    def _write_failed(self, x: str, now: float) -> None:
        """A replica could not write (full or failing disk). For this file it is as good as failed:
        it leaves the in-sync set, the waiting appends commit on the others, and it is filled
        again (and rejoins) once it can write. A pending set change it was only to leave stops
        waiting for it."""
        p = self.peers.get(x)
        if p is None:
            return
        p.io_failed = True
        p.rewind(p.match + 1 if p.match >= 0 else self.last + 1)
        pend = self.pending
        if pend is not None and x in pend.need and x not in pend.isr:
            pend.need.discard(x)
            self._cfg_progress(now)
        self._reconfigure(now)

    def _failing(self, x: str, now: float) -> bool:
        """A live in-sync member that cannot keep up: it could not write, or it is behind and has not
        advanced for ``lag_timeout`` (a slow or stuck node the membership layer still sees alive)."""
        p = self.peers.get(x)
        if x == self.me or p is None:
            return False
        return p.io_failed or (p.match < self.last and now - p.progress > self.cfg.lag_timeout)

    def _io_failed(self, x: str) -> bool:
        p = self.peers.get(x)
        return x != self.me and p is not None and p.io_failed

    def _advance_commit(self) -> None:
        if self.pending and self.pending.kind in ("establish", "create"):
            return
        members = [x for x in self.isr if x != self.me]
        c = min((self.peers[x].match if x in self.peers else 0 for x in members), default=self.last)
        c = min(c, self.last)
        if c <= self.commit:
            return
        old, self.commit = self.commit, c
        self.h.vol(self.name).commit = c
        first = self._apply_trims()
        for idx in range(old + 1, c + 1):
            for src, rid in self.waiters.pop(idx, ()):
                self.h.send(src, reply(rid, index=idx, commit=c, first=first))

    def _apply_trims(self) -> int:
        """Carry out the trims acknowledged so far; the dedup table forgets what they dropped."""
        before = self.h.storage.first(self.name)
        try:
            first = apply_trims(self.h.storage, self.name, self.commit)
        except OSError as exc:  # a full disk has no room for the copy: the entries stay until a later try
            self.h.note("trim_failed", file=self.name, error=f"{exc.strerror or exc}")
            return before
        if first != before:
            self.tables.prune(first)
            self.h.note("trim", file=self.name, term=self.term, first=first, last=self.last)
        return first

    # ----------------------------------------------------------------- client operations

    def _become_open(self, now: float) -> None:
        self.phase = ACTIVE
        self.open = True
        self._sync_peers(now)
        self._drain(now)
        self._reconfigure(now)

    def on_client(self, src: str, m: Msg, now: float) -> None:
        blocked = not self.open or self.pending_del is not None or (
            self.pending is not None and m["t"] in WRITES)
        if blocked or self.queue:
            if len(self.queue) >= self.cfg.queue_limit:
                self.h.send(src, reply(m["rid"], BUSY))
            else:
                self.queue.append((src, m))
                if not blocked:
                    self._drain(now)
            return
        self._serve(src, m, now)

    def _drain(self, now: float) -> None:
        while self.queue and self.open and not self.pending_del and not self.closed:
            src, m = self.queue[0]
            if self.pending is not None and m["t"] in WRITES:
                return
            self.queue.popleft()
            self._serve(src, m, now)

    def _serve(self, src: str, m: Msg, now: float) -> None:
        t, rid = m["t"], m["rid"]
        if t == "c_ls":
            self.h.send(src, reply(rid, replicas=self.h.replicas(self.name), isr=list(self.isr),
                                   term=self.term, commit=self.commit, last=self.last,
                                   first=self.h.storage.first(self.name)))
        elif t == "c_create":
            self._create(src, m, now)
        elif self.created is None:
            self.h.send(src, reply(rid, NOT_FOUND))
        elif t == "c_append":
            self._append(src, m, now)
        elif t == "c_trim":
            self._append(src, m, now, trim=m["below"])
        elif t == "c_get":
            self._get(src, m)
        elif t == "c_read":
            self.h.send(src, range_reply(self.h.storage, self.name, m, self.commit, self.cfg.range_bytes))
        elif t == "c_merge":
            mg = Merge(src, rid, {x for x in self._targets()}, checked=0)
            for x in sorted(mg.need):
                mg.sent[x] = now
                mg.base[x] = self.peers[x].acks if x in self.peers else 0
                self._version_check(x, now)
            self.merges.append(mg)
            self._merges_progress()
        elif t == "c_rm":
            self._rm(src, rid, now)

    def _get(self, src: str, m: Msg) -> None:
        self.h.send(src, get_reply(self.h.storage, self.name, m, self.commit, self.cfg.read_limit,
                                   self.cfg.batch_bytes))

    def _append(self, src: str, m: Msg, now: float, trim: int | None = None) -> None:
        """An append, or with ``trim`` a trim marker (empty data) dropping the entries below ``trim``."""
        rid = m["rid"]
        idx = self.tables.dedup.get((m["client"], m["seq"]))
        if idx is not None:
            if idx <= self.commit:
                self.h.send(src, reply(rid, index=idx, commit=self.commit, first=self.h.storage.first(self.name)))
            else:
                self.waiters.setdefault(idx, []).append((src, rid))
            return
        cond = m.get("cond")
        err = refuse_trimmed(self.tables, m["client"], m["seq"]) or check(cond, self.tables, self.last, m["client"])
        if err is None and trim is not None and trim > self.last + 1:
            err = TRIM_RANGE  # below the marker's own index at most: a trim never drops what follows it
        if err:
            self.h.send(src, reply(rid, err, last=self.last, commit=self.commit))
            return
        fence, epoch = fence_of(cond)
        mark: TrimMark | None = self.tables.mark(trim) if trim is not None else None
        e = Entry(self.term, self.last + 1, m["client"], m["seq"], b"" if mark else m["data"], fence, epoch, mark)
        self.h.storage.append(self.name, [e])
        self.tables.add([e])
        self.last, self.last_term = e.index, e.term
        extend_runs(self.runs, [e])
        self.waiters.setdefault(e.index, []).append((src, rid))
        for x in self.peers:
            self._pump(x, now)
        self._advance_commit()

    def _create(self, src: str, m: Msg, now: float) -> None:
        if self.created is not None:
            first = self.h.storage.read(self.name, 1, 2)
            key = (m["client"], m["seq"])
            if self.last == 0 or (first and (first[0].client_id, first[0].client_seq) == key) or (
                    not first and self.tables.trimmed(*key)):  # (a retry of a create a trim dropped)
                # A retry of the create that made this file - or of one whose first entry died with
                # its primary after the file's in-sync set was installed: a file is created by its
                # first entry, so whoever writes entry 1 of an empty incarnation created it.
                self._append(src, m, now)
            else:
                self.h.send(src, reply(m["rid"], EXISTS))
            return
        self.created, self.deleted = self.term, None
        self.last, self.last_term, self.runs, self.commit = 0, 0, [], 0
        self.h.vol(self.name).commit = 0
        self.tables = Tables()
        isr = tuple(sorted({self.me, *self._targets()}))
        need = {x for x in set(self.isr) | set(isr) if x != self.me and self.h.is_alive(x)}
        self.peers.clear()
        self._start_cfg(isr, need, "create", now, op=(src, m))
        self._sync_peers(now)

    def _rm(self, src: str, rid: int, now: float) -> None:
        at = (self.term, self.last)
        for idx in sorted(self.waiters):
            for wsrc, wrid in self.waiters[idx]:
                self.h.send(wsrc, reply(wrid, DELETED))
        self.waiters.clear()
        need = {x for x in set(self.isr) | self.peers.keys() if x != self.me and self.h.is_alive(x)}
        self._tombstone(self._meta(), at)
        self.pending_del = PendingDel(at, need, op=(src, rid))
        for x in sorted(need):
            self._send_delete(x, now)
        self._del_progress(now)

    def _tombstone(self, meta: FileMeta, at: tuple[int, int]) -> None:
        self.h.storage.truncate(self.name, 0)
        meta.created, meta.deleted = None, at
        self.h.storage.put_meta(self.name, meta)
        self.created, self.deleted = None, at
        self.last, self.last_term, self.runs, self.commit = 0, 0, [], 0
        self.h.vol(self.name).commit = 0
        self.tables = Tables()
        self.peers.clear()

    def _send_delete(self, x: str, now: float) -> None:
        assert self.pending_del is not None
        self.pending_del.sent[x] = now
        self.h.send(x, {"t": "delete", "f": self.name, "term": self.term, "at": list(self.pending_del.at)})

    def on_delete_ack(self, src: str, m: Msg, now: float) -> None:
        if self._refused(m):
            return
        if m["ok"] and self.pending_del:
            self.pending_del.need.discard(src)
            self._del_progress(now)

    def _del_progress(self, now: float) -> None:
        d = self.pending_del
        if d is None or d.need:
            return
        self.pending_del = None
        if d.op:
            self.h.send(d.op[0], reply(d.op[1]))
        if not self.open:
            self._become_open(now)
        else:
            self._drain(now)

    def _merges_progress(self) -> None:
        if not self.merges:
            return
        done = []
        for mg in self.merges:
            for x in list(mg.need):
                if self._caught_up(x) and self.peers[x].acks > mg.base.get(x, 0):
                    mg.need.discard(x)
                    mg.checked += 1
            if not mg.need:
                done.append(mg)
        for mg in done:
            self.merges.remove(mg)
            self.h.send(mg.src, reply(mg.rid, checked=mg.checked, last=self.last, commit=self.commit))

    def on_offer(self, src: str, m: Msg, now: float) -> None:
        """A holder says it has the file; probe it, catch it up, or let it drop a copy it no longer owns."""
        if self._higher(m["promised"]):
            return
        if self.phase == PREPARE:
            if src not in self.probe:
                self._probe(src, now)
            elif src not in self.reports:
                self._send_prepare(src, now)
            return
        if self.phase == FETCH:
            return
        if src in self.peers:
            self._pump(src, now, force=True)
            return
        if src in self._targets() or src in self.isr:
            if self.created is None and self.deleted is not None:
                self.h.send(src, {"t": "delete", "f": self.name, "term": self.term, "at": list(self.deleted)})
            self._sync_peers(now)
            return
        releasable = self.open and self.pending is None and self.pending_del is None and src not in self.isr and (
            self.created is None or set(self._targets()) <= set(self.isr))
        if releasable:
            self.h.send(src, {"t": "release", "f": self.name, "term": self.term,
                              "ver": list(self.ver) if self.ver else None, "isr": list(self.isr)})

    # ----------------------------------------------------------------- helpers

    def _meta(self) -> FileMeta:
        return self.h.storage.meta(self.name) or FileMeta()

    def _load_tail(self) -> None:
        self.last, self.last_term = self.h.storage.last(self.name)
        self.runs = self.h.storage.runs(self.name)

    def describe(self) -> dict[str, Any]:
        return {"term": self.term, "phase": self.phase, "open": self.open, "last": self.last,
                "first": self.h.storage.first(self.name),
                "commit": self.commit, "isr": list(self.isr), "ver": self.ver,
                "peers": {x: (p.match, p.last) for x, p in self.peers.items()}}

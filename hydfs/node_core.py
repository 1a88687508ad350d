"""One HyDFS node as a sans-IO state machine: messages and a clock in, messages out.

The I/O edge calls :meth:`NodeCore.receive` for every frame (from a node or a client),
:meth:`NodeCore.tick` every few tens of milliseconds, :meth:`NodeCore.on_membership` whenever the
live set changes (ourselves included while we are alive), :meth:`NodeCore.on_declared_failed`
when the membership layer learns others declared *this* node failed, and sends what
:meth:`NodeCore.take_outgoing` returns (replies to clients are addressed to the client id they came
from). Nothing here reads a clock, opens a socket or draws a random number it was not given.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable
from typing import Any

from hydfs import replica
from hydfs.context import CoreConfig, FileVol
from hydfs.messages import CLIENT_TYPES, IO_ERROR, NOT_FOUND, NOT_PRIMARY, NOT_READY, Msg, parse, reply
from hydfs.primary import FilePrimary, committed_range, get_reply, range_reply
from hydfs.ring import Ring
from hydfs.storage import Storage

_LEADER_ANSWERS = frozenset({"prepared", "fetched", "append_ack", "isr_ack", "delete_ack"})
_TERMED = frozenset({"prepare", "fetch", "append", "set_isr", "delete"})
IO_NOTE_EVERY = 10.0  # seconds between two logged io_error notes of a node (the rest are counted)


class NodeCore:
    def __init__(self, node_id: str, storage: Storage, config: CoreConfig | None = None,
                 rng: random.Random | None = None) -> None:
        self.node_id = node_id
        self.storage = storage
        self.config = config or CoreConfig()
        self.rng = rng or random.Random(0)
        self.alive: frozenset[str] = frozenset()
        self.ring = Ring()
        self.prev_ring = Ring()
        self.view_epoch = 0
        self.now = 0.0
        self._last_input = 0.0      # when tick or receive last ran (see _woke)
        self.vols: dict[str, FileVol] = {}
        self.primaries: dict[str, FilePrimary] = {}
        self.hints: dict[str, set[str]] = {}       # nodes that offered a file to us
        self.term_hint: dict[str, int] = {}        # highest term seen in a refusal
        self.retry_at: dict[str, float] = {}       # no takeover of the file before this time
        self.stats: Counter[str] = Counter()
        self._out: list[tuple[str, Msg]] = []
        self._notes: list[tuple[str, dict[str, Any]]] = []
        self._next_scan = -math.inf
        self.quiet_until = math.inf  # set when we first see ourselves alive (see settled())
        self._io_noted = -math.inf   # when an io_error was last noted; later ones within
        self._io_quiet = 0           # IO_NOTE_EVERY are only counted (a full disk fails every retry)

    # ----------------------------------------------------------------- the I/O edge's interface

    def take_outgoing(self) -> list[tuple[str, dict[str, Any]]]:
        out, self._out = self._out, []
        return out

    def take_notes(self) -> list[tuple[str, dict[str, Any]]]:
        out, self._notes = self._notes, []
        return out

    def on_membership(self, alive: Iterable[str], now: float) -> None:
        """The live node ids as the membership layer now sees them (ourselves included if alive)."""
        self.now = now
        view = frozenset(alive)
        if view == self.alive and self.view_epoch:
            return
        was_alive = self.node_id in self.alive
        self.prev_ring, self.ring, self.alive = self.ring, Ring(view), view
        self.view_epoch += 1
        if self.node_id not in view:
            self._forget_trust(now)
            self.quiet_until = math.inf
            return
        if not was_alive:
            # (Re)joined. Other nodes may still act on a view in which we are dead - one from
            # before this start - and drop us from in-sync sets without telling us. So for a while
            # we neither lead nor let anyone make us a witness; after that, views include us.
            self.quiet_until = now + self.config.settle
        for name in list(self.primaries):
            if self.primary_of(name) != self.node_id:
                self._step_down(name, now)
            else:
                self.primaries[name].on_view(self.candidates(name), now)
                self._reap(name, now)
        self._scan(now, force_offer=True)

    def on_declared_failed(self, now: float) -> None:
        """The membership layer learned that others declared *us* failed (SWIM: we refuted a
        ``failed`` record about ourselves). Same as dropping out of our own view and rejoining."""
        self.now = now
        self._forget_trust(now)
        self.quiet_until = now + self.config.settle

    def _forget_trust(self, now: float) -> None:
        # Declared failed: an in-sync set may have moved on without us, so we vouch for nothing
        # until a primary tells us the current set again, and lead nothing meanwhile.
        for vol in self.vols.values():
            vol.trusted = False
        for name in list(self.primaries):
            self._step_down(name, now)

    def _woke(self, now: float) -> None:
        """Called first by every input. A node that stood still longer than failure detection takes
        (SIGSTOP, a starved event loop) may have been declared failed and replaced meanwhile: its
        primaries may be stale and the silence of its replicas is its own. So it does what a node
        told it was declared failed does (step down, vouch for nothing until a primary confirms it)
        instead of judging the others by timers that ran out while it slept: without this, a woken
        primary dropped its live replicas from the in-sync set for lag and then truncated the
        appends the new primary had acknowledged meanwhile."""
        if self._last_input and now - self._last_input > self.config.stall:
            self.stats["stalls"] += 1
            self._last_input = now
            self.on_declared_failed(now)
        self._last_input = now

    def tick(self, now: float) -> None:
        self._woke(now)
        self.now = now
        for name in list(self.primaries):
            self.primaries[name].tick(now)
            self._reap(name, now)
        if now >= self._next_scan:
            self._scan(now)

    def receive(self, src: str, msg: object, now: float) -> None:
        """Handle one message; anything malformed is counted in ``stats`` and dropped."""
        self._woke(now)
        self.now = now
        m = parse(msg)
        if m is None or not isinstance(src, str):
            self.stats["malformed"] += 1
            return
        t = m["t"]
        self.stats[f"in.{t}"] += 1
        try:
            if t in CLIENT_TYPES:
                self._client(src, m, now)
            elif t == "reply":
                self.stats["unexpected"] += 1
            elif src == self.node_id:
                self.stats["from_self"] += 1
            else:
                self._peer(src, m, now)
        except OSError as exc:
            # A full or failing disk. Every write either happened whole or not at all (block files
            # cut what they could not finish) and nothing was acknowledged, so the state is one the
            # protocol knows: peers retry; a client is told, in one line.
            self.stats["io_error"] += 1
            if now - self._io_noted >= IO_NOTE_EVERY:
                self.note("io_error", error=f"{exc.strerror or exc}", handling=t, file=m.get("f", ""),
                          since_last=self._io_quiet)
                self._io_noted, self._io_quiet = now, 0
            else:
                self._io_quiet += 1
            if t in CLIENT_TYPES:
                self.send(src, reply(m["rid"], IO_ERROR, primary=self.node_id))
            elif t == "append":  # tell the primary, so its waiting clients hear why, not a timeout
                # ...which may then drop us from the in-sync set without our persisting it: from now
                # on we vouch for nothing about this file until a primary gives us its set again
                self.vol(m["f"]).trusted = False
                self.send(src, replica.io_nack(self, m))

    # ----------------------------------------------------------------- Host (for replica / primary)

    def send(self, dest: str, msg: dict[str, Any]) -> None:
        self._out.append((dest, msg))

    def note(self, event: str, **fields: Any) -> None:
        if len(self._notes) < 10_000:  # an edge that never reads them cannot make us grow
            self._notes.append((event, fields))

    def vol(self, name: str) -> FileVol:
        v = self.vols.get(name)
        if v is None:
            v = self.vols[name] = FileVol()
        return v

    def is_alive(self, node_id: str) -> bool:
        return node_id in self.alive

    def replicas(self, name: str) -> list[str]:
        return self.ring.replicas(name, self.config.replicas)

    def primary_of(self, name: str) -> str | None:
        return self.ring.primary(name)

    def settled(self) -> bool:
        """Alive in our own view for longer than any stale view of us can survive elsewhere."""
        return self.now >= self.quiet_until

    def candidates(self, name: str) -> set[str]:
        """Every node that may hold the file: owners now and before the last change, the last
        in-sync set we know, and whoever offered it."""
        out = set(self.replicas(name)) | set(self.prev_ring.replicas(name, self.config.replicas))
        meta = self.storage.meta(name)
        if meta is not None:
            out |= set(meta.isr)
        out |= self.hints.get(name, set())
        out.discard(self.node_id)
        return out

    # ----------------------------------------------------------------- dispatch

    def _peer(self, src: str, m: Msg, now: float) -> None:
        t, name = m["t"], m["f"]
        leader = self.primaries.get(name)
        if t in _TERMED and leader is not None and m["term"] > leader.term:
            self._step_down(name, now)
            leader = None
        if t == "prepare":
            replica.on_prepare(self, src, m)
        elif t == "fetch":
            replica.on_fetch(self, src, m)
        elif t == "append":
            if not replica.on_append(self, src, m):
                self.stats["invalid"] += 1
        elif t == "set_isr":
            replica.on_set_isr(self, src, m)
        elif t == "delete":
            replica.on_delete(self, src, m)
        elif t == "release":
            if replica.on_release(self, src, m):
                self.vols.pop(name, None)
                self.hints.pop(name, None)
                self.stats["released"] += 1
        elif t == "offer":
            self.hints.setdefault(name, set()).add(src)
            if leader is None and self.primary_of(name) == self.node_id and self.retry_at.get(name, 0) <= now:
                leader = self._lead(name, now)
            if leader is not None:
                leader.on_offer(src, m, now)
                self._reap(name, now)
        elif t in _LEADER_ANSWERS:
            promised = m.get("promised")
            if isinstance(promised, int) and promised > self.term_hint.get(name, 0):
                self.term_hint[name] = promised
            if leader is None:
                return
            if t == "prepared":
                leader.on_prepared(src, m, now)
            elif t == "fetched":
                if not leader.on_fetched(src, m, now):
                    self.stats["invalid"] += 1
            elif t == "append_ack":
                leader.on_append_ack(src, m, now)
            elif t == "isr_ack":
                leader.on_isr_ack(src, m, now)
            else:
                leader.on_delete_ack(src, m, now)
            self._reap(name, now)

    def _client(self, src: str, m: Msg, now: float) -> None:
        t, rid = m["t"], m["rid"]
        if t == "c_store":
            files = [n for n in self.storage.names() if (meta := self.storage.meta(n)) and meta.created is not None]
            self.send(src, reply(rid, files=files))
            return
        name = m["f"]
        leader = self.primaries.get(name)
        if leader is None and t in ("c_get", "c_read") and m["replica_ok"]:
            self._replica_get(src, m)
            return
        if leader is None and self.primary_of(name) == self.node_id and self.retry_at.get(name, 0) <= now:
            leader = self._lead(name, now)
        if leader is None:
            self.send(src, reply(rid, NOT_PRIMARY, primary=self.primary_of(name)))
            return
        leader.on_client(src, m, now)
        self._reap(name, now)

    def local_range(self, name: str, offset: int, length: int) -> tuple[bytes, int] | None:
        """A ranged read of our own copy for a reader in this process (a task reading a source file this
        node holds): committed bytes ``[offset, offset + length)`` and the committed size, under the rule
        of a replica read, or None where that rule refuses. The size may lag the primary's: a caller
        bounds what it asks for by a size the primary gave it and reads the rest at the primary."""
        leader = self.primaries.get(name)
        commit = leader.commit if leader is not None else self._vouched(name)
        if isinstance(commit, str):
            return None
        return committed_range(self.storage, name, offset, length, commit, self.config.range_bytes)

    def _vouched(self, name: str) -> int | str:
        """How far our copy is known acknowledged (possibly stale, never beyond), or why a replica read
        of it is refused: NOT_FOUND, or NOT_READY when we restarted, were cut off or are not caught up
        (our copy may lack appends acknowledged without us; a trusted in-sync member holds every
        acknowledged append, since acks wait for all of them)."""
        meta = self.storage.meta(name)
        if meta is None or meta.created is None:
            return NOT_FOUND
        if not self.vol(name).trusted or self.node_id not in meta.isr:
            return NOT_READY
        return min(self.vol(name).commit, self.storage.last(name)[0])

    def _replica_get(self, src: str, m: Msg) -> None:
        """Serve a read (entries or a byte range) from our copy, up to what we know is acknowledged."""
        commit = self._vouched(m["f"])
        if isinstance(commit, str):
            self.send(src, reply(m["rid"], commit))
            return
        name = m["f"]
        if m["t"] == "c_read":
            self.send(src, range_reply(self.storage, name, m, commit, self.config.range_bytes))
            return
        self.send(src, get_reply(self.storage, name, m, commit, self.config.read_limit, self.config.batch_bytes))

    # ----------------------------------------------------------------- leading and holding

    def _lead(self, name: str, now: float) -> FilePrimary | None:
        if self.node_id not in self.alive or not self.settled():
            return None
        leader = FilePrimary(self, name, self.term_hint.get(name, 0))
        self.primaries[name] = leader
        self.stats["takeovers"] += 1
        leader.start(self.candidates(name), now)
        self._reap(name, now)
        return self.primaries.get(name)

    def _reap(self, name: str, now: float) -> None:
        leader = self.primaries.get(name)
        if leader is not None and leader.closed:
            del self.primaries[name]
            self.term_hint[name] = max(self.term_hint.get(name, 0), leader.seen_term)
            self.retry_at[name] = now + self.config.backoff * (1 + self.rng.random())

    def _step_down(self, name: str, now: float) -> None:
        leader = self.primaries.pop(name, None)
        if leader is not None:
            leader.close()
            self.term_hint[name] = max(self.term_hint.get(name, 0), leader.seen_term)
            self.retry_at[name] = now + self.config.backoff * (1 + self.rng.random())
            self.stats["step_downs"] += 1

    def _scan(self, now: float, force_offer: bool = False) -> None:
        """Lead the files we are primary for; remind the primary of the others we hold."""
        self._next_scan = now + self.config.scan_every
        if self.node_id not in self.alive:
            return
        for name in self.storage.names():
            if name in self.primaries:
                continue
            meta = self.storage.meta(name)
            if meta is None or (meta.created is None and meta.deleted is None and meta.ver is None):
                continue
            primary = self.primary_of(name)
            if primary is None:
                continue
            if primary == self.node_id:
                if self.retry_at.get(name, -math.inf) <= now:
                    self._lead(name, now)
                continue
            vol = self.vol(name)
            owner = self.node_id in self.replicas(name)
            if owner and vol.confirmed == (primary, self.view_epoch):
                continue
            if force_offer or now - vol.last_offer >= self.config.offer_every:
                vol.last_offer = now
                last, last_term = self.storage.last(name)
                self.send(primary, {"t": "offer", "f": name, "promised": meta.term, "last": last,
                                    "last_term": last_term, "trusted": vol.trusted})

    def describe(self) -> dict[str, Any]:
        """A snapshot for `ls`/debugging: what we hold and what we lead."""
        return {"node": self.node_id, "alive": sorted(self.alive),
                "leading": {n: ld.describe() for n, ld in self.primaries.items()},
                "files": {n: (self.storage.last(n), self.vols[n].commit if n in self.vols else 0)
                          for n in self.storage.names()}, "stats": dict(self.stats)}

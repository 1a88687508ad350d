"""Raft as a sans-I/O state machine: messages, proposals and a clock in; a :class:`Ready` out.

The core never touches sockets, disks, asyncio or the wall clock, and draws randomness only from the
injected ``random.Random``, so :mod:`raft.sim` runs exactly the protocol :mod:`raft.driver` runs.

The driver's loop (the fsync-before-send rule)::

    core.step(msg, now) / core.propose(data, now) / core.tick(now)
    while core.has_ready():
        rd = core.ready()
        storage.save(rd)        # rd.hard_state, rd.snapshot, rd.entries -- durable (fsync) before ...
        send(rd.messages)       # ... any message goes out: a vote or an ack promises what is on disk
        apply(rd.snapshot, rd.committed)
        core.advance(rd)

Sending first would let a crash forget a vote already granted (two leaders in one term) or an entry
already acknowledged (a committed entry on fewer than a quorum of disks). The leader counts itself
towards a commit only for entries it has persisted (``advance``), like any follower.

Protocol choices (Raft, Ongaro & Ousterhout 2014, with etcd-io/raft's refinements):

* Pre-vote: a node whose election timer fires first asks for votes at ``term + 1`` without changing
  any term; only with a quorum of yes does it really campaign. A node cut off from the majority so
  never raises its term, and cannot depose a healthy leader when it returns.
* Check-quorum: a leader that has not heard from a quorum within ``election_timeout`` steps down;
  and a node that heard from a live leader within the (minimum) election timeout ignores (pre)votes
  for a higher term -- leader stickiness. :meth:`lease` is the leader's side of the same window.
* Commit by counting only entries of the current term (§5.4.2); a new leader appends a no-op.
* Replication: per-follower :class:`raft.progress.Progress` -- probing, pipelined replication with at
  most ``max_inflight`` appends unacknowledged, or one InstallSnapshot for a follower behind our
  snapshot. A rejection carries a hint so the leader skips a whole conflicting term at once.
* Heartbeats are appends (the next entries, or an empty one at ``next - 1``); a lost append is noticed
  when the next one is rejected, and re-sent from the follower's match point.

Call nothing else between :meth:`ready` and :meth:`advance` (the driver and simulator do not).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from raft.config import RaftConfig
from raft.log import RaftLog
from raft.messages import Entry, HardState, Message, MsgType, Snapshot
from raft.progress import Flow, Progress

APPEND, APPEND_RESP, SNAPSHOT = MsgType.APPEND, MsgType.APPEND_RESP, MsgType.SNAPSHOT
VOTE, VOTE_RESP, PRE_VOTE, PRE_VOTE_RESP = MsgType.VOTE, MsgType.VOTE_RESP, MsgType.PRE_VOTE, MsgType.PRE_VOTE_RESP


class Role(StrEnum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


FOLLOWER, PRE_CANDIDATE, CANDIDATE, LEADER = Role.FOLLOWER, Role.PRE_CANDIDATE, Role.CANDIDATE, Role.LEADER


class NotLeader(Exception):
    """Only the leader takes proposals; ``leader_hint`` is who this node believes leads (None: unknown)."""

    def __init__(self, leader_hint: str | None) -> None:
        super().__init__(f"not the leader (leader: {leader_hint or 'unknown'})")
        self.leader_hint = leader_hint


@dataclass
class Restored:
    """What storage kept: the core starts from it after a restart."""

    hard_state: HardState
    snapshot: Snapshot | None
    entries: list[Entry]


@dataclass
class Ready:
    """Work for the driver, in this order: persist, then send, then apply (see the module docstring)."""

    hard_state: HardState | None = None   # persist if not None
    entries: list[Entry] = field(default_factory=list)  # persist, first dropping stored entries >= entries[0].index
    snapshot: Snapshot | None = None      # an installed snapshot: persist it (the log before it goes) and restore it
    messages: list[Message] = field(default_factory=list)  # send only once the above are durable
    committed: list[Entry] = field(default_factory=list)   # apply in order (after ``snapshot``)


class RaftCore:
    def __init__(self, node_id: str, voters: Sequence[str], config: RaftConfig, rng: random.Random, now: float,
                 restored: Restored | None = None) -> None:
        ids = list(dict.fromkeys(voters))
        if node_id not in ids:
            raise ValueError(f"{node_id!r} is not one of the voters {ids}")
        self.id = node_id
        self.voters = tuple(ids)
        self.peers = tuple(v for v in ids if v != node_id)
        self.quorum = len(ids) // 2 + 1
        self.config = config
        self.rng = rng
        r = restored or Restored(HardState(), None, [])
        snap = r.snapshot
        self.log = RaftLog(snap.index, snap.term, r.entries) if snap else RaftLog(0, 0, r.entries)
        self.snapshot = snap  # the latest, sent to followers that need compacted entries
        self.term = r.hard_state.term
        self.vote = r.hard_state.vote
        self.commit = max(min(r.hard_state.commit, self.log.last_index), self.log.snap_index)
        self.applied = self.log.snap_index  # the driver restores the snapshot; entries after it are re-applied
        self.role = FOLLOWER
        self.leader_id: str | None = None
        self.stats: Counter[str] = Counter()
        # what the last ready() handed out, and what advance() confirmed
        self._saved_hs = r.hard_state
        self._unstable = self.log.last_index + 1  # first entry not yet handed out for persisting
        self._stable = self.log.last_index        # entries durable up to here (the leader's own match)
        self._applying = self.applied             # committed entries handed out for applying up to here
        self._new_snapshot: Snapshot | None = None
        self._msgs: list[Message] = []
        # elections and leadership
        self._votes: dict[str, bool] = {}
        self._heard: dict[str, float] = {}        # peer -> when it last sent us anything at our term
        self._heard_leader = -math.inf
        self._progress: dict[str, Progress] = {}
        self._bcast = False                       # new entries for the followers: sent at the next ready()
        self._now = now                           # the latest time given to tick/step/propose
        self._next_heartbeat = now
        self._election_deadline = now
        self._reset_election(now)

    # -- what callers read -------------------------------------------------------------------------
    @property
    def last_index(self) -> int:
        return self.log.last_index

    def lease(self, now: float) -> bool:
        """Leader that heard from a quorum (itself included) within ``election_timeout`` (check-quorum
        steps down as soon as this turns false). Those followers ignore votes for ``election_timeout``
        from when *they* last heard from us, a round trip before we heard back: so another leader can
        overlap a lease by at most a round trip plus clock drift -- a guard for acting, not for safety,
        which comes from the log alone."""
        if self.role is not LEADER:
            return False
        window = self.config.election_timeout
        return 1 + sum(now - self._heard.get(p, -math.inf) < window for p in self.peers) >= self.quorum

    def next_deadline(self) -> float:
        """When :meth:`tick` next has something to do (the driver and simulator sleep until then)."""
        if self.role is not LEADER:
            return self._election_deadline
        heard = sorted((self._heard.get(p, -math.inf) for p in self.peers), reverse=True)
        expiry = heard[self.quorum - 2] + self.config.election_timeout if self.quorum >= 2 else math.inf
        return min(self._next_heartbeat, expiry)

    # -- inputs ------------------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        self._now = now
        if self.role is LEADER:
            if not self.lease(now):  # check-quorum: cut off from the majority
                self.stats["stepped_down"] += 1
                self._become_follower(self.term, None, now)
            elif now >= self._next_heartbeat:
                self._next_heartbeat = now + self.config.heartbeat
                for p in self.peers:
                    self._heartbeat(p, now)
        elif now >= self._election_deadline:
            self._pre_campaign(now)

    def propose(self, data: bytes, now: float) -> int:
        """Append ``data`` to the leader's log; returns its index (it commits later, or is lost)."""
        self._now = now
        if self.role is not LEADER:
            raise NotLeader(self.leader_id)
        if not data:
            raise ValueError("b'' is the leader's no-op; propose non-empty data")
        index = self.log.last_index + 1
        self.log.append([Entry(index, self.term, data)])
        self._bcast = True
        self.stats["proposed"] += 1
        return index

    def step(self, msg: Message, now: float) -> None:
        self._now = now
        if msg.dst != self.id or msg.src not in self.peers:
            self.stats["foreign"] += 1
            return
        t = msg.type
        if msg.term > self.term:
            if t in (VOTE, PRE_VOTE) and self._in_lease(now):
                self.stats["vote_ignored"] += 1  # stickiness: our leader is alive
                return
            if not (t is PRE_VOTE or (t is PRE_VOTE_RESP and not msg.reject)):  # pre-votes never move terms
                self._become_follower(msg.term, msg.src if t in (APPEND, SNAPSHOT) else None, now)
        elif msg.term < self.term:
            if t in (APPEND, SNAPSHOT):  # a deposed leader: our term makes it step down
                self._send(APPEND_RESP, msg.src, reject=True)
            elif t is PRE_VOTE:  # a pre-candidate behind us learns our term
                self._send(PRE_VOTE_RESP, msg.src, reject=True)
            return
        if msg.term == self.term:
            self._heard[msg.src] = now
        if t is APPEND or t is SNAPSHOT:
            if self.role is LEADER:
                self.stats["second_leader"] += 1  # cannot happen: one leader per term
                return
            if self.role is not FOLLOWER or self.leader_id != msg.src:
                self._become_follower(self.term, msg.src, now)
            self._heard_leader = now
            self._reset_election(now)
            if t is APPEND:
                self._on_append(msg)
            else:
                self._on_snapshot(msg)
        elif t is APPEND_RESP:
            if self.role is LEADER:
                self._on_append_resp(msg, now)
        elif t is VOTE or t is PRE_VOTE:
            self._on_vote_request(msg, now)
        elif t is VOTE_RESP:
            if self.role is CANDIDATE:
                self._tally(msg.src, not msg.reject, now)
        elif t is PRE_VOTE_RESP:
            if self.role is PRE_CANDIDATE and msg.term == self.term + (0 if msg.reject else 1):
                self._tally(msg.src, not msg.reject, now)

    # -- outputs -----------------------------------------------------------------------------------
    def has_ready(self) -> bool:
        self._flush()
        return bool(self._msgs or self._new_snapshot is not None or self._unstable <= self.log.last_index
                    or self.commit > self._applying or self._hard_state() != self._saved_hs)

    def ready(self) -> Ready:
        self._flush()
        hs = self._hard_state()
        changed = hs != self._saved_hs
        self._saved_hs = hs
        entries = self.log.between(self._unstable, self.log.last_index)
        self._unstable = self.log.last_index + 1
        snap, self._new_snapshot = self._new_snapshot, None
        msgs, self._msgs = self._msgs, []
        committed = self.log.between(max(self._applying, self.log.snap_index) + 1, self.commit)
        self._applying = max(self._applying, self.commit)
        return Ready(hs if changed else None, entries, snap, msgs, committed)

    def advance(self, rd: Ready) -> None:
        """``rd`` is durable and applied."""
        if rd.snapshot is not None:
            self._stable = max(self._stable, rd.snapshot.index)
            self.applied = max(self.applied, rd.snapshot.index)
        if rd.entries:
            last = rd.entries[-1]
            if self.log.term(last.index) == last.term:  # not truncated meanwhile
                self._stable = max(self._stable, last.index)
        if rd.committed:
            self.applied = max(self.applied, rd.committed[-1].index)
        if self.role is LEADER:
            self._maybe_commit()

    def compact(self, index: int, data: bytes) -> Snapshot:
        """The state machine's snapshot ``data`` at applied ``index`` replaces the log up to ``index``;
        returns the :class:`Snapshot` for storage to keep (and for followers that fall behind it)."""
        term = self.log.term(index)
        if not self.log.snap_index < index <= self.applied or term is None:
            raise ValueError(f"cannot compact at {index}: snapshot at {self.log.snap_index}, applied {self.applied}")
        snap = Snapshot(index, term, data)
        self.log.compact(index, term)
        self.snapshot = snap
        self.stats["compactions"] += 1
        return snap

    # -- elections ---------------------------------------------------------------------------------
    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.commit)

    def _reset_election(self, now: float) -> None:
        t = self.config.election_timeout
        self._election_deadline = now + self.rng.uniform(t, 2 * t)

    def _in_lease(self, now: float) -> bool:
        if self.role is LEADER:
            return self.lease(now)
        return (self.role is FOLLOWER and self.leader_id is not None
                and now - self._heard_leader < self.config.election_timeout)

    def _become_follower(self, term: int, leader: str | None, now: float) -> None:
        if term != self.term:
            self.term, self.vote = term, None
        self.role, self.leader_id = FOLLOWER, leader
        self._progress, self._votes, self._bcast = {}, {}, False
        if leader is not None:
            self._heard_leader = now
        self._reset_election(now)

    def _pre_campaign(self, now: float) -> None:
        self.stats["pre_campaigns"] += 1
        self.role, self.leader_id = PRE_CANDIDATE, None
        self._progress, self._bcast = {}, False
        self._reset_election(now)
        for p in self.peers:
            self._send(PRE_VOTE, p, term=self.term + 1, log_index=self.log.last_index, log_term=self.log.last_term)
        self._votes = {}
        self._tally(self.id, True, now)

    def _campaign(self, now: float) -> None:
        self.stats["elections"] += 1
        self.term, self.vote = self.term + 1, self.id
        self.role, self.leader_id = CANDIDATE, None
        self._heard = {}
        self._reset_election(now)
        for p in self.peers:
            self._send(VOTE, p, log_index=self.log.last_index, log_term=self.log.last_term)
        self._votes = {}
        self._tally(self.id, True, now)

    def _tally(self, voter: str, granted: bool, now: float) -> None:
        self._votes[voter] = granted
        yes = sum(self._votes.values())
        if yes >= self.quorum:
            if self.role is PRE_CANDIDATE:
                self._campaign(now)
            else:
                self._become_leader(now)
        elif len(self._votes) - yes >= self.quorum:
            self._become_follower(self.term, None, now)

    def _on_vote_request(self, msg: Message, now: float) -> None:
        pre = msg.type is PRE_VOTE
        resp = PRE_VOTE_RESP if pre else VOTE_RESP
        free = self.vote == msg.src or (self.vote is None and self.leader_id is None) or (pre and msg.term > self.term)
        if free and self.log.up_to_date(msg.log_index, msg.log_term):
            self._send(resp, msg.src, term=msg.term)
            if not pre:
                self.vote = msg.src
                self._reset_election(now)
        else:
            self._send(resp, msg.src, reject=True)

    def _become_leader(self, now: float) -> None:
        self.stats["won"] += 1
        self.role, self.leader_id = LEADER, self.id
        self._progress = {p: Progress(next=self.log.last_index + 1) for p in self.peers}
        self.log.append([Entry(self.log.last_index + 1, self.term, b"")])  # commits the earlier terms' entries
        self._bcast = True
        self._next_heartbeat = now + self.config.heartbeat

    # -- replication: leader -----------------------------------------------------------------------
    def _flush(self) -> None:
        if self._bcast and self.role is LEADER:
            for p in self.peers:
                while self._send_append(p, False):
                    pass
        self._bcast = False

    def _heartbeat(self, peer: str, now: float) -> None:
        pr = self._progress[peer]
        if pr.state is Flow.SNAPSHOT and now - pr.snapshot_sent >= self.config.election_timeout:
            pr.probe()  # the snapshot is presumed lost: find out again where it stands
        if pr.state is Flow.SNAPSHOT:  # an append at 0 always matches: keeps its timer, asks its commit
            self._send(APPEND, peer, commit=self.commit)
            return
        pr.paused = False
        if pr.state is Flow.REPLICATE and pr.full(self.config.max_inflight):
            pr.inflight.popleft()  # a full window for a whole heartbeat: let one more out (it may be lost)
        self._send_append(peer, True)

    def _send_append(self, peer: str, empty_ok: bool) -> bool:
        """Send ``peer`` the entries from its ``next``; True if entries went and more may follow."""
        pr = self._progress[peer]
        if pr.full(self.config.max_inflight):
            return False
        prev = pr.next - 1
        prev_term = self.log.term(prev)
        if prev_term is None:  # compacted: only the snapshot brings it up
            assert self.snapshot is not None and prev < self.log.snap_index
            pr.sending_snapshot(self.snapshot.index, self._now)
            self._send(SNAPSHOT, peer, snapshot=self.snapshot)
            self.stats["snapshots_sent"] += 1
            return False
        cfg = self.config
        entries = self.log.batch(pr.next, cfg.max_entries_per_msg, cfg.max_bytes_per_msg)
        if not entries and not empty_ok:
            return False
        self._send(APPEND, peer, log_index=prev, log_term=prev_term, entries=entries, commit=self.commit)
        if pr.state is Flow.REPLICATE:
            if entries:
                pr.next = entries[-1].index + 1
                pr.inflight.append(entries[-1].index)
        else:
            pr.paused = True
        return bool(entries)

    def _on_append_resp(self, msg: Message, now: float) -> None:
        pr = self._progress[msg.src]
        if msg.reject:
            rejected = msg.log_index
            if rejected <= pr.match or rejected > self.log.last_index or pr.state is Flow.SNAPSHOT or (
                    pr.state is Flow.PROBE and rejected != pr.next - 1):
                return  # an answer to an append we already gave up on
            hint = msg.hint
            if msg.log_term > 0:
                hint = self.log.find_conflict_by_term(hint, msg.log_term)
            pr.probe()
            pr.next = max(min(rejected, hint + 1), pr.match + 1)
            self.stats["rejections"] += 1
            self._send_append(msg.src, True)
            return
        if msg.log_index > self.log.last_index:  # we never sent that: not from a correct follower
            self.stats["bad_ack"] += 1
            return
        moved = pr.acked(msg.log_index)
        if pr.state is Flow.PROBE or (pr.state is Flow.SNAPSHOT and pr.match >= pr.pending_snapshot):
            pr.replicate()
        if moved:
            self._maybe_commit()
        while self._send_append(msg.src, False):
            pass

    def _maybe_commit(self) -> None:
        """The highest index a quorum has durable, if it is of our term (§5.4.2: never count older ones)."""
        matches = sorted([self._stable, *(pr.match for pr in self._progress.values())], reverse=True)
        n = matches[self.quorum - 1]
        if n > self.commit and self.log.term(n) == self.term:
            self.commit = n

    # -- replication: follower ---------------------------------------------------------------------
    def _on_append(self, msg: Message) -> None:
        if msg.log_index < self.commit:  # our committed prefix is the leader's: tell it how far that goes
            self._send(APPEND_RESP, msg.src, log_index=self.commit)
            return
        if self.log.term(msg.log_index) != msg.log_term:
            hint = self.log.find_conflict_by_term(msg.log_index, msg.log_term)
            self._send(APPEND_RESP, msg.src, reject=True, log_index=msg.log_index, hint=hint,
                       log_term=self.log.term(hint) or 0)
            return
        for k, e in enumerate(msg.entries):
            t = self.log.term(e.index)
            if t != e.term:
                if t is not None:  # a conflicting suffix (uncommitted: e.index > log_index >= commit)
                    self._truncate(e.index)
                self.log.append(msg.entries[k:])
                break
        last_new = msg.log_index + len(msg.entries)
        self.commit = max(self.commit, min(msg.commit, last_new))
        self._send(APPEND_RESP, msg.src, log_index=last_new)

    def _truncate(self, index: int) -> None:
        self.stats["truncated"] += 1
        self.log.truncate_from(index)
        self._unstable = min(self._unstable, index)
        self._stable = min(self._stable, index - 1)

    def _on_snapshot(self, msg: Message) -> None:
        s = msg.snapshot
        assert s is not None
        if s.index <= self.commit:
            self._send(APPEND_RESP, msg.src, log_index=self.commit)
            return
        if self.log.term(s.index) == s.term:  # we have that entry: the rest of our log is good
            self.commit = s.index
            self._send(APPEND_RESP, msg.src, log_index=s.index)
            return
        self.stats["snapshots_installed"] += 1
        self.log = RaftLog(s.index, s.term)
        self.snapshot = self._new_snapshot = s
        self.commit = s.index
        self._unstable = s.index + 1
        self._stable = min(self._stable, s.index)
        self._send(APPEND_RESP, msg.src, log_index=s.index)

    def _send(self, kind: MsgType, dst: str, **fields: Any) -> None:
        fields.setdefault("term", self.term)
        self._msgs.append(Message(kind, self.id, dst, **fields))

"""SWIM membership as a sans-IO state machine: messages and a clock in, messages and events out.

The core never touches sockets, asyncio or the wall clock and draws randomness only from the
injected ``random.Random``, so :mod:`gossip.sim` runs exactly the protocol the real node runs
(:mod:`gossip.transport`), deterministically, with hundreds of members in one process.

Protocol (SWIM, Das et al. 2002, with the memberlist/Lifeguard refinements)
--------------------------------------------------------------------------
* Probing. Every ``period`` a member pings the next target of a round-robin walk over a freshly
  shuffled list of alive+suspect members (new members are inserted at a random place of the
  current round). No ack after ``ack_timeout``: ``indirect_k`` random alive members get a
  ``ping_req`` and ping the target for us, relaying its ack, and we ping it directly once more
  (memberlist's TCP fallback, over UDP: the direct path needs 2 datagrams to arrive, an indirect
  one 4). No ack at all by the end of the period: the target becomes *suspect* (or *failed* at once
  when ``config.suspicion`` is off); we tell the suspect directly, and tell ``indirect_k`` random
  members, asking them to *check* it (ping it twice themselves). A probe whose end we notice more
  than half a period late (our own process stalled) is not judged: the silence may be ours; nor is
  one whose target meanwhile showed up with a newer incarnation.
* Suspicion (Lifeguard's dynamic timeout). Each member that holds a suspicion counts its distinct
  accusers (a suspect update carries its accuser; a failed probe or check of a suspect is a new
  accusation) and declares the member failed when, measured from when *it* learnt the suspicion,
  :func:`suspicion_remaining` has passed::

      lo = suspicion_timeout(n) = suspicion_periods * period * max(1, log10(n))
      hi = suspicion_max_mult * lo
      timeout(c) = max(lo, hi - (hi - lo) * log(c + 1) / log(k + 1)),  k = suspicion_confirmations

  with ``n`` the alive+suspect members in the local view (itself included) and ``c`` the accusers
  beyond the first. The log n factor (memberlist's) keeps the false-positive rate flat as the
  time a refutation needs to reach everyone grows with log n. A real crash is confirmed within a
  period by the checkers, so it costs ``lo``; a suspicion nobody confirms (a lost datagram) waits
  ``hi``, which leaves a refutation time to get through even when piggyback space is scarce (20 %
  loss at N = 1000), instead of failing live members in a cascade.
* Incarnations and precedence. An update about member ``m`` is ``(state, m, addr, inc)``; the
  states are totally ordered by the key ``(inc, rank)`` with rank alive < suspect < failed < left,
  and an update replaces the local record iff its key is strictly greater. That is exactly:
  alive(i) beats suspect(j) iff i > j; suspect(i) beats alive(j) iff i >= j; failed/left(i) beat
  alive/suspect(j) iff i >= j; and alive(i) beats failed/left(j) iff i > j (a comeback).
  Only the member itself ever raises its incarnation (the introducer *assigns* one at join).
  One refinement: *failed* news about a member we hold plainly alive (not suspect) is taken as a
  suspicion with the short timeout ``lo`` rather than at once (suspicion on only). A crash is
  unaffected in practice (the suspicion reaches everyone before the verdict does), but after a
  partition heals, the far side's stale verdicts no longer fail live members outright: they get
  ``lo`` to refute. A sync's verdicts on members we hold alive are ignored altogether.
* Refutation and comebacks. A member that hears suspect/failed/left about itself at an incarnation
  >= its own (while alive and not leaving) sets its incarnation to that + 1 and disseminates
  ``alive``; it also tells the sender directly. So a member wrongly declared failed (a partition,
  a long stall) simply comes back alive everywhere with a higher incarnation (event ``join``).
* Dissemination. Updates ride on every message we send, at most ``piggyback_max`` per message,
  fewest-sent first (newest first on ties); each is sent ``ceil(retransmit_mult * ln(n + 1))``
  times. A member we hold as suspect or failed gets our record of itself in front of everything we
  send it, so it can refute; a member whose message shows it does not know we suspect it or hold
  it failed is told directly (at most once a period).
* Headers. Every message carries the sender's ``from`` (node id) and ``inc``; for a *known* sender
  that is an ``alive(inc)`` claim, merged with the precedence above. Unknown senders are learnt
  only from join and alive updates. A leaving member puts ``left`` about itself in front of every
  message it sends, so its header never reads as a comeback.
* Join. The joiner sends ``join`` to one introducer (rotating over the introducers and any member
  it already knows) every ``join_retry`` seconds until a ``join_ack`` arrives. The introducer
  gives the joiner the incarnation :func:`rejoin_incarnation` -- its claim, or one more than the
  highest incarnation it knows for that id unless that record is alive and as new as the claim --
  records it alive, disseminates that, and replies with the assigned incarnation (``you``) and a
  snapshot of its whole view (chunks of ``SNAPSHOT_CHUNK`` entries, each datagram far below
  64 KiB). The joiner takes the assigned incarnation and announces itself too. Hence a restarted
  member (same id and address, fresh state, incarnation 0) beats the failed/left record everyone
  holds for its previous life and is alive everywhere again. Snapshot entries are merged but not
  re-disseminated (the introducer's peers know them already).
* Anti-entropy. Every ``sync_every`` periods a member sends one random alive member a ``sync``
  with its view (all of it up to ``SNAPSHOT_CHUNK`` entries, else a random sample of that size, so
  the cost per member does not grow with n) and gets the peer's back. It repairs what
  piggybacking missed, e.g. two members that joined at the same moment through one introducer.
  Its suspect/failed entries about members we hold alive are ignored (stale, or our own probes
  will find out).
* Leave. ``leave`` marks us left at incarnation + 1, sends that to ``leave_fanout`` random members
  at once and again on each of the next ``leave_rounds`` periods, and keeps answering pings (with
  the left record in front). Receivers record ``left`` and emit ``leave``, never ``fail``.
* Dead members (failed/left) are not probed, and are forgotten ``dead_retention`` seconds after
  they entered that state. So that partitions heal, every ``reconnect_every`` periods a member
  pings one random *failed* member (not a left one): the ping carries the failed record, so a live
  member that was cut off refutes and comes back, and the reply's header tells us. One such ping
  per ``reconnect_every`` periods, whatever the number of failed members.
* Events: ``join`` when a member first appears alive/suspect or comes back from failed/left,
  ``fail`` when alive/suspect becomes failed, ``leave`` when alive/suspect becomes left. A
  suspect->alive refutation, and failed->left, are not events; nothing about ourselves is.

Messages are plain dicts. Each has ``t`` (type), ``from`` (sender id), ``inc`` (sender
incarnation) and an optional ``u``: a list of updates ``[state, node_id, addr, inc]``, where a
``suspect`` update may carry a fifth element, its accuser's id::

    ping      seq, to              probe; ``to`` is the intended node id (a stale address is ignored)
    ack       seq, of              answer to a ping, direct or relayed by a ping_req helper;
                                   ``of`` is the node that was probed
    ping_req  seq, target, taddr   ask the receiver to probe ``target`` at ``taddr`` for us
    gossip    [chk]                dissemination only (suspicions, refutations, leave); ``chk``:
                                   a suspect's id the receiver should check by pinging it
    join      addr                 the joiner's own gossip address
    join_ack  you, m               incarnation assigned to the joiner; snapshot entries (update format)
    sync      m, r                 view sample (update format); ``r`` true asks for the peer's back

Anything else (not a dict, wrong types, out-of-range numbers, oversized lists, unknown ``t``) is
dropped whole and counted in ``stats["schema"]``.
"""

from __future__ import annotations

import collections
import functools
import heapq
import itertools
import math
import random
from typing import Any

from gossip.config import GossipConfig
from gossip.types import MemberEvent, MemberInfo, State

ALIVE, SUSPECT, FAILED, LEFT = State.ALIVE, State.SUSPECT, State.FAILED, State.LEFT
_RANK = {ALIVE: 0, SUSPECT: 1, FAILED: 2, LEFT: 3}
_STATE_OF = {s.value: s for s in State}
_VALUE = {s: s.value for s in State}  # plain str for the wire (Enum.value is a slow property)
_LIVE = (ALIVE, SUSPECT)
_DEAD = (FAILED, LEFT)

MAX_INT = 2**62                 # incarnations and sequence numbers beyond this are garbage
MAX_ID = 128                    # longest node id accepted
MAX_ADDR = 300                  # longest "host:port" accepted
MAX_UPDATES = 64                # longest piggyback list accepted
SNAPSHOT_CHUNK = 256            # members per join_ack / sync datagram (about 12 KiB)
MAX_SNAPSHOT = 1024             # longest member list accepted in one message
TYPES = frozenset(("ping", "ack", "ping_req", "gossip", "join", "join_ack", "sync"))

Update = list[Any]  # [state value, node_id, addr, incarnation], as on the wire
Parsed = tuple[State, str, str, int, str | None]  # state, node_id, addr, inc, accuser


def suspicion_timeout(config: GossipConfig, n: int) -> float:
    """Shortest suspicion, once confirmed: ``suspicion_periods * period * max(1, log10 n)``."""
    return config.suspicion_periods * config.period * max(1.0, math.log10(max(n, 1)))


def suspicion_remaining(config: GossipConfig, n: int, confirmations: int) -> float:
    """Suspicion length after ``confirmations`` independent accusers beyond the first (Lifeguard)::

        lo = suspicion_timeout(n); hi = suspicion_max_mult * lo
        k = suspicion_confirmations, or 0 when n - 2 < k (too few members to ever confirm)
        timeout = lo if k == 0 else max(lo, hi - (hi - lo) * log(c + 1) / log(k + 1))

    An unconfirmed suspicion (most likely a lost datagram) waits ``hi``, time for the refutation
    to reach everyone even when piggyback space is scarce; a crash is confirmed within a period
    by the members asked to check it, and then only ``lo`` counts.
    """
    lo = suspicion_timeout(config, n)
    k = config.suspicion_confirmations
    if k < 1 or n - 2 < k:
        return lo
    hi = max(lo, config.suspicion_max_mult * lo)
    return max(lo, hi - (hi - lo) * math.log(confirmations + 1) / math.log(k + 1))


def retransmit_limit(config: GossipConfig, n: int) -> int:
    """How many times one update is piggybacked: ``ceil(retransmit_mult * ln(n + 1))``."""
    return max(1, math.ceil(config.retransmit_mult * math.log(n + 1)))


def rejoin_incarnation(claimed: int, known: tuple[State, int] | None) -> int:
    """The incarnation a joiner gets, so that its alive record beats whatever the cluster holds."""
    if known is None:
        return claimed
    state, inc = known
    if inc < claimed or (inc == claimed and state is ALIVE):
        return claimed
    return inc + 1


def _is_int(x: object) -> bool:
    return type(x) is int and 0 <= x <= MAX_INT


def _is_id(x: object) -> bool:
    return type(x) is str and 0 < len(x) <= MAX_ID


@functools.lru_cache(maxsize=4096)  # the same few addresses arrive in every message
def _addr_ok(x: str) -> bool:
    if not 2 < len(x) <= MAX_ADDR:
        return False
    host, _, port = x.rpartition(":")
    return bool(host) and port.isascii() and port.isdigit() and len(port) <= 5


def _is_addr(x: object) -> bool:
    return type(x) is str and _addr_ok(x)


def _parse_updates(raw: object, limit: int) -> list[Parsed] | None:
    """Validated updates, or None if anything in the list is malformed (the message is dropped)."""
    if (type(raw) is not list and type(raw) is not tuple) or len(raw) > limit:
        return None
    out: list[Parsed] = []
    state_of = _STATE_OF
    for u in raw:
        if type(u) is not list and type(u) is not tuple:
            return None
        n = len(u)
        if n == 4:
            s, nid, addr, inc = u
            by = None
        elif n == 5:
            s, nid, addr, inc, by = u
            if not _is_id(by):
                return None
        else:
            return None
        if type(s) is not str or type(nid) is not str or type(addr) is not str or type(inc) is not int:
            return None
        st = state_of.get(s)
        if st is None or not 0 < len(nid) <= MAX_ID or not 0 <= inc <= MAX_INT or not _addr_ok(addr):
            return None
        out.append((st, nid, addr, inc, by))
    return out


def _valid_body(t: str, msg: dict[Any, Any]) -> bool:
    if t == "ping":
        return _is_int(msg.get("seq")) and _is_id(msg.get("to"))
    if t == "ack":
        return _is_int(msg.get("seq")) and _is_id(msg.get("of"))
    if t == "ping_req":
        return _is_int(msg.get("seq")) and _is_id(msg.get("target")) and _is_addr(msg.get("taddr"))
    if t == "join":
        return _is_addr(msg.get("addr"))
    if t == "join_ack":
        return _is_int(msg.get("you"))  # ``m`` is parsed with the header
    if t == "sync":
        return type(msg.get("r", False)) is bool
    if t == "gossip":
        return "chk" not in msg or _is_id(msg["chk"])
    return True


class _Member:
    __slots__ = ("accusers", "addr", "deadline", "inc", "node_id", "since", "state", "susp_start")

    def __init__(self, node_id: str, addr: str, state: State, inc: int, since: float) -> None:
        self.node_id = node_id
        self.addr = addr
        self.state = state
        self.inc = inc
        self.since = since
        # the current suspicion: when we learnt it, who accused, when it turns into failure
        self.susp_start = 0.0
        self.accusers: set[str] = set()
        self.deadline = math.inf

    def info(self) -> MemberInfo:
        return MemberInfo(self.node_id, self.addr, self.state, self.inc, self.since)

    def update(self) -> Update:
        return [_VALUE[self.state], self.node_id, self.addr, self.inc]


class _Probe:
    __slots__ = ("acked", "end", "inc", "indirect_at", "sent", "seq", "target")

    def __init__(self, target: str, inc: int, seq: int, indirect_at: float, end: float, sent: float) -> None:
        self.sent = sent
        self.target = target
        self.inc = inc  # the life of the target we probe: a newer one we hear of meanwhile is not judged
        self.seq = seq
        self.indirect_at = indirect_at  # inf once the ping_reqs went out
        self.end = end
        self.acked = False


class _IdSet:
    """A set of ids with O(1) add, remove and uniform random picks (a list plus positions)."""

    __slots__ = ("items", "pos")

    def __init__(self) -> None:
        self.items: list[str] = []
        self.pos: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.items)

    def add(self, nid: str) -> None:
        if nid not in self.pos:
            self.pos[nid] = len(self.items)
            self.items.append(nid)

    def discard(self, nid: str) -> None:
        i = self.pos.pop(nid, None)
        if i is None:
            return
        last = self.items.pop()
        if last != nid:
            self.items[i] = last
            self.pos[last] = i

    def sample(self, rng: random.Random, k: int, exclude: str | None = None) -> list[str]:
        """Up to ``k`` distinct random ids, never ``exclude``; O(k), not O(len)."""
        n = len(self.items)
        extra = 1 if exclude is not None and exclude in self.pos else 0
        picked = rng.sample(self.items, min(n, k + extra))
        return [x for x in picked if x != exclude][:k]


class _Broadcasts:
    """Updates waiting to be piggybacked, bucketed by how often each was sent, so picking the
    fewest-sent (newest first on ties) costs O(buckets + picked) however long the queue is."""

    __slots__ = ("buckets", "where")

    def __init__(self) -> None:
        self.buckets: list[dict[str, Update]] = [{}]
        self.where: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.where)

    def put(self, update: Update) -> None:
        nid = update[1]
        b = self.where.get(nid)
        if b is not None:
            del self.buckets[b][nid]
        self.buckets[0][nid] = update  # dicts keep insertion order: last is newest
        self.where[nid] = 0

    def discard(self, nid: str) -> None:
        b = self.where.pop(nid, None)
        if b is not None:
            del self.buckets[b][nid]

    def take(self, room: int, limit: int, skip: str | None, out: list[Update]) -> None:
        """Append up to ``room`` updates to ``out`` and count them sent; drop those sent ``limit`` times."""
        buckets, where = self.buckets, self.where
        picks: list[tuple[int, list[str]]] = []
        need = room
        for b, bucket in enumerate(buckets):
            if not bucket:
                continue
            if skip is not None and skip in bucket:
                ids = [x for x in itertools.islice(reversed(bucket), need + 1) if x != skip][:need]
            elif len(bucket) <= need:
                ids = list(bucket)
            else:
                ids = list(itertools.islice(reversed(bucket), need))
            picks.append((b, ids))
            need -= len(ids)
            if need <= 0:
                break
        for b, ids in picks:  # move only now, or we would pick the same update again from b + 1
            src = buckets[b]
            nxt = b + 1
            if nxt >= limit:
                for nid in ids:
                    out.append(src.pop(nid))
                    del where[nid]
                continue
            if nxt == len(buckets):
                buckets.append({})
            dst = buckets[nxt]
            for nid in ids:
                update = src.pop(nid)
                out.append(update)
                dst[nid] = update
                where[nid] = nxt


class Swim:
    """One member's SWIM state machine. Not thread-safe: the caller serializes all calls."""

    def __init__(self, node_id: str, addr: str, config: GossipConfig, rng: random.Random, now: float,
                 incarnation: int = 0) -> None:
        self.node_id = node_id
        self.addr = addr
        self.config = config
        self.rng = rng
        self.incarnation = incarnation
        self.state = ALIVE
        self.since = now
        self.stats: collections.Counter[str] = collections.Counter()
        self.probe_rtts: collections.deque[float] = collections.deque(maxlen=1024)   # direct probes acked
        # Lifeguard's local health: acks that come back after we gave up on them say this node (or its
        # peers) runs slow right now; probe windows stretch by (1 + health) until timely acks return.
        # Lost datagrams never come back late, so loss alone does not stretch them.
        self.health = 0
        self._last_probe: tuple[int, str] | None = None   # (seq, target) of the probe that just ended
        self._members: dict[str, _Member] = {}
        self._alive = _IdSet()    # members in state ALIVE (helpers, fan-out, sync peers)
        self._failed = _IdSet()   # members in state FAILED (reconnect pings)
        self._n_live = 1          # alive + suspect, ourselves included
        self._out: list[tuple[str, dict[str, Any]]] = []
        self._events: list[MemberEvent] = []
        self._queue = _Broadcasts()
        self._limit = retransmit_limit(config, 1)
        self._seq = rng.randrange(1 << 30)
        self._joined = False
        self._joining = False
        self._introducers: list[str] = []
        self._join_next = math.inf
        self._join_count = 0
        self._probe: _Probe | None = None
        self._next_probe = math.inf
        self._round: list[str] = []
        self._round_pos = 0
        self._probes = 0
        self._sync_phase = rng.randrange(max(1, config.sync_every))
        # ping_reqs we relay: our seq -> (requester addr, requester id, its seq, target, expiry)
        self._relay: dict[int, tuple[str, str, int, str, float]] = {}
        self._noticed: dict[str, float] = {}  # member -> until when we do not tell it again
        # suspicions we were asked to check: our seq -> [target, retry at, verdict at, incarnation]
        self._checks: dict[int, list[Any]] = {}
        # timers, invalidated lazily: (expiry, node_id, incarnation)
        self._suspects: list[tuple[float, str, int]] = []
        self._forget: list[tuple[float, str, int]] = []
        self._leave_rounds = 0
        self._leave_next = math.inf

    # -- public API ---------------------------------------------------------------------------------
    def join(self, introducers: list[str], now: float) -> None:
        """Start joining through ``introducers`` (none, or only ourselves: we are the first member)."""
        if self.state is LEFT:
            return
        self._introducers = [a for a in dict.fromkeys(introducers) if a != self.addr]
        if not self._introducers:
            self._become_joined(now)
            return
        self._joining = True
        self._join_count = 0
        self._send_join(now)

    def leave(self, now: float) -> None:
        """Voluntary leave: others must record us ``left``, not ``failed``."""
        if self.state is LEFT:
            return
        self.state = LEFT
        self.since = now
        self.incarnation = min(self.incarnation + 1, MAX_INT)
        self._joining = False
        self._probe = None
        self._leave_rounds = self.config.leave_rounds
        self._send_leave(now)

    def tick(self, now: float) -> None:
        """Advance every timer that is due at ``now``."""
        if self._joining and now >= self._join_next:
            self._send_join(now)
        if self._checks:
            self._run_checks(now)
        if self._suspects and self._suspects[0][0] <= now:
            self._expire_suspects(now)
        if self._forget and self._forget[0][0] <= now:
            self._expire_dead(now)
        if self.state is LEFT:
            if self._leave_rounds > 0 and now >= self._leave_next:
                self._leave_rounds -= 1
                self._send_leave(now)
            return
        if not self._joined:
            return
        p = self._probe
        if p is not None and not p.acked and now >= p.indirect_at:
            self._send_indirect(p)
        if now >= self._next_probe:
            self._finish_probe(now)
            self._probes += 1
            if self._relay:
                self._relay = {k: v for k, v in self._relay.items() if v[4] > now}
            if self._noticed:
                self._noticed = {k: v for k, v in self._noticed.items() if v > now}
            cfg = self.config
            if self._failed and self._probes % max(1, cfg.reconnect_every) == 0:
                self._reconnect()
            if cfg.sync_every > 0 and self._probes % cfg.sync_every == self._sync_phase:
                self._start_sync()
            self._start_probe(now)
            period = cfg.period * (1 + self.health)
            nxt = self._next_probe + period
            self._next_probe = nxt if nxt > now else now + period

    def receive(self, src: str, msg: object, now: float) -> None:
        """Handle one decoded message from ``src``; malformed input is counted and ignored."""
        try:
            self._receive(src, msg, now)
        except Exception:  # a bug must not let one datagram stop the node; tests assert this stays 0
            self.stats["internal_error"] += 1

    def take_outgoing(self) -> list[tuple[str, dict[str, Any]]]:
        out, self._out = self._out, []
        return out

    def take_events(self) -> list[MemberEvent]:
        ev, self._events = self._events, []
        return ev

    def members(self, now: float) -> list[MemberInfo]:
        """Our whole view (dead members until their retention ends), ourselves first."""
        if self._forget and self._forget[0][0] <= now:
            self._expire_dead(now)
        return [self._self_info(), *(m.info() for m in self._members.values())]

    def alive(self) -> list[MemberInfo]:
        """Alive and suspect members (a suspect still counts), ourselves included unless we left."""
        out = [self._self_info()] if self.state is not LEFT else []
        out.extend(m.info() for m in self._members.values() if m.state in _LIVE)
        return out

    def probe_delays(self) -> dict[str, float]:
        """Round trips of the last acked direct probes (seconds): p50, p99, max and how many."""
        rtts = sorted(self.probe_rtts)
        if not rtts:
            return {"n": 0}
        def pick(q: float) -> float:
            return rtts[min(len(rtts) - 1, int(q * len(rtts)))]
        return {"n": len(rtts), "p50": pick(0.5), "p99": pick(0.99), "max": rtts[-1]}

    def next_deadline(self) -> float:
        """Earliest time ``tick`` has work; ``inf`` when nothing is scheduled."""
        t = self._join_next if self._joining else math.inf
        if self.state is LEFT:
            if self._leave_rounds > 0:
                t = min(t, self._leave_next)
        elif self._joined:
            t = min(t, self._next_probe)
            p = self._probe
            if p is not None and not p.acked and p.indirect_at < t:
                t = p.indirect_at
        for c in self._checks.values():
            t = min(t, c[1], c[2])
        members = self._members
        s = self._suspects
        while s:
            exp, nid, inc = s[0]
            m = members.get(nid)
            if m is not None and m.state is SUSPECT and m.inc == inc and m.deadline == exp:
                t = min(t, exp)
                break
            heapq.heappop(s)
        f = self._forget
        while f:
            exp, nid, inc = f[0]
            m = members.get(nid)
            if m is not None and m.state in _DEAD and m.inc == inc:
                t = min(t, exp)
                break
            heapq.heappop(f)
        return t

    # -- sending --------------------------------------------------------------------------------------
    def _self_info(self) -> MemberInfo:
        return MemberInfo(self.node_id, self.addr, self.state, self.incarnation, self.since)

    def _self_update(self) -> Update:
        return [_VALUE[self.state], self.node_id, self.addr, self.incarnation]

    def _send(self, dest: str, msg: dict[str, Any], dest_id: str | None) -> None:
        """Stamp the header, piggyback updates and queue ``msg`` for ``dest``."""
        msg["from"] = self.node_id
        msg["inc"] = self.incarnation
        u: list[Update] = []
        if self.state is LEFT:
            u.append(self._self_update())
        skip = None
        if dest_id is not None:
            m = self._members.get(dest_id)
            if m is not None and (m.state is SUSPECT or m.state is FAILED):
                u.append(m.update())
                skip = dest_id
        if self._queue:
            room = self.config.piggyback_max - len(u)
            if room > 0:
                self._queue.take(room, self._limit, skip, u)
        if u:
            msg["u"] = u
        self._out.append((dest, msg))
        self.stats["sent." + msg["t"]] += 1

    def _gossip_to(self, dest_id: str) -> None:
        m = self._members.get(dest_id)
        if m is not None:
            self._send(m.addr, {"t": "gossip"}, dest_id)

    def _send_join(self, now: float) -> None:
        targets = self._introducers + [self._members[nid].addr for nid in self._alive.items]
        dest = targets[self._join_count % len(targets)]
        self._join_count += 1
        self._join_next = now + self.config.join_retry
        self._send(dest, {"t": "join", "addr": self.addr}, None)

    def _send_leave(self, now: float) -> None:
        self._leave_next = now + self.config.period
        for nid in self._alive.sample(self.rng, self.config.leave_fanout):
            self._gossip_to(nid)

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % MAX_INT
        return self._seq

    # -- probing --------------------------------------------------------------------------------------
    def _become_joined(self, now: float) -> None:
        was = self._joined
        self._joined = True
        self._joining = False
        self._join_next = math.inf
        if not was:
            self._next_probe = now + self.rng.uniform(0, self.config.period)  # desynchronize members

    def _next_target(self) -> _Member | None:
        members = self._members
        for _ in range(2):
            while self._round_pos < len(self._round):
                m = members.get(self._round[self._round_pos])
                self._round_pos += 1
                if m is not None and m.state in _LIVE:
                    return m
            self._round = [nid for nid, m in members.items() if m.state in _LIVE]
            self.rng.shuffle(self._round)
            self._round_pos = 0
        return None

    def _start_probe(self, now: float) -> None:
        m = self._next_target()
        if m is None:
            self._probe = None
            return
        seq = self._next_seq()
        cfg = self.config
        k = 1 + self.health
        self._probe = _Probe(m.node_id, m.inc, seq, now + cfg.ack_timeout * k, now + cfg.period * k, now)
        self._send(m.addr, {"t": "ping", "seq": seq, "to": m.node_id}, m.node_id)

    def _send_indirect(self, p: _Probe) -> None:
        p.indirect_at = math.inf
        target = self._members.get(p.target)
        if target is None or target.state not in _LIVE:
            return
        for nid in self._alive.sample(self.rng, self.config.indirect_k, exclude=p.target):
            self._send(self._members[nid].addr,
                       {"t": "ping_req", "seq": p.seq, "target": p.target, "taddr": target.addr}, nid)
        self._send(target.addr, {"t": "ping", "seq": p.seq, "to": p.target}, p.target)

    def _finish_probe(self, now: float) -> None:
        p, self._probe = self._probe, None
        if p is None or p.acked:
            return
        self._last_probe = (p.seq, p.target)
        if now - p.end > self.config.period / 2:
            self.stats["late_probe"] += 1  # we were stalled: the silence may be ours
            return
        m = self._members.get(p.target)
        if m is None or m.state not in _LIVE or m.inc != p.inc:
            return
        if not self.config.suspicion:
            self._apply(FAILED, m.node_id, m.addr, m.inc, now, rebroadcast=True)
            self.stats["declared_failed"] += 1
        elif m.state is SUSPECT:  # someone suspected it already: ours is an independent confirmation
            self._apply(SUSPECT, m.node_id, m.addr, m.inc, now, rebroadcast=True, by=self.node_id)
            return
        else:
            self._apply(SUSPECT, m.node_id, m.addr, m.inc, now, rebroadcast=True, by=self.node_id)
            self.stats["suspected"] += 1
            self._gossip_to(m.node_id)  # carries the suspicion: it can refute in one trip
        # start the news off now rather than on our next ping, and have these members check the
        # target themselves: a crash is then confirmed (and everyone's timer short) within a period
        for nid in self._alive.sample(self.rng, self.config.indirect_k, exclude=m.node_id):
            h = self._members[nid]
            self._send(h.addr, {"t": "gossip", "chk": m.node_id}, nid)

    def _start_check(self, target: str, now: float) -> None:
        """Asked to check a suspicion: ping the suspect (twice, like a probe's direct path)."""
        m = self._members.get(target)
        if m is None or m.state is not SUSPECT or self.state is LEFT or any(
                c[0] == target for c in self._checks.values()):
            return
        seq = self._next_seq()
        cfg = self.config
        self._checks[seq] = [target, now + cfg.ack_timeout, now + cfg.period, m.inc]
        self._send(m.addr, {"t": "ping", "seq": seq, "to": target}, target)

    def _run_checks(self, now: float) -> None:
        for seq, c in list(self._checks.items()):
            target, retry_at, verdict_at, inc = c
            m = self._members.get(target)
            if m is None or m.state is not SUSPECT or m.inc != inc:  # refuted (or gone) meanwhile
                del self._checks[seq]
            elif now >= verdict_at:
                del self._checks[seq]
                # not if we were the stalled one (a driver that sleeps up to a period may be that late)
                if now - verdict_at <= 2 * self.config.period:
                    self._apply(SUSPECT, target, m.addr, inc, now, rebroadcast=True, by=self.node_id)
            elif now >= retry_at:
                c[1] = math.inf
                self._send(m.addr, {"t": "ping", "seq": seq, "to": target}, target)

    def _reconnect(self) -> None:
        nid = self.rng.choice(self._failed.items)
        m = self._members[nid]
        self._send(m.addr, {"t": "ping", "seq": self._next_seq(), "to": nid}, nid)

    def _start_sync(self) -> None:
        if self._alive:
            nid = self.rng.choice(self._alive.items)
            self._send(self._members[nid].addr, {"t": "sync", "r": True, "m": self._sample_view()}, nid)

    def _sample_view(self) -> list[Update]:
        """Ourselves plus our view, or a random part of it that fits one datagram."""
        others = list(self._members.values())
        if len(others) >= SNAPSHOT_CHUNK:
            others = self.rng.sample(others, SNAPSHOT_CHUNK - 1)
        return [self._self_update(), *(m.update() for m in others)]

    # -- timers ---------------------------------------------------------------------------------------
    def _expire_suspects(self, now: float) -> None:
        s = self._suspects
        while s and s[0][0] <= now:
            _, nid, inc = heapq.heappop(s)
            m = self._members.get(nid)
            if m is not None and m.state is SUSPECT and m.inc == inc and m.deadline <= now:
                self._apply(FAILED, nid, m.addr, inc, now, rebroadcast=True)
                self.stats["declared_failed"] += 1

    def _expire_dead(self, now: float) -> None:
        f = self._forget
        retention = self.config.dead_retention
        while f and f[0][0] <= now:
            _, nid, inc = heapq.heappop(f)
            m = self._members.get(nid)
            if m is not None and m.state in _DEAD and m.inc == inc and m.since + retention <= now:
                del self._members[nid]
                self._track(nid, m.state, None)
                self._queue.discard(nid)

    # -- state changes --------------------------------------------------------------------------------
    def _track(self, nid: str, old: State | None, new: State | None) -> None:
        """Keep the per-state indexes and the live count in step with one record's state change."""
        if old is new:
            return
        if old is ALIVE:
            self._alive.discard(nid)
        elif old is FAILED:
            self._failed.discard(nid)
        if new is ALIVE:
            self._alive.add(nid)
        elif new is FAILED:
            self._failed.add(nid)
        delta = (new is ALIVE or new is SUSPECT) - (old is ALIVE or old is SUSPECT)
        if delta:
            self._n_live += delta
            self._limit = retransmit_limit(self.config, self._n_live)

    def _apply(self, st: State, nid: str, addr: str, inc: int, now: float, rebroadcast: bool,
               by: str | None = None) -> bool:
        """Merge one update into the view; True if it changed our record of that member (or us).

        ``by`` is who accused, for a suspicion: a new accuser of the suspicion we hold shortens it.
        """
        if nid == self.node_id:
            return self._about_self(st, inc, now)
        v = _VALUE[st]
        update = [v, nid, addr, inc] if by is None or st is not SUSPECT else [v, nid, addr, inc, by]
        m = self._members.get(nid)
        if m is None:
            m = _Member(nid, addr, st, inc, now)
            self._members[nid] = m
            self._track(nid, None, st)
            if st in _LIVE:
                self._emit("join", m, now)
                self._add_to_round(nid)
                if st is SUSPECT:
                    self._start_suspicion(m, now, by)
                if rebroadcast:
                    self._queue.put(update)
            else:  # first heard of as dead: listed, not announced
                self._schedule_forget(m)
            return True
        old = m.state
        if (inc, _RANK[st]) <= (m.inc, _RANK[old]):
            if st is SUSPECT and old is SUSPECT and inc == m.inc and by is not None and by not in m.accusers:
                self._confirm(m, by, now)
                if rebroadcast:
                    self._queue.put(update)
            return False
        m.inc = inc
        m.addr = addr
        if rebroadcast:
            self._queue.put(update)
        if st is not old:
            m.state = st
            m.since = now
            self._track(nid, old, st)
        if st in _LIVE:
            if old in _DEAD:
                self._emit("join", m, now)
                self._add_to_round(nid)
            if st is SUSPECT:
                self._start_suspicion(m, now, by)
        else:
            if old in _LIVE:
                self._emit("fail" if st is FAILED else "leave", m, now)
            self._schedule_forget(m)
        return True

    def _add_to_round(self, nid: str) -> None:
        if self._round:  # probe a newcomer within this round, at a random place
            self._round.insert(self.rng.randint(self._round_pos, len(self._round)), nid)

    def _schedule_forget(self, m: _Member) -> None:
        heapq.heappush(self._forget, (m.since + self.config.dead_retention, m.node_id, m.inc))

    def _start_suspicion(self, m: _Member, now: float, by: str | None) -> None:
        m.susp_start = now
        m.accusers = {by} if by is not None else set()
        m.deadline = now + suspicion_remaining(self.config, self._n_live, 0)
        heapq.heappush(self._suspects, (m.deadline, m.node_id, m.inc))

    def _confirm(self, m: _Member, by: str, now: float) -> None:
        m.accusers.add(by)
        self.stats["confirmations"] += 1
        deadline = m.susp_start + suspicion_remaining(self.config, self._n_live, len(m.accusers) - 1)
        if deadline < m.deadline:
            m.deadline = deadline
            heapq.heappush(self._suspects, (deadline, m.node_id, m.inc))

    def _emit(self, kind: str, m: _Member, now: float) -> None:
        self._events.append(MemberEvent(kind, m.node_id, m.addr, m.inc, now))

    def _about_self(self, st: State, inc: int, now: float) -> bool:
        """Someone's record of us: refute anything but alive, unless we are leaving.

        Being held failed is told to subscribers (event ``self_failed``): while we were out, the
        others may have moved on without us (HyDFS must not vouch for state it held then).
        """
        if self.state is LEFT:
            if self.incarnation < inc < MAX_INT:  # someone knows a later life of ours: our leave must beat it
                self.incarnation = inc + 1
                self._queue.put(self._self_update())
            return False
        if st is ALIVE:
            if inc > self.incarnation:
                self.incarnation = inc
            return False
        if inc < self.incarnation or inc >= MAX_INT:  # at the ceiling nobody could read our answer
            return False
        self.incarnation = inc + 1
        self.stats["refuted"] += 1
        if st is FAILED:
            self._events.append(MemberEvent("self_failed", self.node_id, self.addr, inc, now))
        self._queue.put(self._self_update())
        return True

    # -- receiving ------------------------------------------------------------------------------------
    def _receive(self, src: str, msg: object, now: float) -> None:
        if type(msg) is not dict:
            self.stats["schema"] += 1
            return
        t = msg.get("t")
        frm = msg.get("from")
        inc = msg.get("inc")
        if type(t) is not str or t not in TYPES or not _is_id(frm) or not _is_int(inc):
            self.stats["schema"] += 1
            return
        assert isinstance(frm, str) and isinstance(inc, int)
        raw_u = msg.get("u")
        updates = _parse_updates(raw_u, MAX_UPDATES) if raw_u is not None else []
        entries = _parse_updates(msg.get("m"), MAX_SNAPSHOT) if t == "join_ack" or t == "sync" else []
        if updates is None or entries is None or not _valid_body(t, msg):
            self.stats["schema"] += 1
            return
        self.stats["recv." + t] += 1
        if frm == self.node_id:
            self.stats["from_self"] += 1
            return
        refuted = False
        for st, nid, addr, uinc, by in updates:
            if st is FAILED and self._failure_news(nid, addr, uinc, frm, now):
                continue
            if self._apply(st, nid, addr, uinc, now, True, by) and nid == self.node_id:
                refuted = True
        sender = self._members.get(frm)
        if sender is not None:
            self._apply(ALIVE, frm, sender.addr, inc, now, rebroadcast=True)
        if t == "ping":
            if msg["to"] != self.node_id:
                self.stats["misdirected"] += 1
                return
            self._send(src, {"t": "ack", "seq": msg["seq"], "of": self.node_id}, frm)
            return
        if refuted:
            self._send(src, {"t": "gossip"}, frm)
        elif sender is not None and t != "join" and (sender.state is SUSPECT or sender.state is FAILED) \
                and self._noticed.get(frm, -math.inf) <= now:
            self._noticed[frm] = now + self.config.period  # it does not know: tell it, so it refutes
            self._send(src, {"t": "gossip"}, frm)
        if t == "gossip":
            if "chk" in msg:
                self._start_check(msg["chk"], now)
        elif t == "ack":
            self._on_ack(msg["seq"], msg["of"], now)
        elif t == "ping_req":
            self._on_ping_req(src, frm, msg, now)
        elif t == "join":
            self._on_join(src, frm, inc, msg["addr"], now)
        elif t == "join_ack":
            self._on_join_ack(msg["you"], entries, now)
        elif t == "sync":
            self._on_sync(src, frm, msg.get("r") is True, entries, now)

    def _failure_news(self, nid: str, addr: str, inc: int, frm: str, now: float) -> bool:
        """Someone else concluded ``nid`` failed while we still hold it plainly alive: take it as a
        confirmed suspicion (the shortest timeout) instead, and spread that. The member can then
        refute a verdict reached on the far side of a partition, so a healed partition does not
        make each side fail its own members with stale news; a real crash costs such a member at
        most one shortest suspicion timeout more. True if handled here."""
        m = self._members.get(nid)
        if m is None or m.state is not ALIVE or inc < m.inc or not self.config.suspicion:
            return False
        self._apply(SUSPECT, nid, addr, inc, now, rebroadcast=True, by=frm)
        deadline = now + suspicion_timeout(self.config, self._n_live)
        if deadline < m.deadline:
            m.deadline = deadline
            heapq.heappush(self._suspects, (deadline, nid, inc))
        return True

    def _on_ack(self, seq: int, of: str, now: float) -> None:
        p = self._probe
        if p is not None and p.seq == seq and p.target == of:
            p.acked = True
            self.probe_rtts.append(now - p.sent)   # how late a busy peer answers: the margin to suspicion
            if now - p.sent <= self.config.ack_timeout and self.health:
                self.health -= 1                   # a timely direct ack: back toward normal windows
            return
        if self._last_probe == (seq, of):          # the ack of a probe we already gave up on
            self._last_probe = None
            self.health = min(self.config.health_max, self.health + 1)
            self.stats["late_ack"] += 1
            return
        check = self._checks.get(seq)
        if check is not None and check[0] == of:
            del self._checks[seq]
            return
        relay = self._relay.pop(seq, None)
        if relay is not None and relay[3] == of:
            req_addr, req_id, req_seq, target, _ = relay
            self._send(req_addr, {"t": "ack", "seq": req_seq, "of": target}, req_id)
            return
        self.stats["stale_ack"] += 1

    def _on_ping_req(self, src: str, frm: str, msg: dict[Any, Any], now: float) -> None:
        target = msg["target"]
        if self.state is LEFT or target == self.node_id:
            return
        seq = self._next_seq()
        self._relay[seq] = (src, frm, msg["seq"], target, now + self.config.period)
        self._send(msg["taddr"], {"t": "ping", "seq": seq, "to": target}, target)

    def _on_join(self, src: str, frm: str, claimed: int, addr: str, now: float) -> None:
        if self.state is LEFT:
            return
        m = self._members.get(frm)
        inc = rejoin_incarnation(claimed, (m.state, m.inc) if m is not None else None)
        self._apply(ALIVE, frm, addr, inc, now, rebroadcast=True)
        snap = [self._self_update(), *(x.update() for x in self._members.values())]
        for i in range(0, len(snap), SNAPSHOT_CHUNK):
            self._out.append((src, {"t": "join_ack", "from": self.node_id, "inc": self.incarnation,
                                    "you": inc, "m": snap[i:i + SNAPSHOT_CHUNK]}))
            self.stats["sent.join_ack"] += 1

    def _on_join_ack(self, you: int, entries: list[Parsed], now: float) -> None:
        if self.state is LEFT:
            return
        if you > self.incarnation:
            self.incarnation = you
        if not self._joined:
            self._queue.put(self._self_update())  # announce ourselves too: the introducer is one voice
        for st, nid, addr, inc, _ in entries:
            self._apply(st, nid, addr, inc, now, rebroadcast=False)
        self._become_joined(now)

    def _on_sync(self, src: str, frm: str, reply: bool, entries: list[Parsed], now: float) -> None:
        """Merge a peer's view. Its verdicts (suspect, failed) on members we hold alive are skipped:
        they may be old news from the far side of a healed partition, and if the member did crash
        our own probes find out. What a sync is for is the news piggybacking missed, mostly joins."""
        for st, nid, addr, inc, _ in entries:
            if st is FAILED or st is SUSPECT:
                m = self._members.get(nid)
                if m is not None and m.state is ALIVE:
                    continue
            self._apply(st, nid, addr, inc, now, rebroadcast=True)
        if reply and self.state is not LEFT:
            self._send(src, {"t": "sync", "m": self._sample_view()}, frm)

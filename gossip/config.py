"""Membership timing. Defaults target failure detection p99 <= 2 s on one machine (docs/membership.md)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class GossipConfig:
    period: float = 0.15           # seconds between two probes by one member
    ack_timeout: float = 0.06      # wait for a direct ack before asking k others (ping-req)
    indirect_k: int = 3            # members asked to probe on our behalf
    suspicion: bool = True         # off: a missed probe declares failure at once (bench compares)
    suspicion_periods: float = 5.0  # suspect -> failed after this many periods (scaled by log N)
    piggyback_max: int = 12        # updates carried per message
    retransmit_mult: int = 4       # an update is piggybacked about mult * log(N+1) times
    dead_retention: float = 60.0   # seconds a failed/left member stays listed
    join_retry: float = 0.5        # resend join (to the next introducer) until one answers
    reconnect_every: int = 5       # every this many periods, ping one failed member (partitions heal)
    leave_fanout: int = 3          # members told directly of a voluntary leave, per round
    leave_rounds: int = 2          # extra rounds (one per period) of that direct telling
    sync_every: int = 50           # every this many periods, swap a view sample with one member (0: never)

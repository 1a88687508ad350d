"""Membership timing. Defaults target failure detection p99 <= 2 s on one machine (docs/membership.md).

Why these values (5-10 real processes on 2 busy cores, loopback UDP, a few ms of jitter):
a crash is first probed within ~3 periods at p99, the probe takes 1 more, then the suspicion is
confirmed by the checkers and runs ``suspicion_periods`` periods: (3 + 1 + 5) * 0.15 s ~ 1.4 s,
plus gossip. The simulation (bench/membership_sim.py, tests/test_gossip_sim.py) measures p99 about
1.5 s at N = 10 with up to 10 ms of delay jitter, which leaves the rest of the 2 s for scheduling.
A member that stalls for less than about ``suspicion_periods * period`` (0.75 s) refutes in time.
Per member: 2 datagrams a period (13/s) whatever N, more only under loss.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class GossipConfig:
    period: float = 0.15           # seconds between two probes by one member
    ack_timeout: float = 0.06      # wait for a direct ack before ping-req + one direct retry (RTT << 1 ms)
    indirect_k: int = 3            # members asked to probe on our behalf (and to check a new suspect)
    suspicion: bool = True         # off: a missed probe declares failure at once (bench compares)
    suspicion_periods: float = 5.0  # confirmed suspect -> failed after this many periods (x max(1, log10 N))
    suspicion_max_mult: float = 6.0  # an unconfirmed suspicion lasts this many times longer (Lifeguard)
    suspicion_confirmations: int = 2  # independent accusers that bring it down to the shortest
    piggyback_max: int = 12        # updates carried per message (~0.5 KiB): 8 saturated at 20 % loss
    retransmit_mult: int = 4       # an update is piggybacked ceil(mult * ln(N+1)) times
    dead_retention: float = 60.0   # seconds a failed/left member stays listed
    join_retry: float = 0.5        # resend join (to the next introducer) until one answers
    reconnect_every: int = 5       # every this many periods, ping one failed member (partitions heal)
    leave_fanout: int = 3          # members told directly of a voluntary leave, per round
    leave_rounds: int = 2          # extra rounds (one per period) of that direct telling
    sync_every: int = 50           # every this many periods, swap a view sample with one member (0: never)
    health_max: int = 4            # Lifeguard: probe windows stretch up to (1 + this) x while acks come late

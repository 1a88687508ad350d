"""Raft timing and batching. Defaults are the cluster's; RainStorm exposes them as ``[control]`` settings.

Why these values (3-7 voters on one LAN, loopback RTT well under 1 ms, a busy Python event loop):
a heartbeat every 100 ms keeps followers' timers far from firing even with a few stalls of the loop,
and an election timeout of 1-2 s (randomized per node) lets one candidate usually win alone while a
leader crash is still replaced within about 2 s.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RaftConfig:
    heartbeat: float = 0.1           # seconds between a leader's heartbeats (appends) to each follower
    election_timeout: float = 1.0    # follower timeout drawn from [t, 2t); also the check-quorum / lease window
    max_entries_per_msg: int = 256   # one append carries at most this many entries ...
    max_bytes_per_msg: int = 1 << 20  # ... and about this many bytes of entry data (at least one entry)
    max_inflight: int = 16           # appends in flight to one follower before the leader waits for acks
    snapshot_every: int = 1000       # the driver compacts after this many applied entries since the last snapshot
    rpc_timeout: float = 1.0         # seconds a "raft.msgs" call may take before its messages count as dropped

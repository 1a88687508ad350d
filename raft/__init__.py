"""Raft consensus for RainStorm's control plane: a static voter set, pre-vote, check-quorum, snapshots.

The protocol is :mod:`raft.core` (sans-I/O, driven by messages and a clock, like :mod:`gossip.swim`);
:mod:`raft.driver` runs it over :mod:`net.rpc` and :mod:`raft.storage`; :mod:`raft.sim` runs it in a
seeded simulated network and checks Raft's safety invariants.
"""

from raft.config import RaftConfig
from raft.core import CANDIDATE, FOLLOWER, LEADER, PRE_CANDIDATE, NotLeader, RaftCore, Ready, Restored, Role
from raft.messages import Entry, HardState, MalformedMessage, Message, MsgType, Snapshot, from_wire

__all__ = [
    "CANDIDATE", "FOLLOWER", "LEADER", "PRE_CANDIDATE", "Entry", "HardState", "MalformedMessage", "Message",
    "MsgType", "NotLeader", "RaftConfig", "RaftCore", "Ready", "Restored", "Role", "Snapshot", "from_wire",
]

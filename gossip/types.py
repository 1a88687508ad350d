"""What the membership layer tells everyone else: member states, views and events."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class State(StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    FAILED = "failed"
    LEFT = "left"


@dataclass(frozen=True)
class MemberInfo:
    node_id: str
    addr: str  # "host:port" of the member's gossip (UDP) endpoint
    state: State
    incarnation: int
    since: float  # clock time the member entered ``state`` in this view


@dataclass(frozen=True)
class MemberEvent:
    """``kind`` is ``join`` (became alive, first time or after failed/left), ``fail`` or ``leave``;
    ``self_failed`` (about this node itself) when it learns others held it failed and it refuted."""

    kind: str
    node_id: str
    addr: str
    incarnation: int
    at: float


class MembershipView(Protocol):
    """The small interface higher layers (hydfs, rainstorm) see of membership."""

    def alive(self) -> list[MemberInfo]: ...

    def subscribe(self, callback: object) -> None: ...

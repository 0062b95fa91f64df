"""What the STOMP transport keeps per subscription and per delivery (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from queue import Queue
from typing import Any

from zhpc.transport.base import Callback


@dataclass
class Subscription:
    sub_id: str
    source: str  # zhpc queue or topic name
    callback: Callback | None
    prefetch: int
    broadcast: bool
    active: bool = True
    inbox: Queue[Any] = field(default_factory=Queue)
    #: After unsubscribe: how many received frames poll still delivers (None: active).
    deliverable: int | None = None
    ended: bool = False


@dataclass(frozen=True, slots=True)
class Delivery:
    """What settling a message needs: the ack id of its connection generation."""

    generation: int
    ack_id: str
    broadcast: bool
    frame_headers: dict[str, str]
    fetch_sub: str = ""  # the one-message subscription of a fetch, ended once settled
    sub_id: str = ""

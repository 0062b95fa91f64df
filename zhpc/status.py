"""Status heartbeats: what services and ``zhpc wrap`` broadcast, in python-workflows' format.

Both send the same payload on the same topic, so workflows' status monitors
(and ``zhpc demo``) understand every zhpc process alike. Importing this module
is cheap (``zhpc wrap`` starts per image on some beamlines): the message class
is imported only when a heartbeat is sent.
"""

from __future__ import annotations

import os
import time

from zhpc import __version__

TYPE_CHECKING = False  # not typing's: typing costs ms at zhpc wrap's start-up
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

    from zhpc.message import Outgoing

STATUS_TOPIC = "transient.status"
#: Seconds a heartbeat stays on the broker: a newer one replaces it long before.
STATUS_EXPIRATION = 15

# workflows' service status codes, so its status monitors understand zhpc services.
STATUS_STARTING, STATUS_IDLE, STATUS_PROCESSING, STATUS_SHUTDOWN, STATUS_END = 1, 2, 4, 5, 6
STATUS_TEXT = {
    STATUS_STARTING: "starting",
    STATUS_IDLE: "idle",
    STATUS_PROCESSING: "processing",
    STATUS_SHUTDOWN: "shutting down",
    STATUS_END: "shutdown",
}


class Utilization:
    """Share of recent time spent in each status, as workflows reports it.

    O(1) per status change: a service switches status twice per message, so a
    history list would grow by thousands of entries a second under load.
    Each report covers the time since the previous report.
    """

    def __init__(self, status: int = STATUS_STARTING) -> None:
        self.status = status
        self.since = time.monotonic()
        self.spent: dict[int, float] = {}

    def enter(self, status: int) -> None:
        if status != self.status:
            now = time.monotonic()
            self.spent[self.status] = self.spent.get(self.status, 0.0) + now - self.since
            self.status, self.since = status, now

    def report(self) -> dict[int, float]:
        now = time.monotonic()
        spent, self.spent = self.spent, {}
        spent[self.status] = spent.get(self.status, 0.0) + now - self.since
        self.since = now
        total = sum(spent.values()) or 1.0
        return {status: round(seconds / total, 4) for status, seconds in spent.items()}


class Heartbeat:
    """A service's status (with the time spent in each) and when its next broadcast is due."""

    def __init__(self, interval: float, now: float) -> None:
        self.interval = interval
        self.next = now
        self.utilization = Utilization()
        self.host = host_id()

    @property
    def status(self) -> int:
        return self.utilization.status

    def enter(self, status: int) -> None:
        self.utilization.enter(status)

    def due(self, now: float, force: bool = False) -> bool:
        """True (and the next one scheduled) if a broadcast is due at ``now``, or forced."""
        if not force and now < self.next:
            return False
        self.next = now + self.interval
        return True


def host_id() -> str:
    """workflows' host field: the host name reversed, then the process id."""
    return f"{'.'.join(reversed(os.uname().nodename.split('.')))}.{os.getpid()}"


def status_payload(
    status: int,
    *,
    host: str,
    service: str,
    serviceclass: str,
    utilization: dict[int, float],
    **extra: Any,
) -> dict[str, Any]:
    """One status broadcast: workflows' fields first, then the sender's own ``extra`` ones."""
    return {
        "host": host,
        "status": status,
        "statustext": STATUS_TEXT.get(status, ""),
        "service": service,
        "serviceclass": serviceclass,
        "utilization": utilization,
        "workflows": f"zhpc {__version__}",
        "zhpc": __version__,
        **extra,
    }


def status_message(payload: dict[str, Any]) -> Outgoing:
    """The heartbeat message carrying ``payload`` (a broadcast that expires soon)."""
    from zhpc.message import Outgoing

    return Outgoing.json(STATUS_TOPIC, payload, kind="topic", expiration=STATUS_EXPIRATION)

"""The shutdown broadcast (as Zocalo's ``zocalo.shutdown``): matching services drain and exit 0.

``zhpc shutdown`` publishes one message on the fanout topic ``zhpc.shutdown``;
every :class:`~zhpc.runner.ServiceRunner` listens to it and, when the message
names its service, its host or all services, drains as after SIGTERM: it takes
no new message, finishes (or within ``drain_grace`` hands back) the one in
hand, waits for its confirms, and exits 0. A service that starts after the
broadcast is not affected (a broadcast reaches only current listeners).
"""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.message import Message, Outgoing

SHUTDOWN_TOPIC = "zhpc.shutdown"
#: A shutdown nobody heard within this many seconds is dropped by the broker.
SHUTDOWN_EXPIRATION = 60


def shutdown_message(*, service: str | None = None, host: str | None = None) -> Outgoing:
    """The broadcast; neither ``service`` nor ``host``: every service everywhere."""
    from zhpc.message import Outgoing

    return Outgoing.json(
        SHUTDOWN_TOPIC,
        {
            "command": "shutdown",
            "service": service,
            "host": host,
            "sent": time.time(),
            "sender": f"{socket.gethostname()}:{os.getpid()}",
        },
        kind="topic",
        persistent=False,
        expiration=SHUTDOWN_EXPIRATION,
    )


def applies(body: Any, service: str, hostname: str | None = None) -> bool:
    """Whether a shutdown broadcast ``body`` is meant for ``service`` on this host."""
    if not isinstance(body, dict) or body.get("command") != "shutdown":
        return False
    wanted_service, wanted_host = body.get("service"), body.get("host")
    if wanted_service is not None and wanted_service != service:
        return False
    if wanted_host is not None:
        here = hostname or socket.gethostname()
        return wanted_host in (here, here.split(".", 1)[0])
    return True


def sender_if_for(message: Message, service: str) -> str | None:
    """Who sent a shutdown broadcast meant for ``service`` here; None if the message is not
    one, or is meant for someone else."""
    try:
        body = message.json()
    except ValueError:
        return None
    if not applies(body, service):
        return None
    return str(body.get("sender"))

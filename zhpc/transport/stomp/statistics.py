"""Queue depths over STOMP, from ActiveMQ's statistics plugin (``statisticsBrokerPlugin``).

A request to ``ActiveMQ.Statistics.Destination.<name>`` with a ``reply-to`` is
answered with a MapMessage, as JSON with the ``jms-map-json`` transformation
(xstream and jettison on the broker's class path). The plugin answers nothing for
a queue that does not exist, so a second request, for the reply queue itself
(which exists while subscribed), tells when to stop waiting.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from queue import Empty, Queue
from typing import Any

from zhpc.errors import TransportError
from zhpc.transport.base import QueueDepth
from zhpc.transport.stomp.connection import Connection
from zhpc.transport.stomp.wire import queue_destination, wire_queue_name

_ANSWER = 30.0


class Statistics:
    """One reply queue per connection; one question at a time."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._queue = f"zhpc.stats.{uuid.uuid4().hex[:12]}"
        self._inbox: Queue[Any] = Queue()

    def subscribe(self) -> None:
        """Subscribe the reply queue (again after a reconnection)."""
        self._conn.inboxes["zhpc-stats"] = self._inbox
        self._conn.request(
            "SUBSCRIBE",
            {
                "id": "zhpc-stats",
                "destination": queue_destination(self._queue),
                "ack": "auto",
                "transformation": "jms-map-json",
            },
        ).result(_ANSWER)

    def depth(self, name: str) -> QueueDepth:
        """Ready (size minus in flight), in-flight messages and consumers of a zhpc queue."""
        target, sentinel = wire_queue_name(name), wire_queue_name(self._queue)
        with self._lock:
            _drain(self._inbox)
            for wanted in (target, sentinel):
                self._conn.send_frame(
                    "SEND",
                    {
                        "destination": "/queue/ActiveMQ.Statistics.Destination." + wanted,
                        "reply-to": queue_destination(self._queue),
                    },
                )
            found: dict[str, Any] | None = None
            deadline = time.monotonic() + _ANSWER
            while time.monotonic() < deadline:
                try:
                    _generation, frame = self._inbox.get(timeout=1.0)
                except Empty:
                    continue
                stats = _statistics(frame.body)
                about = str(stats.get("destinationName", "")).removeprefix("queue://")
                if about == target:
                    found = stats
                if about == sentinel:
                    break
            else:
                raise TransportError(f"ActiveMQ did not answer for the depth of {name!r}")
        if found is None:
            return QueueDepth(0, 0, 0)
        size, inflight = int(found.get("size", 0)), int(found.get("inflightCount", 0))
        return QueueDepth(max(size - inflight, 0), inflight, int(found.get("consumerCount", 0)))


def _drain(inbox: Queue[Any]) -> None:
    try:
        while True:
            inbox.get_nowait()
    except Empty:
        return


def _statistics(body: bytes) -> dict[str, Any]:
    """A jms-map-json MapMessage: {"map": {"entry": [{"string": key, <type>: value}, …]}}."""
    try:
        entries = json.loads(body)["map"]["entry"]
    except (ValueError, KeyError, TypeError):
        return {}
    stats: dict[str, Any] = {}
    for entry in entries:
        key = entry.get("string")
        if isinstance(key, list) and len(key) == 2:  # a string value: ["key", "value"]
            stats[str(key[0])] = key[1]
        elif isinstance(key, str):
            values = [v for k, v in entry.items() if k != "string"]
            stats[key] = values[0] if values else None
    return stats

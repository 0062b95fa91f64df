"""Short-lived subscriptions of the transport's own: browsing, taking one message, draining.

STOMP has no ``basic.get`` and cannot delete a queue. A plain subscription with
prefetch 1 is given the next message the moment the first is acked (and returns
it redelivered on UNSUBSCRIBE, which would count as a crash), so one message is
taken by browsing for its id and subscribing with a ``JMSMessageID`` selector; a
queue is "deleted" by draining it with an ``ack:auto`` subscription (ActiveMQ
drops idle empty queues by itself).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from queue import Empty, Queue
from typing import Any

from zhpc.errors import TransportError
from zhpc.transport.base import Callback
from zhpc.transport.stomp.connection import Connection
from zhpc.transport.stomp.handles import Subscription
from zhpc.transport.stomp.wire import queue_destination

log = logging.getLogger(__package__)

#: How long to wait for the broker to answer a request (receipt, browse, statistics).
ANSWER = 30.0


class Browsing:
    """Subscriptions on one connection, each ended by whoever made it."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def new_sub(
        self, source: str, callback: Callback | None, prefetch: int, broadcast: bool
    ) -> Subscription:
        sub = Subscription(self._conn.new_id("zhpc-"), source, callback, prefetch, broadcast)
        self._conn.inboxes[sub.sub_id] = sub.inbox
        return sub

    def end_sub(self, sub_id: str) -> None:
        try:
            self._conn.request("UNSUBSCRIBE", {"id": sub_id}).result(ANSWER)
        except TransportError as exc:
            log.warning("unsubscribing: %s", exc)
        self._conn.inboxes.pop(sub_id, None)

    def first_message_id(self, queue_name: str) -> str | None:
        """The broker id of the first message of a queue (a browse), None if it is empty."""
        sub = self.new_sub(queue_name, None, 1, False)
        self._conn.send_frame(
            "SUBSCRIBE",
            {
                "id": sub.sub_id,
                "destination": queue_destination(queue_name),
                "ack": "auto",
                "browser": "true",
                "activemq.prefetchSize": "1",
            },
        )
        try:
            _generation, frame = sub.inbox.get(timeout=ANSWER)
        except Empty:
            raise TransportError(f"ActiveMQ did not answer a browse of {queue_name!r}") from None
        finally:
            self.end_sub(sub.sub_id)
        if frame.headers.get("browser") == "end":
            return None
        return frame.headers.get("message-id")

    def take(self, queue_name: str, message_id: str) -> tuple[str, int, Any] | None:
        """Exactly that message, unacked, on a subscription of its own (ended once it is
        settled); None if someone else took it first."""
        sub = self.new_sub(queue_name, None, 1, False)
        self._conn.request(
            "SUBSCRIBE",
            {
                "id": sub.sub_id,
                "destination": queue_destination(queue_name),
                "ack": "client-individual",
                "activemq.prefetchSize": "1",
                "selector": f"JMSMessageID = '{message_id}'",
            },
        ).result(ANSWER)
        try:
            generation, frame = sub.inbox.get(timeout=2.0)
        except Empty:
            self.end_sub(sub.sub_id)
            return None
        return sub.sub_id, generation, frame

    def empty(self, name: str, ready: Callable[[str], int]) -> None:
        """Consume everything in a queue (``ready`` tells how many are left)."""
        if ready(name) == 0:
            return
        sub = self.new_sub(name, None, 1000, False)
        self._conn.request(
            "SUBSCRIBE",
            {
                "id": sub.sub_id,
                "destination": queue_destination(name),
                "ack": "auto",
                "activemq.prefetchSize": "1000",
            },
        ).result(ANSWER)
        deadline = time.monotonic() + ANSWER
        while ready(name) and time.monotonic() < deadline:
            drain(sub.inbox, 0.05)
        self.end_sub(sub.sub_id)


def drain(inbox: Queue[Any], timeout: float) -> None:
    """Throw away what is in an inbox, waiting up to ``timeout`` for the first."""
    try:
        while True:
            inbox.get(timeout=timeout)
            timeout = 0
    except Empty:
        return

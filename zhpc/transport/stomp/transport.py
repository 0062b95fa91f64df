"""The caller side of the STOMP transport: what a service calls, on its own thread.

Subscription callbacks run in :meth:`StompTransport.poll`, which drains the
subscriptions' inboxes that the receiver thread fills (see
:mod:`.connection`). Failure accounting follows :mod:`zhpc.transport.accounting`
with zhpc doing what RabbitMQ's delivery limits do: ActiveMQ tells a STOMP
client only whether a message was redelivered, not how often, so

* a redelivered message from a work queue ``Q`` (its consumer died or closed)
  is moved to ``retry.Q`` uncounted before anyone processes it;
* a lane message carries its own count (``zhpc-deliveries``): a return moves a
  copy with the count raised, a redelivered one (a crash) is moved the same way
  when fetched, and past the limit it goes to ``dlq.Q`` with an ``x-death``
  record like RabbitMQ's.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from queue import Empty
from typing import TYPE_CHECKING, Any

from zhpc.errors import TransportError
from zhpc.masking import mask_url
from zhpc.message import MESSAGE_ID_HEADER, Message, Outgoing
from zhpc.transport.accounting import (
    carried_headers,
    is_dead_letter_queue,
    is_retry_lane,
    lane_limit,
    origin_queue,
    retry_name,
    with_handback,
)
from zhpc.transport.base import Callback, QueueDepth, Transport
from zhpc.transport.pending import PendingCommits
from zhpc.transport.stomp.browsing import ANSWER as _ANSWER
from zhpc.transport.stomp.browsing import Browsing, drain
from zhpc.transport.stomp.connection import Connection, ConnectionLostError
from zhpc.transport.stomp.handles import Delivery, Subscription
from zhpc.transport.stomp.sending import Sender, publish_chunks, send_frame
from zhpc.transport.stomp.statistics import Statistics
from zhpc.transport.stomp.wire import (
    DELIVERIES_HEADER,
    LIMIT_HEADER,
    check_name,
    encode_headers,
    frame_message,
    int_header,
    queue_destination,
    topic_destination,
    with_death,
)

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.config import BrokerConfig, TLSConfig

log = logging.getLogger(__package__)


class StompTransport(Transport):
    """A transport to one ActiveMQ broker over STOMP 1.2 (``stomp://`` or ``stomp+ssl://``)."""

    def __init__(
        self,
        url: str,
        *,
        display_url: str | None = None,
        delivery_limit: int = 5,
        heartbeat: int = 60,
        connection_attempts: int = 10,
        retry_delay: float = 1.0,
        tls: TLSConfig | None = None,
        commit_mode: str = "receipts",
    ) -> None:
        super().__init__(delivery_limit=delivery_limit)
        self.display_url = display_url or mask_url(url)
        self._conn = Connection(
            url,
            display_url=self.display_url,
            heartbeat=heartbeat,
            connection_attempts=connection_attempts,
            retry_delay=retry_delay,
            tls=tls,
            on_reconnect=self._resubscribe,
        )
        self._sender = Sender(self._conn, commit_mode)
        self._subs: dict[str, Subscription] = {}
        self._limits: dict[str, int] = {}
        self._held: dict[str, Message] = {}  # unsettled deliveries, by ack id
        self._commits = PendingCommits()
        self._state_lock = threading.Lock()
        self._stats = Statistics(self._conn)
        self._browsing = Browsing(self._conn)

    @classmethod
    def from_config(cls, config: BrokerConfig) -> StompTransport:
        return cls(
            config.connection_url(),
            display_url=config.display_url(),
            delivery_limit=config.delivery_limit,
            heartbeat=config.heartbeat,
            connection_attempts=config.connection_attempts,
            retry_delay=config.retry_delay,
            tls=config.tls,
        )

    # == lifecycle ============================================================
    def connect(self) -> None:
        self._conn.start()
        self._stats.subscribe()

    def close(self) -> None:
        """Unsettled work-queue messages go to their lanes (as RabbitMQ's limit 0 does)."""
        for message in list(self._held.values()):
            if is_retry_lane(message.queue) or is_dead_letter_queue(message.queue):
                continue  # the broker returns it (from a lane: counted, as on RabbitMQ)
            try:
                self._to_lane(message)
            except TransportError as exc:
                log.warning("closing: %s; the broker returns the message", exc)
        self._conn.stop()

    def _resubscribe(self, generation: int) -> None:
        """Recovery thread: subscribe again after a reconnection."""
        with self._state_lock:
            self._held.clear()
        self._stats.subscribe()
        for sub in list(self._subs.values()):
            if sub.active and sub.callback is not None:
                try:
                    self._send_subscribe(sub)
                except TransportError as exc:
                    log.error("could not resubscribe to %r: %s", sub.source, exc)

    # == topology =============================================================
    def declare_queue(self, name: str, *, delivery_limit: int | None = None) -> None:
        """ActiveMQ creates queues on use; zhpc remembers the delivery limit for the lane."""
        check_name(name)
        self._limits[name] = self.delivery_limit if delivery_limit is None else delivery_limit

    def _limit(self, queue_name: str) -> int:
        return self._limits.get(origin_queue(queue_name), self.delivery_limit)

    def delete_queue(self, name: str) -> None:
        """Drain the queue and its lane (STOMP cannot delete; ActiveMQ drops idle empty ones)."""
        for target in (name, retry_name(name)):
            self._browsing.empty(target, lambda n: self.queue_depth(n).ready)

    # == sending ==============================================================
    def publish(self, message: Outgoing) -> None:
        self.publish_many([message])

    def publish_many(self, messages: Sequence[Outgoing]) -> None:
        """One transaction per chunk, its COMMIT receipted; retried after a lost connection.

        The chunks are pipelined: every transaction is written before the first receipt
        is awaited, so the broker's journal syncs overlap instead of adding up.
        """
        frames = [send_frame(m) for m in messages]
        pending = publish_chunks(frames)
        for attempt in range(1, 4):
            sent = [(chunk, self._sender.transaction(chunk, None)) for chunk in pending]
            pending, lost = [], None
            for chunk, commit in sent:
                try:
                    commit.result(_ANSWER)
                except ConnectionLostError as exc:
                    pending.append(chunk)
                    lost = exc
            if lost is None:
                return
            if attempt == 3 or self._conn.closing:
                raise lost
            log.warning("publish interrupted (%s); publishing again", lost)

    # == receiving ============================================================
    def subscribe(self, queue: str, callback: Callback, *, prefetch: int = 1) -> str:
        check_name(queue)
        sub = self._browsing.new_sub(queue, callback, max(prefetch, 1), False)
        self._subs[sub.sub_id] = sub
        self._send_subscribe(sub)
        return sub.sub_id

    def subscribe_broadcast(self, topic: str, callback: Callback) -> str:
        check_name(topic)
        sub = self._browsing.new_sub(topic, callback, 0, True)
        self._subs[sub.sub_id] = sub
        self._send_subscribe(sub)
        return sub.sub_id

    def _send_subscribe(self, sub: Subscription) -> None:
        if sub.broadcast:
            headers = {"destination": topic_destination(sub.source), "ack": "auto"}
        else:
            headers = {
                "destination": queue_destination(sub.source),
                "ack": "client-individual",
                "activemq.prefetchSize": str(sub.prefetch),
            }
        self._conn.request("SUBSCRIBE", {"id": sub.sub_id, **headers}).result(_ANSWER)

    def unsubscribe(self, subscription: str) -> None:
        sub = self._subs.get(subscription)
        if sub is None or not sub.active:
            return
        # ActiveMQ returns a subscription's unacked messages when it ends and refuses a
        # later ACK. So what was received so far is still delivered by poll (a drain
        # hands it back), anything later is left to the broker, and the UNSUBSCRIBE goes
        # out once every delivery of it is settled (see _maybe_end).
        sub.active = False
        sub.deliverable = sub.inbox.qsize()
        self._maybe_end(sub)

    def _maybe_end(self, sub: Subscription) -> None:
        """Send the UNSUBSCRIBE of an unsubscribed subscription once nothing of it is held."""
        if sub.active or sub.ended or sub.deliverable:
            return
        with self._state_lock:
            if any(m.handle.sub_id == sub.sub_id for m in self._held.values()):
                return
            sub.ended = True
        try:
            self._conn.send_frame("UNSUBSCRIBE", {"id": sub.sub_id})
        except TransportError as exc:
            log.warning("unsubscribing from %r: %s", sub.source, exc)
        self._conn.inboxes.pop(sub.sub_id, None)
        drain(sub.inbox, 0)  # the broker gives these out again (redelivered)

    def _settled(self, delivery: Delivery) -> None:
        sub = self._subs.get(delivery.sub_id)
        if sub is not None and not sub.active:
            self._maybe_end(sub)

    def poll(self, timeout: float) -> int:
        if self._conn.fatal is not None:
            raise self._conn.fatal
        deadline = time.monotonic() + timeout
        handled = 0
        while True:
            item = self._next_delivery(deadline if not handled else 0.0)
            if item is None:
                return handled
            sub, generation, frame = item
            if self._deliver(sub, generation, frame):
                handled += 1

    def _next_delivery(self, deadline: float) -> tuple[Subscription, int, Any] | None:
        """The next frame of any subscription (they are few: a service has one or two)."""
        arrived = self._conn.arrived
        while True:
            arrived.clear()  # before looking, so a frame put in meanwhile sets it again
            for sub in list(self._subs.values()):
                if sub.ended or sub.deliverable == 0:
                    continue
                try:
                    generation, frame = sub.inbox.get_nowait()
                except Empty:
                    continue
                if sub.deliverable is not None:
                    sub.deliverable -= 1
                return sub, generation, frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            arrived.wait(remaining)

    def _deliver(self, sub: Subscription, generation: int, frame: Any) -> bool:
        if sub.callback is None:
            return False
        if not sub.broadcast and generation != self._conn.generation:
            log.debug("skipping a delivery from a lost connection; the broker redelivers it")
            return False
        message = self._message(sub.source, generation, frame, sub.broadcast)
        if message is None:
            return False
        sub.callback(message)
        return True

    def _message(
        self, queue_name: str, generation: int, frame: Any, broadcast: bool, fetch_sub: str = ""
    ) -> Message | None:
        """A frame as zhpc's Message; None if it was moved on (see the module docstring)."""
        message = frame_message(queue_name, generation, frame, broadcast, fetch_sub)
        redelivered = frame.headers.get("redelivered") == "true"
        if broadcast:
            return message
        if is_dead_letter_queue(queue_name):
            self._hold(message)
            return message
        if redelivered and not is_retry_lane(queue_name):
            self._to_lane(message)  # returned by a consumer that died or closed: uncounted
            return None
        if redelivered:  # a lane message whose process died: a crash, counted
            self._lane_return(message)
            return None
        self._hold(message)
        return message

    def _hold(self, message: Message) -> None:
        with self._state_lock:
            self._held[message.handle.ack_id] = message

    def fetch(self, queue: str) -> Message | None:
        """Browse for the first message, then take exactly that one (see :mod:`.browsing`)."""
        check_name(queue)
        for _ in range(10):
            message_id = self._browsing.first_message_id(queue)
            if message_id is None:
                return None
            taken = self._browsing.take(queue, message_id)
            if taken is None:
                continue  # someone else took it
            sub_id, generation, frame = taken
            message = self._message(queue, generation, frame, False, fetch_sub=sub_id)
            if message is not None:
                return message
        return None

    # == settling =============================================================
    def ack(self, message: Message) -> None:
        delivery = self._delivery(message)
        self._forget(delivery)
        if delivery.broadcast or delivery.generation != self._conn.generation:
            return
        self._conn.send_frame("ACK", {"id": delivery.ack_id})
        self._end_fetch(delivery)
        self._settled(delivery)

    def nack(self, message: Message, *, requeue: bool = True) -> None:
        delivery = self._delivery(message)
        if delivery.broadcast:
            return
        if not requeue:
            self.dead_letter(message, "rejected")
        elif is_retry_lane(message.queue):
            self._lane_return(message)
        elif is_dead_letter_queue(message.queue):
            self.move(message, message.queue, carried_headers(message))
        else:
            self._to_lane(message)

    def _to_lane(self, message: Message) -> None:
        """Move a message from its work queue to the lane, uncounted, recorded as RabbitMQ does."""
        headers = with_death(carried_headers(message), message.queue, 1)
        self._move(message, retry_name(message.queue), headers, deliveries=0)

    def _lane_return(self, message: Message) -> None:
        """A counted return from a lane: back with the count raised, or past the limit, dead."""
        delivery = self._delivery(message)
        limit = int_header(delivery.frame_headers, LIMIT_HEADER)
        limit = lane_limit(self._limit(message.queue) if limit is None else limit)
        headers = {k: v for k, v in message.headers.items() if k != "x-delivery-count"}
        if limit is None or message.delivery_count > limit:
            headers = with_death(headers, message.queue, message.delivery_count)
            self._move(message, "dlq." + origin_queue(message.queue), headers, deliveries=None)
        else:
            self._move(message, message.queue, headers, deliveries=message.delivery_count)

    def commit(self, outputs: Sequence[Outgoing], ack: Message) -> Future[None]:
        delivery = self._delivery(ack)
        frames = [send_frame(o) for o in outputs]  # raises before anything is sent
        future = self._sender.transaction(frames, delivery)
        if self._sender.mode == "transaction":
            self._release(delivery)  # its ACK is on the wire, before any UNSUBSCRIBE
        else:  # the ACK waits for the receipts
            future.add_done_callback(lambda _f: self._release(delivery))
        if delivery.fetch_sub:
            future.add_done_callback(lambda _f: self._end_fetch(delivery))
        self._commits.track(future)
        return future

    def flush(self, timeout: float | None = None) -> None:
        self._commits.flush(timeout)

    def move(self, message: Message, queue: str, headers: dict[str, Any]) -> None:
        self._move(message, queue, headers, deliveries=0 if is_retry_lane(queue) else None)

    def _move(
        self, message: Message, queue_name: str, headers: dict[str, Any], *, deliveries: int | None
    ) -> None:
        """A copy into ``queue_name`` and the original's ACK, in one transaction (blocks)."""
        delivery = self._delivery(message)
        if delivery.broadcast:
            raise TransportError("broadcast messages cannot be dead-lettered or handed back")
        check_name(queue_name)
        headers = {k: v for k, v in headers.items() if k not in (DELIVERIES_HEADER, LIMIT_HEADER)}
        headers.setdefault(MESSAGE_ID_HEADER, message.message_id or uuid.uuid4().hex)
        wire = encode_headers(headers)
        wire.update(destination=queue_destination(queue_name), persistent="true")
        if deliveries is not None:
            wire[DELIVERIES_HEADER] = str(deliveries)
            wire[LIMIT_HEADER] = str(self._limit(queue_name))
        future = self._sender.transaction([(wire, message.body)], delivery)
        try:
            future.result(_ANSWER)
        finally:  # the ACK went out (or never will): an UNSUBSCRIBE may follow now
            self._release(delivery)
        self._end_fetch(delivery)

    def hand_back(self, message: Message) -> None:
        """A copy with the counts carried over goes back where the message came from."""
        # In a lane the count restarts (crashes are carried in the headers), as on RabbitMQ.
        deliveries = 0 if is_retry_lane(message.queue) else None
        try:
            self._move(message, message.queue, with_handback(message), deliveries=deliveries)
        except ConnectionLostError as exc:
            log.warning("hand-back of a message interrupted (%s); the broker returns it", exc)

    def _release(self, delivery: Delivery) -> None:
        self._forget(delivery)
        self._settled(delivery)

    def _forget(self, delivery: Delivery) -> None:
        with self._state_lock:
            self._held.pop(delivery.ack_id, None)

    def _end_fetch(self, delivery: Delivery) -> None:
        if delivery.fetch_sub and delivery.fetch_sub in self._conn.inboxes:
            try:
                self._conn.send_frame("UNSUBSCRIBE", {"id": delivery.fetch_sub})
            except TransportError as exc:
                log.debug("ending a fetch: %s", exc)
            self._conn.inboxes.pop(delivery.fetch_sub, None)

    @staticmethod
    def _delivery(message: Message) -> Delivery:
        if not isinstance(message.handle, Delivery):
            raise TransportError("this message was not received through the STOMP transport")
        return message.handle

    # == inspection ===========================================================
    def queue_depth(self, name: str) -> QueueDepth:
        return self._stats.depth(name)

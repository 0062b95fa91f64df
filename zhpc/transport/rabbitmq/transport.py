"""The caller side of the RabbitMQ transport: what a service calls, on its own thread.

Nothing here touches pika's connection or channels: every broker operation is
handed to :class:`IOThread` and awaited as a future (see the package docstring
for the whole threading contract). What this side owns, and who may use it:

* ``_subs`` (subscriptions): written by caller threads; read by the polling
  thread, and snapshotted by the I/O thread's ``on_channel`` hook to start a
  recovery thread.
* ``_commits`` (:class:`PendingCommits`, commits not yet settled, with its own lock):
  commits add to it, ``flush`` and ``on_abandon`` (on the I/O thread) read it.
* :class:`Topology` (what was declared), with its own lock.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from zhpc.errors import TransportError
from zhpc.message import Message, Outgoing
from zhpc.transport.accounting import with_handback
from zhpc.transport.base import Callback, QueueDepth, Transport
from zhpc.transport.pending import PendingCommits
from zhpc.transport.rabbitmq.handoff import (
    Batch,
    ConnectionLostError,
    Delivery,
    Pub,
    Subscription,
)
from zhpc.transport.rabbitmq.iothread import IOThread, fail
from zhpc.transport.rabbitmq.topology import Topology
from zhpc.transport.rabbitmq.wire import (
    check_name,
    delivery_count,
    encodable,
    mask,
    message_properties,
    received_message_id,
    republish_properties,
)

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.config import BrokerConfig, TLSConfig

log = logging.getLogger(__package__)

#: publish_many hands messages to the I/O thread in chunks of this many.
_PUBLISH_CHUNK = 500
#: basic.get attempts across lost connections before fetch gives up.
#: How long a basic.get may wait for the broker (while it reconnects, say).
_FETCH_TIMEOUT_S = 60.0
_FETCH_ATTEMPTS = 5
#: How long a subscription retried after a lost channel waits for the next one.
_READY_TIMEOUT_S = 30.0


class RabbitMQTransport(Transport):
    """A transport to one RabbitMQ broker or cluster (``amqp://`` or ``amqps://``).

    ``url`` may list a cluster's nodes: they are tried in order on every (re)connect.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        display_url: str | Sequence[str] | None = None,
        delivery_limit: int = 5,
        heartbeat: int = 60,
        connection_attempts: int = 10,
        retry_delay: float = 1.0,
        tls: TLSConfig | None = None,
        quorum_group_size: int | None = None,
        nack_retry_budget: float = 30.0,
        confirm_timeout: float = 60.0,
    ) -> None:
        super().__init__(delivery_limit=delivery_limit)
        urls = [url] if isinstance(url, str) else list(url)
        shown = display_url or [mask(u) for u in urls]
        shown = [shown] if isinstance(shown, str) else list(shown)
        self.display_url = ", ".join(shown)
        self.confirm_timeout = confirm_timeout
        self._io = IOThread(
            urls,
            display_url=shown,
            heartbeat=heartbeat,
            connection_attempts=connection_attempts,
            retry_delay=retry_delay,
            tls=tls,
            on_channel=self._on_channel,
            on_abandon=self._fail_pending,
            nack_retry_budget=nack_retry_budget,
            blocked_timeout=confirm_timeout,
        )
        self._topology = Topology(self._io, quorum_group_size=quorum_group_size)
        self._subs: dict[str, Subscription] = {}
        self._sub_ids = itertools.count(1)
        self._commits = PendingCommits()
        self._fetch_lock = threading.Lock()  # one basic.get in flight (pika's rule)

    @classmethod
    def from_config(cls, config: BrokerConfig) -> RabbitMQTransport:
        return cls(
            config.connection_urls(),
            display_url=config.display_urls(),
            delivery_limit=config.delivery_limit,
            heartbeat=config.heartbeat,
            connection_attempts=config.connection_attempts,
            retry_delay=config.retry_delay,
            tls=config.tls,
            quorum_group_size=config.quorum_initial_group_size(),
            nack_retry_budget=config.nack_retry_budget,
            confirm_timeout=config.confirm_timeout,
        )

    @property
    def broker_node(self) -> str | None:
        """The node in use, or last tried (password masked): for logs and status."""
        return self._io.node

    # == lifecycle ============================================================
    def connect(self) -> None:
        self._io.start()

    def close(self) -> None:
        self._io.stop()

    def _fail_pending(self, error: TransportError) -> None:
        """Every unsettled commit fails: the I/O thread gave up or was stopped."""
        for future in self._commits.unsettled():
            fail(future, error)

    # == topology =============================================================
    def declare_queue(self, name: str, *, delivery_limit: int | None = None) -> None:
        limit = self.delivery_limit if delivery_limit is None else delivery_limit
        self._topology.ensure_queue(name, limit, force=True)

    def _ensure_queue(self, name: str, *, force: bool = False) -> None:
        self._topology.ensure_queue(name, self.delivery_limit, force=force)

    def queue_depth(self, name: str) -> QueueDepth:
        return self._topology.queue_depth(name)

    def delete_queue(self, name: str) -> None:
        self._topology.delete_queue(name)

    # == sending ==============================================================
    def publish(self, message: Outgoing) -> None:
        self.publish_many([message])

    def publish_many(self, messages: Sequence[Outgoing]) -> None:
        """Publish all, wait for all confirms; retried after a lost connection (may duplicate).

        Chunks go to the I/O thread as soon as they are built, so the wire work
        overlaps with building the rest.
        """
        self._refuse_if_blocked()
        deadline = time.monotonic() + self.confirm_timeout
        chunks: list[tuple[list[Pub], Future[None]]] = []
        for start in range(0, len(messages), _PUBLISH_CHUNK):
            pubs = [self._to_pub(m) for m in messages[start : start + _PUBLISH_CHUNK]]
            chunks.append((pubs, self._send(pubs)))
        for attempt in itertools.count(1):
            failed: list[tuple[list[Pub], Future[None]]] = []
            for pubs, future in chunks:
                try:
                    self._wait_confirmed(future, deadline)
                except ConnectionLostError as exc:
                    if attempt >= 3 or self._io.closing:
                        raise
                    log.warning("publish interrupted (%s); publishing again", exc)
                    failed.append((pubs, future))
            if not failed:
                return
            chunks = [(pubs, self._send(pubs)) for pubs, _future in failed]

    def _refuse_if_blocked(self) -> None:
        if self._io.blocked:
            raise TransportError(
                f"RabbitMQ at {self.display_url} blocks publishing ({self._io.blocked})"
            )

    def _wait_confirmed(self, future: Future[None], deadline: float) -> None:
        """Wait for ``future`` until ``deadline``; fail early once the broker blocks us.

        A publish not confirmed may still arrive (a duplicate later), never a loss.
        """
        while True:
            remaining = deadline - time.monotonic()
            try:
                return self._io.wait(future, max(0.0, min(remaining, 0.2)))
            except ConnectionLostError:
                raise
            except TransportError:
                if future.done():
                    raise
                self._refuse_if_blocked()
                if remaining <= 0.2:
                    raise TransportError(
                        f"RabbitMQ at {self.display_url} did not confirm a publish within "
                        f"{self.confirm_timeout:g} s"
                    ) from None

    def _send(self, pubs: list[Pub]) -> Future[None]:
        future: Future[None] = Future()
        self._io.send(Batch(pubs, future))
        return future

    def _to_pub(self, out: Outgoing) -> Pub:
        """Declare what ``out`` needs and build its wire form (caller thread)."""
        if out.delay is not None and out.expiration is not None:
            raise TransportError("a message cannot have both a delay and an expiration")
        props = message_properties(out)
        if out.kind == "queue":
            self._ensure_queue(out.destination)
            exchange, routing_key, mandatory = "", out.destination, True
        elif out.kind == "topic":
            if out.delay:
                raise TransportError("broadcasts cannot be delayed")
            self._topology.ensure_exchange(out.destination, fanout=True)
            exchange, routing_key, mandatory = out.destination, "", False
        elif out.kind == "exchange":
            self._topology.ensure_exchange(out.destination, fanout=False)
            exchange, routing_key, mandatory = out.destination, out.routing_key, True
        else:
            raise TransportError(f"unknown destination kind {out.kind!r}")
        if out.delay is not None and out.delay > 0:
            delay_ms = round(out.delay * 1000)
            holding = self._topology.ensure_delay_queue(exchange, routing_key, delay_ms)
            exchange, routing_key = "", holding
        check_name("routing key", routing_key)
        return Pub(exchange, routing_key, out.body, props, mandatory)

    # == receiving ============================================================
    def subscribe(self, queue: str, callback: Callback, *, prefetch: int = 1) -> str:
        self._ensure_queue(queue)
        sub = Subscription(f"zhpc-{next(self._sub_ids)}", queue, callback, prefetch, False)
        return self._start_subscription(sub)

    def subscribe_broadcast(self, topic: str, callback: Callback) -> str:
        sub = Subscription(f"zhpc-{next(self._sub_ids)}", topic, callback, 0, True)
        return self._start_subscription(sub)

    def _start_subscription(self, sub: Subscription) -> str:
        self._subs[sub.sub_id] = sub
        for attempt in itertools.count(1):
            try:
                # Again after a lost channel: declared again too, in case the queue is
                # what the broker closed the channel over (deleted meanwhile: 404).
                self._consume(sub, self._io.generation, redeclare=attempt > 1)
                return sub.sub_id
            except ConnectionLostError:
                if attempt >= 3:
                    del self._subs[sub.sub_id]
                    raise
                self._io.wait_ready(_READY_TIMEOUT_S)  # then the generation read is the new one's
            except BaseException:
                del self._subs[sub.sub_id]
                raise
        raise AssertionError("unreachable")

    def _consume(self, sub: Subscription, generation: int, *, redeclare: bool = False) -> None:
        """Declare what ``sub`` needs and start its consumer (caller or recovery thread)."""
        if sub.broadcast:
            self._topology.ensure_exchange(sub.source, fanout=True)
            frame = self._topology.call("queue_declare", queue="", exclusive=True, auto_delete=True)
            consumer_queue = frame.method.queue
            self._topology.call("queue_bind", queue=consumer_queue, exchange=sub.source)
        else:
            self._ensure_queue(sub.source, force=redeclare)
            consumer_queue = sub.source
        self._io.wait(self._io.consume(sub, consumer_queue, generation), 60)

    def _on_channel(self, generation: int) -> None:
        """I/O thread, on every new work channel: re-subscribe from a recovery thread.

        The recovery thread makes the same blocking calls as a caller, which the
        I/O thread cannot make: it would wait for itself.
        """
        subs = [s for s in list(self._subs.values()) if s.active]
        if subs and generation > 1:
            threading.Thread(
                target=self._resubscribe,
                args=(subs, generation),
                name="zhpc-rabbitmq-recover",
                daemon=True,
            ).start()

    def _resubscribe(self, subs: list[Subscription], generation: int) -> None:
        """Recovery thread: re-declare and re-consume after a lost channel or connection."""
        for sub in subs:
            if not sub.active or generation != self._io.generation:
                return
            try:
                self._consume(sub, generation, redeclare=True)  # a deleted queue, say
                log.info("resubscribed to %r", sub.source)
            except Exception as exc:
                log.error("could not resubscribe to %r: %s", sub.source, exc)

    def unsubscribe(self, subscription: str) -> None:
        sub = self._subs.get(subscription)
        if sub is None or not sub.active:
            return
        sub.active = False
        # Wait for the broker's cancel-ok: every delivery sent before it is then in
        # ``deliveries``, so a poll(0) sees all of them (a drain hands them back).
        # A blocked broker (memory/disk alarm) reads nothing more from this connection
        # once it published: don't spend a drain's grace waiting; unsettled deliveries
        # go back to the queue when the connection closes.
        try:
            self._io.wait(self._io.cancel(sub), 1 if self._io.blocked else 10)
        except TransportError as exc:
            log.warning("unsubscribing from %r: %s", sub.source, exc)

    def poll(self, timeout: float) -> int:
        if self._io.fatal is not None:
            raise self._io.fatal
        deadline = time.monotonic() + timeout
        handled = 0
        deliveries = self._io.deliveries
        while True:
            try:
                if handled:
                    item = deliveries.get_nowait()
                else:
                    item = deliveries.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return handled
            if self._deliver(*item):
                handled += 1

    def _deliver(self, sub_id: str, generation: int, method: Any, props: Any, body: bytes) -> bool:
        sub = self._subs.get(sub_id)
        if sub is None:
            return False
        if not sub.broadcast and generation != self._io.generation:
            log.debug("skipping a delivery from a lost channel; the broker redelivers it")
            return False
        sub.callback(_message(sub.source, generation, method, props, body, sub_id, sub.broadcast))
        return True

    def fetch(self, queue: str) -> Message | None:
        """basic.get, again on the next connection if this one was lost meanwhile.

        Safe to repeat: a message got on a lost connection is back in its queue. A
        cluster that just lost the node leading ``queue`` closes the connection of a
        basic.get (541 nodedown) until a new leader is elected.
        """
        for attempt in itertools.count(1):
            self._ensure_queue(queue)
            try:
                with self._fetch_lock:
                    got = self._await_get(self._io.get(queue))
                break
            except ConnectionLostError as exc:
                if attempt >= _FETCH_ATTEMPTS or self._io.closing:
                    raise
                log.warning("fetching from %r interrupted (%s); fetching again", queue, exc)
        if got is None:
            return None
        generation, method, props, body = got
        return _message(queue, generation, method, props, body, "", False)

    def _await_get(self, future: Future[Any]) -> Any:
        """The basic.get's answer; on a timeout (the broker away) it is cancelled, so that a
        message got later is returned to its queue at once instead of held (IOThread._io_get)."""
        try:
            return self._io.wait(future, _FETCH_TIMEOUT_S)
        except ConnectionLostError:
            raise
        except TransportError:
            if future.cancel():
                raise
            return future.result()  # answered just as the wait gave up

    # == settling =============================================================
    def ack(self, message: Message) -> None:
        delivery = self._delivery(message)
        if not delivery.broadcast:
            self._io.settle(delivery, ack=True, requeue=False)

    def nack(self, message: Message, *, requeue: bool = True) -> None:
        delivery = self._delivery(message)
        if delivery.broadcast:
            return
        if requeue:
            self._io.settle(delivery, ack=False, requeue=True)
        else:  # the broker would dead-letter it to the retry lane: straight to the DLQ instead
            self.dead_letter(message, "rejected")

    def commit(self, outputs: Sequence[Outgoing], ack: Message) -> Future[None]:
        delivery = self._delivery(ack)
        future: Future[None] = Future()
        pubs = [self._to_pub(o) for o in outputs]  # raises before anything is sent
        batch = Batch(pubs, future, ack=None if delivery.broadcast else delivery)
        self._commits.track(future)
        self._io.send(batch)
        return future

    def flush(self, timeout: float | None = None) -> None:
        self._commits.flush(timeout)

    def move(self, message: Message, queue: str, headers: dict[str, Any]) -> None:
        self._ensure_queue(queue)
        self._republish(self._delivery(message), message, queue, headers)

    def hand_back(self, message: Message) -> None:
        """A copy with the counts carried over goes back where the message came from."""
        try:
            self.move(message, message.queue, with_handback(message))
        except ConnectionLostError as exc:
            # The broker returns the original by itself (to the lane, uncounted from a
            # work queue; counted as a crash in a lane, which is rare enough).
            log.warning("hand-back of a message interrupted (%s); the broker returns it", exc)

    def _republish(
        self, delivery: Delivery, message: Message, queue_name: str, headers: dict[str, Any]
    ) -> None:
        """Publish a copy of ``message`` to a queue; ack the original once it is confirmed."""
        if delivery.broadcast:
            raise TransportError("broadcast messages cannot be dead-lettered or handed back")
        props = republish_properties(delivery.properties, encodable(headers))
        future: Future[None] = Future()
        pub = Pub("", queue_name, message.body, props, True)
        self._io.send(Batch([pub], future, ack=delivery))
        self._wait_confirmed(future, time.monotonic() + self.confirm_timeout)

    @staticmethod
    def _delivery(message: Message) -> Delivery:
        if not isinstance(message.handle, Delivery):
            raise TransportError("this message was not received through the RabbitMQ transport")
        return message.handle


def _message(
    queue: str, generation: int, method: Any, props: Any, body: bytes, sub_id: str, broadcast: bool
) -> Message:
    """A delivery (pushed or fetched) as zhpc's Message."""
    headers = dict(props.headers or {})
    return Message(
        body=body,
        headers=headers,
        queue=queue,
        delivery_count=delivery_count(headers, bool(method.redelivered)),
        redelivered=bool(method.redelivered),
        message_id=received_message_id(headers, props),
        handle=Delivery(generation, method.delivery_tag, sub_id, broadcast, props),
    )

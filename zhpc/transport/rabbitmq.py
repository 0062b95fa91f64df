"""RabbitMQ transport over pika, with publisher confirms and pipelined commits.

Threads, and who does what:

* **The I/O thread** (one per transport, so one connection per process) owns
  every pika object. It runs pika's asynchronous ``SelectConnection`` ioloop,
  so heartbeats, publisher confirms and deliveries keep flowing while a
  service thread is busy. It (re)connects with tenacity, keeps two channels
  open — a *work* channel (confirm mode: publishes, consumers, acks) and a
  *topology* channel (declares, which the broker answers by closing the
  channel when they fail) — and settles commits as their confirms arrive.
* **Caller threads** (normally the service's main thread) never touch pika.
  They hand work to the I/O thread through a deque plus
  ``ioloop.add_callback_threadsafe`` and wait on ``concurrent.futures``.
  Deliveries come back through a ``queue.Queue`` that :meth:`poll` drains,
  running subscription callbacks on the polling thread.
* **A short-lived recovery thread** after each reconnection re-declares and
  re-subscribes using the same blocking calls as a caller (it must not block
  the I/O thread it is waiting for).

Every work channel incarnation has a *generation*. A delivery remembers its
generation; once that channel is gone the broker has already returned the
message to its queue, so acking it is pointless and a commit for it fails with
a clear error (its outputs may be duplicated, the input is never lost).

Wire compatibility with python-workflows/Zocalo: queue sends go through the
default exchange with ``mandatory=True``; broadcasts go to a fanout exchange
named by the topic (e.g. ``transient.status``) with routing key ``""`` and
without ``mandatory``; messages are persistent and carry their headers as is.
"""

from __future__ import annotations

import collections
import itertools
import logging
import queue
import ssl
import struct
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pika
import pika.exceptions
import pika.spec
import tenacity
from pika.adapters.select_connection import IOLoop

from zhpc.errors import TransportError, UnroutableError
from zhpc.message import MAX_SHORT_STRING, MESSAGE_ID_HEADER, Message, Outgoing
from zhpc.transport.base import (
    DEAD_LETTER_COUNT_HEADER,
    DEAD_LETTER_QUEUE_HEADER,
    DEAD_LETTER_REASON_HEADER,
    HANDBACK_HEADER,
    Callback,
    QueueDepth,
    Transport,
    dlq_name,
)

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.config import BrokerConfig, TLSConfig

log = logging.getLogger(__name__)
# pika logs every failed connection attempt and every expected 404 on the topology
# channel at ERROR/WARNING, several lines each; zhpc reports those itself in one line.
if logging.getLogger("pika").level == logging.NOTSET:
    logging.getLogger("pika").setLevel(logging.CRITICAL)

#: Prefix of the holding queues that implement delays (TTL + dead-letter to the target).
DELAY_QUEUE_PREFIX = "zhpc.delay"
#: How long a holding queue outlives its last declaration beyond twice its TTL.
_DELAY_EXPIRY_MARGIN_MS = 60_000
#: Holding queues are re-declared (resetting ``x-expires``) when older than this.
_DELAY_REDECLARE_S = 30.0
#: Headers the broker sets on delivery; never copied into a republished message.
_BROKER_HEADERS = ("x-delivery-count",)
#: publish_many hands messages to the I/O thread in chunks of this many.
_PUBLISH_CHUNK = 500
_NOT_FOUND = 404
#: What pika raises while marshalling a publish that it cannot encode (nothing written).
_ENCODE_ERRORS = (
    pika.exceptions.UnsupportedAMQPFieldException,
    pika.exceptions.ShortStringTooLong,
    struct.error,
    TypeError,
    ValueError,
    UnicodeError,
)
_PRECONDITION_FAILED = 406


class ConnectionLostError(TransportError):
    """The channel or connection went away before the broker answered."""


class _ConnectFailed(Exception):
    """One connection attempt failed; tenacity retries these."""


@dataclass(slots=True)
class _Delivery:
    """What a :class:`Message` handle holds: enough to settle it on the right channel."""

    generation: int
    tag: int
    subscription: str
    broadcast: bool
    properties: pika.spec.BasicProperties


@dataclass(slots=True)
class _Subscription:
    sub_id: str
    source: str  # queue name, or topic (fanout exchange) for a broadcast
    callback: Callback
    prefetch: int
    broadcast: bool
    active: bool = True
    consumer_queue: str = ""  # the queue consumed in the current generation


@dataclass(slots=True)
class _Pub:
    """One basic.publish, ready for the wire."""

    exchange: str
    routing_key: str
    body: bytes
    properties: pika.spec.BasicProperties
    mandatory: bool


@dataclass(slots=True)
class _Batch:
    """Publishes confirmed together, then (for commits) an ack of their input."""

    pubs: list[_Pub]
    future: Future[None]
    ack: _Delivery | None = None
    remaining: int = 0
    failed: bool = False


@dataclass(slots=True)
class _InFlight:
    """A publish awaiting its confirm (keyed by publish sequence number)."""

    batch: _Batch
    exchange: str
    routing_key: str
    message_id: str | None
    returned: bool = False


@dataclass(slots=True)
class _TopologyOp:
    method: str
    kwargs: dict[str, Any]
    future: Future[Any] = field(default_factory=Future)


class RabbitMQTransport(Transport):
    """A transport to one RabbitMQ broker (``amqp://`` or ``amqps://``)."""

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
    ) -> None:
        super().__init__(delivery_limit=delivery_limit)
        self._url = url
        self.display_url = display_url or _mask(url)
        self._heartbeat = heartbeat
        self._attempts = connection_attempts
        self._retry_delay = retry_delay
        self._tls = tls
        # caller side
        self._deliveries: queue.SimpleQueue[tuple[str, int, Any, Any, bytes]] = queue.SimpleQueue()
        self._subs: dict[str, _Subscription] = {}
        self._sub_ids = itertools.count(1)
        self._pending: set[Future[None]] = set()
        self._failures: list[BaseException] = []
        self._state_lock = threading.Lock()
        self._declared: dict[tuple[str, str], float] = {}
        self._foreign_logged: set[str] = set()
        # shared with the I/O thread
        self._ops: collections.deque[tuple[Callable[[], None], Future[Any] | None]] = (
            collections.deque()
        )
        self._stop = threading.Event()
        self._wake_lock = threading.Lock()
        self._wake_pending = False
        self._ready = threading.Event()
        self._fatal: TransportError | None = None
        self._closing = False
        self._thread: threading.Thread | None = None
        self._ioloop: IOLoop | None = None
        # I/O thread only
        self._conn: pika.SelectConnection | None = None
        self._work: Any = None
        self._topo: Any = None
        self._generation = 0
        self._next_seq = 1
        self._unconfirmed: collections.OrderedDict[int, _InFlight] = collections.OrderedDict()
        self._topo_ops: collections.deque[_TopologyOp] = collections.deque()
        self._topo_current: _TopologyOp | None = None
        self._open_error: BaseException | None = None
        self._was_open = False

    @classmethod
    def from_config(cls, config: BrokerConfig) -> RabbitMQTransport:
        return cls(
            config.connection_url(),
            display_url=config.display_url(),
            delivery_limit=config.delivery_limit,
            heartbeat=config.heartbeat,
            connection_attempts=config.connection_attempts,
            retry_delay=config.retry_delay,
            tls=config.tls,
        )

    # == lifecycle (caller side) ==============================================
    def connect(self) -> None:
        if self._thread is not None:
            return
        self._closing = False
        self._stop.clear()
        self._ioloop = IOLoop()
        self._thread = threading.Thread(target=self._run, name="zhpc-rabbitmq-io", daemon=True)
        self._thread.start()
        while not self._ready.wait(0.05):
            if self._fatal is not None:
                self._thread.join(5)
                self._thread = None
                raise self._fatal

    def close(self) -> None:
        thread = self._thread
        if thread is None:
            return
        self._closing = True
        self._stop.set()
        self._ready.clear()
        assert self._ioloop is not None
        self._ioloop.add_callback_threadsafe(self._io_close)
        thread.join(15)
        if thread.is_alive():
            log.warning("RabbitMQ I/O thread did not stop within 15 s")
        self._thread = None
        self._fail_queued(TransportError("the transport was closed"))

    # == topology =============================================================
    def declare_queue(self, name: str, *, delivery_limit: int | None = None) -> None:
        self._ensure_queue(name, delivery_limit, force=True)

    def _ensure_queue(self, name: str, delivery_limit: int | None = None, *, force=False) -> None:
        """Declare a work queue and its DLQ once per connection (dead-letter queues plainly)."""
        key = ("queue", name)
        if not force and key in self._declared:
            return
        if name.startswith("dlq."):
            self._declare_or_adopt(name, {"x-queue-type": "quorum"})
        else:
            dlq = dlq_name(name)
            self._declare_or_adopt(dlq, {"x-queue-type": "quorum"})
            self._declared[("queue", dlq)] = time.monotonic()
            limit = self.delivery_limit if delivery_limit is None else delivery_limit
            self._declare_or_adopt(
                name,
                {
                    "x-queue-type": "quorum",
                    "x-delivery-limit": limit,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": dlq,
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                },
            )
        self._declared[key] = time.monotonic()

    def _declare_or_adopt(self, name: str, arguments: dict[str, Any]) -> None:
        try:
            self._topology("queue_declare", queue=name, durable=True, arguments=arguments)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != _PRECONDITION_FAILED:
                raise TransportError(f"cannot declare queue {name!r}: {exc.reply_text}") from None
            if name not in self._foreign_logged:
                self._foreign_logged.add(name)
                log.info("queue %r exists with other arguments; using it as it is", name)

    def _ensure_exchange(self, name: str, *, fanout: bool) -> None:
        """A fanout exchange for a topic is declared; a named exchange must already exist."""
        key = ("topic" if fanout else "exchange", name)
        if key in self._declared:
            return
        try:
            if fanout:
                self._topology(
                    "exchange_declare", exchange=name, exchange_type="fanout", durable=True
                )
            else:
                self._topology("exchange_declare", exchange=name, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == _NOT_FOUND:
                raise TransportError(f"exchange {name!r} does not exist") from None
            if exc.reply_code != _PRECONDITION_FAILED:
                raise TransportError(
                    f"cannot declare exchange {name!r}: {exc.reply_text}"
                ) from None
            log.info("exchange %r exists with other arguments; using it as it is", name)
        self._declared[key] = time.monotonic()

    def _ensure_delay_queue(self, exchange: str, routing_key: str, delay_ms: int) -> str:
        """A holding queue whose messages dead-letter to the target after ``delay_ms``."""
        name = f"{DELAY_QUEUE_PREFIX}.{delay_ms}.{exchange or '-'}.{routing_key}"
        key = ("delay", name)
        declared = self._declared.get(key)
        if declared is not None and time.monotonic() - declared < _DELAY_REDECLARE_S:
            return name
        args = {
            "x-queue-type": "quorum",
            "x-message-ttl": delay_ms,
            "x-expires": 2 * delay_ms + _DELAY_EXPIRY_MARGIN_MS,
            "x-dead-letter-exchange": exchange,
            "x-dead-letter-routing-key": routing_key,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
        self._topology("queue_declare", queue=name, durable=True, arguments=args)
        self._declared[key] = time.monotonic()
        return name

    def queue_depth(self, name: str) -> QueueDepth:
        try:
            frame = self._topology("queue_declare", queue=name, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == _NOT_FOUND:
                return QueueDepth(ready=0, unacked=None, consumers=0)
            raise TransportError(f"cannot inspect queue {name!r}: {exc.reply_text}") from None
        return QueueDepth(
            ready=frame.method.message_count, unacked=None, consumers=frame.method.consumer_count
        )

    def delete_queue(self, name: str) -> None:
        """Delete a queue (tests and tidy-up); missing queues are fine."""
        self._topology("queue_delete", queue=name)
        self._declared.pop(("queue", name), None)

    # == sending ==============================================================
    def publish(self, message: Outgoing) -> None:
        self.publish_many([message])

    def publish_many(self, messages: Sequence[Outgoing]) -> None:
        """Publish all, wait for all confirms; retried after a lost connection (may duplicate).

        Chunks go to the I/O thread as soon as they are built, so the wire work
        overlaps with building the rest.
        """
        chunks: list[tuple[list[_Pub], Future[None]]] = []
        for start in range(0, len(messages), _PUBLISH_CHUNK):
            pubs = [self._to_pub(m) for m in messages[start : start + _PUBLISH_CHUNK]]
            chunks.append((pubs, self._send(pubs)))
        for attempt in itertools.count(1):
            failed: list[tuple[list[_Pub], Future[None]]] = []
            for pubs, future in chunks:
                try:
                    self._wait(future)
                except ConnectionLostError as exc:
                    if attempt >= 3 or self._closing:
                        raise
                    log.warning("publish interrupted (%s); publishing again", exc)
                    failed.append((pubs, future))
            if not failed:
                return
            chunks = [(pubs, self._send(pubs)) for pubs, _future in failed]

    def _send(self, pubs: list[_Pub]) -> Future[None]:
        future: Future[None] = Future()
        batch = _Batch(pubs, future)
        self._submit(lambda: self._io_send_batch(batch), future)
        return future

    def _to_pub(self, out: Outgoing) -> _Pub:
        """Declare what ``out`` needs and build its wire form (caller thread)."""
        headers = dict(out.headers)
        headers.setdefault(MESSAGE_ID_HEADER, out.message_id)
        props = pika.BasicProperties(
            headers=headers,
            delivery_mode=2 if out.persistent else 1,
            message_id=out.message_id,
        )
        if out.delay is not None and out.expiration is not None:
            raise TransportError("a message cannot have both a delay and an expiration")
        if out.expiration is not None:
            props.expiration = str(max(0, round(out.expiration * 1000)))
        if out.kind == "queue":
            self._ensure_queue(out.destination)
            exchange, routing_key, mandatory = "", out.destination, True
        elif out.kind == "topic":
            if out.delay:
                raise TransportError("broadcasts cannot be delayed")
            self._ensure_exchange(out.destination, fanout=True)
            exchange, routing_key, mandatory = out.destination, "", False
        elif out.kind == "exchange":
            self._ensure_exchange(out.destination, fanout=False)
            exchange, routing_key, mandatory = out.destination, out.routing_key, True
        else:
            raise TransportError(f"unknown destination kind {out.kind!r}")
        if out.delay is not None and out.delay > 0:
            holding = self._ensure_delay_queue(exchange, routing_key, round(out.delay * 1000))
            exchange, routing_key = "", holding
        _check_name("routing key", routing_key)
        return _Pub(exchange, routing_key, out.body, props, mandatory)

    # == receiving ============================================================
    def subscribe(self, queue: str, callback: Callback, *, prefetch: int = 1) -> str:
        self._ensure_queue(queue)
        sub = _Subscription(f"zhpc-{next(self._sub_ids)}", queue, callback, prefetch, False)
        return self._start_subscription(sub)

    def subscribe_broadcast(self, topic: str, callback: Callback) -> str:
        sub = _Subscription(f"zhpc-{next(self._sub_ids)}", topic, callback, 0, True)
        return self._start_subscription(sub)

    def _start_subscription(self, sub: _Subscription) -> str:
        self._subs[sub.sub_id] = sub
        for attempt in itertools.count(1):
            try:
                self._consume(sub, self._generation_now())
                return sub.sub_id
            except ConnectionLostError:
                if attempt >= 3:
                    del self._subs[sub.sub_id]
                    raise
            except BaseException:
                del self._subs[sub.sub_id]
                raise
        raise AssertionError("unreachable")

    def _consume(self, sub: _Subscription, generation: int) -> None:
        """Declare what ``sub`` needs and start its consumer (caller or recovery thread)."""
        if sub.broadcast:
            self._ensure_exchange(sub.source, fanout=True)
            frame = self._topology("queue_declare", queue="", exclusive=True, auto_delete=True)
            consumer_queue = frame.method.queue
            self._topology("queue_bind", queue=consumer_queue, exchange=sub.source)
        else:
            self._ensure_queue(sub.source)
            consumer_queue = sub.source
        future: Future[None] = Future()
        self._submit(lambda: self._io_consume(sub, consumer_queue, generation, future), future)
        self._wait(future, 60)

    def unsubscribe(self, subscription: str) -> None:
        sub = self._subs.get(subscription)
        if sub is None or not sub.active:
            return
        sub.active = False
        # Wait for the broker's cancel-ok: every delivery sent before it is then in
        # ``_deliveries``, so a poll(0) sees all of them (a drain hands them back).
        future: Future[None] = Future()
        self._submit(lambda: self._io_cancel(sub, future), future)
        try:
            self._wait(future, 10)
        except TransportError as exc:
            log.warning("unsubscribing from %r: %s", sub.source, exc)

    def poll(self, timeout: float) -> int:
        if self._fatal is not None:
            raise self._fatal
        deadline = time.monotonic() + timeout
        handled = 0
        while True:
            try:
                if handled:
                    item = self._deliveries.get_nowait()
                else:
                    item = self._deliveries.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return handled
            if self._deliver(*item):
                handled += 1

    def _deliver(self, sub_id: str, generation: int, method: Any, props: Any, body: bytes) -> bool:
        sub = self._subs.get(sub_id)
        if sub is None:
            return False
        if not sub.broadcast and generation != self._generation_now():
            log.debug("skipping a delivery from a lost channel; the broker redelivers it")
            return False
        headers = dict(props.headers or {})
        count_header = headers.get("x-delivery-count")
        if isinstance(count_header, int):
            delivery_count = count_header + 1
        else:
            delivery_count = 2 if method.redelivered else 1
        message_id = headers.get(MESSAGE_ID_HEADER) or props.message_id
        if isinstance(message_id, bytes):
            message_id = message_id.decode("utf-8", "replace")
        message = Message(
            body=body,
            headers=headers,
            queue=sub.source,
            delivery_count=delivery_count,
            redelivered=bool(method.redelivered),
            message_id=str(message_id) if message_id is not None else None,
            handle=_Delivery(generation, method.delivery_tag, sub_id, sub.broadcast, props),
        )
        sub.callback(message)
        return True

    # == settling =============================================================
    def ack(self, message: Message) -> None:
        delivery = self._delivery(message)
        if not delivery.broadcast:
            self._submit(lambda: self._io_settle(delivery, ack=True, requeue=False))

    def nack(self, message: Message, *, requeue: bool = True) -> None:
        delivery = self._delivery(message)
        if not delivery.broadcast:
            self._submit(lambda: self._io_settle(delivery, ack=False, requeue=requeue))

    def commit(self, outputs: Sequence[Outgoing], ack: Message) -> Future[None]:
        delivery = self._delivery(ack)
        future: Future[None] = Future()
        try:
            pubs = [self._to_pub(o) for o in outputs]
        except TransportError as exc:
            self.nack(ack, requeue=True)
            future.set_exception(exc)
            self._track(future)
            return future
        batch = _Batch(pubs, future, ack=None if delivery.broadcast else delivery)
        self._track(future)
        self._submit(lambda: self._io_send_batch(batch), future)
        return future

    def _track(self, future: Future[None]) -> None:
        with self._state_lock:
            self._pending.add(future)
        future.add_done_callback(self._untrack)

    def _untrack(self, future: Future[None]) -> None:
        with self._state_lock:
            self._pending.discard(future)
            if future.exception() is not None:
                self._failures.append(future.exception())  # type: ignore[arg-type]

    def flush(self, timeout: float | None = None) -> None:
        with self._state_lock:
            pending = list(self._pending)
        _done, not_done = wait_futures(pending, timeout=timeout)
        with self._state_lock:
            failures, self._failures = self._failures, []
        if not_done:
            raise TransportError(f"{len(not_done)} commit(s) still unconfirmed after {timeout} s")
        if failures:
            extra = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise TransportError(f"a commit failed: {failures[0]}{extra}")

    def dead_letter(self, message: Message, reason: str) -> None:
        delivery = self._delivery(message)
        dlq = dlq_name(message.queue)
        self._ensure_queue(dlq)
        headers = self._copy_headers(delivery)
        headers[DEAD_LETTER_REASON_HEADER] = reason
        headers[DEAD_LETTER_QUEUE_HEADER] = message.queue
        headers[DEAD_LETTER_COUNT_HEADER] = message.delivery_count
        self._republish(delivery, message, "", dlq, headers)

    def hand_back(self, message: Message) -> None:
        delivery = self._delivery(message)
        headers = self._copy_headers(delivery)
        headers[HANDBACK_HEADER] = int(headers.get(HANDBACK_HEADER, 0) or 0) + 1
        try:
            self._republish(delivery, message, "", message.queue, headers)
        except ConnectionLostError as exc:
            # The broker returns the original by itself; it just counts as a delivery.
            log.warning("hand-back of a message interrupted (%s); the broker returns it", exc)

    @staticmethod
    def _copy_headers(delivery: _Delivery) -> dict[str, Any]:
        headers = dict(delivery.properties.headers or {})
        for name in _BROKER_HEADERS:
            headers.pop(name, None)
        return {key: _encodable(value) for key, value in headers.items()}

    def _republish(
        self, delivery: _Delivery, message: Message, exchange: str, key: str, headers: dict
    ) -> None:
        """Publish a copy of ``message`` and ack the original once the copy is confirmed."""
        if delivery.broadcast:
            raise TransportError("broadcast messages cannot be dead-lettered or handed back")
        old = delivery.properties
        props = pika.BasicProperties(
            content_type=old.content_type,
            content_encoding=old.content_encoding,
            headers=headers,
            delivery_mode=old.delivery_mode or 2,
            priority=old.priority,
            correlation_id=old.correlation_id,
            reply_to=old.reply_to,
            message_id=old.message_id,
            timestamp=old.timestamp,
            type=old.type,
        )
        future: Future[None] = Future()
        batch = _Batch([_Pub(exchange, key, message.body, props, True)], future, ack=delivery)
        self._submit(lambda: self._io_send_batch(batch), future)
        self._wait(future)

    @staticmethod
    def _delivery(message: Message) -> _Delivery:
        if not isinstance(message.handle, _Delivery):
            raise TransportError("this message was not received through the RabbitMQ transport")
        return message.handle

    # == hand-off to the I/O thread ===========================================
    def _generation_now(self) -> int:
        return self._generation

    def _submit(self, op: Callable[[], None], future: Future[Any] | None = None) -> None:
        """Queue ``op`` for the I/O thread; it runs once the work channel is ready.

        ``future`` is failed instead if the transport gives up or closes first.
        """
        if self._fatal is not None:
            raise self._fatal
        if self._thread is None or self._closing:
            raise TransportError("the transport is not connected")
        self._ops.append((op, future))
        with self._wake_lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        assert self._ioloop is not None
        self._ioloop.add_callback_threadsafe(self._io_drain)

    def _topology(self, method: str, **kwargs: Any) -> Any:
        """Run one declare-like RPC on the topology channel and wait for its answer."""
        for kind in ("queue", "exchange"):
            if isinstance(kwargs.get(kind), str):
                _check_name(kind, kwargs[kind])
        for attempt in itertools.count(1):
            op = _TopologyOp(method, kwargs)
            self._submit(lambda op=op: self._io_topology(op), op.future)
            try:
                return self._wait(op.future, 60)
            except ConnectionLostError:
                if attempt >= 3:
                    raise

    def _wait(self, future: Future[Any], timeout: float | None = None) -> Any:
        """Wait for the I/O thread's answer (never on the I/O thread itself)."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("blocking transport calls cannot run on the I/O thread")
        try:
            return future.result(timeout)
        except FutureTimeout:
            raise TransportError(f"the broker did not answer within {timeout} s") from None

    def _fail_queued(self, error: TransportError) -> None:
        """Fail everything still waiting for the I/O thread (it has stopped or given up)."""
        while self._ops:
            _op, future = self._ops.popleft()
            if future is not None:
                _fail(future, error)
        while self._topo_ops:
            _fail(self._topo_ops.popleft().future, error)
        if self._topo_current is not None:
            _fail(self._topo_current.future, error)
            self._topo_current = None
        with self._state_lock:
            pending = list(self._pending)
        for future in pending:
            _fail(future, error)

    # == I/O thread: connection ===============================================
    def _parameters(self) -> pika.URLParameters:
        params = pika.URLParameters(self._url)
        params.heartbeat = self._heartbeat
        params.connection_attempts = 1
        params.client_properties = {"connection_name": "zhpc"}
        if urlsplit(self._url).scheme == "amqps":
            params.ssl_options = pika.SSLOptions(self._ssl_context(), params.host)
        return params

    def _ssl_context(self) -> ssl.SSLContext:
        tls = self._tls
        context = ssl.create_default_context(
            cafile=str(tls.ca_file) if tls and tls.ca_file else None
        )
        if tls is not None:
            if tls.cert_file is not None:
                key = str(tls.key_file) if tls.key_file else None
                context.load_cert_chain(str(tls.cert_file), key)
            if not tls.verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        return context

    def _run(self) -> None:
        """The I/O thread: connect (retrying), run the ioloop, reconnect after a loss."""
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self._attempts) | self._stop_when_closing,
            wait=tenacity.wait_exponential(multiplier=self._retry_delay, max=30),
            retry=tenacity.retry_if_exception_type(_ConnectFailed),
            before_sleep=self._log_retry,
            sleep=self._stop.wait,
            reraise=True,
        )
        while not self._closing:
            try:
                retrying(self._run_connection)
            except _ConnectFailed as exc:
                if self._closing:
                    return
                self._give_up(
                    f"cannot connect to RabbitMQ at {self.display_url} after "
                    f"{self._attempts} attempt(s): {exc}"
                )
                return
            except pika.exceptions.ProbableAuthenticationError:
                self._give_up(f"RabbitMQ at {self.display_url} refused the user name or password")
                return
            except pika.exceptions.ProbableAccessDeniedError:
                self._give_up(f"RabbitMQ at {self.display_url} denied access to the virtual host")
                return
            except Exception as exc:  # never let the I/O thread die silently
                log.exception("RabbitMQ I/O thread failed")
                self._give_up(f"RabbitMQ I/O thread failed: {exc}")
                return

    def _stop_when_closing(self, _state: tenacity.RetryCallState) -> bool:
        return self._closing

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "connecting to RabbitMQ at %s failed (attempt %d of %d): %s; retrying in %.1f s",
            self.display_url,
            state.attempt_number,
            self._attempts,
            exc,
            wait,
        )

    def _give_up(self, text: str) -> None:
        log.error("%s", text)
        self._fatal = TransportError(text)
        self._fail_queued(self._fatal)

    def _run_connection(self) -> None:
        """One connection's life; raises _ConnectFailed if it never opened."""
        if self._closing:
            return
        assert self._ioloop is not None
        self._open_error = None
        self._was_open = False
        self._conn = pika.SelectConnection(
            self._parameters(),
            on_open_callback=self._on_connection_open,
            on_open_error_callback=self._on_connection_open_error,
            on_close_callback=self._on_connection_closed,
            custom_ioloop=self._ioloop,
        )
        self._ioloop.start()
        self._conn = None
        if self._open_error is not None:
            error = self._open_error
            if isinstance(
                error,
                pika.exceptions.ProbableAuthenticationError
                | pika.exceptions.ProbableAccessDeniedError,
            ):
                raise error
            raise _ConnectFailed(_describe(error))

    def _on_connection_open(self, connection: pika.SelectConnection) -> None:
        log.info("connected to RabbitMQ at %s", self.display_url)
        self._was_open = True
        self._declared.clear()
        connection.channel(on_open_callback=self._on_topo_open)
        connection.channel(on_open_callback=self._on_work_open)

    def _on_connection_open_error(self, _conn: Any, error: BaseException) -> None:
        self._open_error = error
        assert self._ioloop is not None
        self._ioloop.stop()

    def _on_connection_closed(self, _conn: Any, reason: BaseException) -> None:
        self._lose_channel(ConnectionLostError(f"connection to RabbitMQ lost: {_describe(reason)}"))
        self._work = None
        self._topo = None
        if self._topo_current is not None:
            _fail(self._topo_current.future, ConnectionLostError("connection to RabbitMQ lost"))
            self._topo_current = None
        if not self._closing:
            log.warning(
                "connection to RabbitMQ at %s lost (%s); reconnecting",
                self.display_url,
                _describe(reason),
            )
        assert self._ioloop is not None
        self._ioloop.stop()

    def _io_close(self) -> None:
        self._io_drain()
        if self._conn is not None and self._conn.is_open:
            self._conn.close()  # _on_connection_closed stops the ioloop
        elif self._conn is None or not self._conn.is_closing:
            assert self._ioloop is not None
            self._ioloop.stop()

    # == I/O thread: channels =================================================
    def _on_work_open(self, channel: Any) -> None:
        self._work = channel
        channel.add_on_close_callback(self._on_work_closed)
        channel.add_on_return_callback(self._on_returned)
        channel.confirm_delivery(self._on_confirm, callback=self._on_confirm_ok)

    def _on_confirm_ok(self, _frame: Any) -> None:
        self._generation += 1
        self._next_seq = 1
        generation = self._generation
        self._ready.set()
        self._io_drain()
        subs = [s for s in self._subs.values() if s.active]
        if subs and generation > 1:
            threading.Thread(
                target=self._resubscribe,
                args=(subs, generation),
                name="zhpc-rabbitmq-recover",
                daemon=True,
            ).start()

    def _resubscribe(self, subs: list[_Subscription], generation: int) -> None:
        """Recovery thread: re-declare and re-consume after a lost channel or connection."""
        for sub in subs:
            if not sub.active or generation != self._generation:
                return
            try:
                self._consume(sub, generation)
                log.info("resubscribed to %r", sub.source)
            except Exception as exc:
                log.error("could not resubscribe to %r: %s", sub.source, exc)

    def _on_work_closed(self, channel: Any, reason: BaseException) -> None:
        if self._work is not channel:
            return
        self._work = None
        self._ready.clear()
        if isinstance(reason, pika.exceptions.ChannelClosedByBroker):
            if reason.reply_code == _PRECONDITION_FAILED and "acknowledgement" in reason.reply_text:
                log.error(
                    "RabbitMQ closed the channel because a message was held unacknowledged "
                    "longer than its consumer_timeout (%s); unacked messages are redelivered, "
                    "commits in flight fail",
                    reason.reply_text,
                )
            else:
                log.error("RabbitMQ closed the work channel: %s", _describe(reason))
        self._lose_channel(ConnectionLostError(f"channel to RabbitMQ lost: {_describe(reason)}"))
        conn = self._conn
        if conn is not None and conn.is_open and not self._closing:
            assert self._ioloop is not None
            self._ioloop.call_later(
                min(self._retry_delay, 1.0),
                lambda: conn.is_open and conn.channel(on_open_callback=self._on_work_open),
            )

    def _lose_channel(self, error: ConnectionLostError) -> None:
        """Fail everything awaiting a confirm; deliveries of this generation go stale."""
        self._ready.clear()
        self._generation += 1
        unconfirmed, self._unconfirmed = self._unconfirmed, collections.OrderedDict()
        for inflight in unconfirmed.values():
            self._fail_batch(inflight.batch, error, settle_input=False)

    def _on_topo_open(self, channel: Any) -> None:
        self._topo = channel
        channel.add_on_close_callback(self._on_topo_closed)
        self._io_next_topology()

    def _on_topo_closed(self, channel: Any, reason: BaseException) -> None:
        if self._topo is not channel:
            return
        self._topo = None
        current, self._topo_current = self._topo_current, None
        if current is not None:
            _fail(current.future, reason)
        conn = self._conn
        if conn is not None and conn.is_open and not self._closing:
            conn.channel(on_open_callback=self._on_topo_open)

    def _io_topology(self, op: _TopologyOp) -> None:
        self._topo_ops.append(op)
        self._io_next_topology()

    def _io_next_topology(self) -> None:
        if self._topo_current is not None or self._topo is None or not self._topo.is_open:
            return
        if not self._topo_ops:
            return
        op = self._topo_ops.popleft()
        self._topo_current = op

        def done(frame: Any) -> None:
            if self._topo_current is op:
                self._topo_current = None
                op.future.set_result(frame)
                self._io_next_topology()

        try:
            getattr(self._topo, op.method)(callback=done, **op.kwargs)
        except Exception as exc:  # nothing was sent: the next declare must not wait for it
            self._topo_current = None
            _fail(op.future, TransportError(f"cannot {op.method}: {_describe(exc)}"))
            self._io_next_topology()

    # == I/O thread: work =====================================================
    def _io_drain(self) -> None:
        """Run queued operations while the work channel is usable."""
        with self._wake_lock:
            self._wake_pending = False
        while self._ops and self._work is not None and self._ready.is_set():
            op, future = self._ops.popleft()
            try:
                op()
            except Exception as exc:
                log.exception("RabbitMQ operation failed on the I/O thread")
                if future is not None:  # never leave a caller waiting on a dead operation
                    _fail(future, TransportError(f"RabbitMQ operation failed: {_describe(exc)}"))

    def _io_send_batch(self, batch: _Batch) -> None:
        if batch.ack is not None and batch.ack.generation != self._generation:
            _fail(
                batch.future,
                ConnectionLostError(
                    "the input's channel was lost before its commit; the broker redelivers it"
                ),
            )
            return
        batch.remaining = len(batch.pubs)
        channel = self._work
        for pub in batch.pubs:
            try:
                channel.basic_publish(
                    pub.exchange, pub.routing_key, pub.body, pub.properties, pub.mandatory
                )
            except Exception as exc:
                self._publish_failed(batch, exc)
                return
            # Numbered only once written: the broker numbers what it received, so a
            # publish that raised must not take a sequence number (confirms would
            # then be credited to the wrong publishes, and an input acked early).
            seq = self._next_seq
            self._next_seq += 1
            headers = pub.properties.headers or {}
            self._unconfirmed[seq] = _InFlight(
                batch, pub.exchange, pub.routing_key, headers.get(MESSAGE_ID_HEADER)
            )
        if not batch.pubs:
            self._finish_batch(batch)

    def _publish_failed(self, batch: _Batch, exc: Exception) -> None:
        """A publish raised before it was written: fail its batch, return its input.

        pika marshals every frame of a publish before writing any of them
        (``Connection._send_message``), so an encoding error wrote nothing and the
        channel's confirm numbering is intact. Any other error leaves the channel
        in an unknown state, so it is closed: everything it held is redelivered.
        """
        encoding = isinstance(exc, _ENCODE_ERRORS)
        log.error("a publish could not be %s: %s", "encoded" if encoding else "written",
                  _describe(exc))
        self._fail_batch(
            batch,
            TransportError(f"a message could not be published: {_describe(exc)}"),
            settle_input=True,
        )
        if not encoding and self._work is not None and self._work.is_open:
            self._work.close()

    def _on_returned(self, _channel: Any, method: Any, props: Any, _body: bytes) -> None:
        """An unroutable mandatory publish: mark it; its confirm then fails its batch."""
        message_id = (props.headers or {}).get(MESSAGE_ID_HEADER)
        for inflight in self._unconfirmed.values():
            if (
                not inflight.returned
                and inflight.exchange == method.exchange
                and inflight.routing_key == method.routing_key
                and inflight.message_id == message_id
            ):
                inflight.returned = True
                self._fail_batch(
                    inflight.batch,
                    UnroutableError(
                        f"no queue for {method.exchange or 'the default exchange'!r} "
                        f"routing key {method.routing_key!r}: {method.reply_text}"
                    ),
                    settle_input=True,
                )
                return
        log.error("a returned message matched no publish in flight (%s)", method.routing_key)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        positive = isinstance(method, pika.spec.Basic.Ack)
        tag = method.delivery_tag
        if method.multiple:
            settled = []
            while self._unconfirmed:
                seq = next(iter(self._unconfirmed))
                if seq > tag:
                    break
                settled.append(self._unconfirmed.popitem(last=False)[1])
        else:
            one = self._unconfirmed.pop(tag, None)
            settled = [one] if one is not None else []
        for inflight in settled:
            batch = inflight.batch
            if batch.failed:
                continue
            if not positive:
                self._fail_batch(
                    batch,
                    TransportError("the broker refused a published message (nack)"),
                    settle_input=True,
                )
                continue
            batch.remaining -= 1
            if batch.remaining == 0:
                self._finish_batch(batch)

    def _finish_batch(self, batch: _Batch) -> None:
        if batch.ack is not None:
            if batch.ack.generation != self._generation or self._work is None:
                self._fail_batch(
                    batch,
                    ConnectionLostError(
                        "the input's channel was lost before its ack; the broker redelivers it"
                    ),
                    settle_input=False,
                )
                return
            self._work.basic_ack(batch.ack.tag)
        if batch.future.set_running_or_notify_cancel():
            batch.future.set_result(None)

    def _fail_batch(self, batch: _Batch, error: BaseException, *, settle_input: bool) -> None:
        """Fail a batch once; a commit's input goes back to its queue."""
        if batch.failed:
            return
        batch.failed = True
        if (
            settle_input
            and batch.ack is not None
            and batch.ack.generation == self._generation
            and self._work is not None
        ):
            self._work.basic_nack(batch.ack.tag, requeue=True)
        _fail(batch.future, error)

    def _io_settle(self, delivery: _Delivery, *, ack: bool, requeue: bool) -> None:
        if delivery.generation != self._generation:
            log.warning(
                "cannot %s a message from a lost channel; the broker delivers it again",
                "ack" if ack else "nack",
            )
            return
        if ack:
            self._work.basic_ack(delivery.tag)
        else:
            self._work.basic_nack(delivery.tag, requeue=requeue)

    def _io_consume(
        self, sub: _Subscription, consumer_queue: str, generation: int, future: Future[None]
    ) -> None:
        if generation != self._generation or not sub.active:
            _fail(future, ConnectionLostError("channel lost while subscribing"))
            return
        sub.consumer_queue = consumer_queue
        channel = self._work

        def on_message(_ch: Any, method: Any, props: Any, body: bytes) -> None:
            self._deliveries.put((sub.sub_id, generation, method, props, body))

        if sub.sub_id in channel.consumer_tags:  # the recovery thread got there first
            future.set_result(None)
            return
        if not sub.broadcast:
            channel.basic_qos(prefetch_count=sub.prefetch)
        channel.basic_consume(
            consumer_queue,
            on_message,
            auto_ack=sub.broadcast,
            consumer_tag=sub.sub_id,
            callback=lambda _frame: future.set_result(None),
        )

    def _io_cancel(self, sub: _Subscription, future: Future[None]) -> None:
        if self._work is not None and sub.sub_id in self._work.consumer_tags:
            self._work.basic_cancel(sub.sub_id, callback=lambda _frame: _done(future))
        else:
            _done(future)


def _check_name(kind: str, name: str) -> None:
    """Refuse a name the wire cannot carry before anything is sent or declared."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise TransportError(f"{kind} {name[:60]!r} is not valid UTF-8") from None
    if size > MAX_SHORT_STRING:
        raise TransportError(
            f"{kind} {name[:60]!r}... is {size} bytes long; RabbitMQ allows {MAX_SHORT_STRING}"
        )


def _encodable(value: Any) -> Any:
    """A received header value as pika can send it again: floats (which other clients
    send and pika decodes, but cannot encode) become their decimal text."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return {key: _encodable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_encodable(item) for item in value]
    return value


def _done(future: Future[None]) -> None:
    if not future.done() and future.set_running_or_notify_cancel():
        future.set_result(None)


def _fail(future: Future[Any], error: BaseException) -> None:
    if future.done():
        return
    if future.set_running_or_notify_cancel():
        future.set_exception(error)


def _describe(error: BaseException) -> str:
    """One line for a pika error, unwrapping pika's nested connection-workflow errors."""
    seen = 0
    while seen < 5:
        seen += 1
        inner = getattr(error, "exceptions", None)
        if isinstance(inner, list | tuple) and inner and isinstance(inner[-1], BaseException):
            error = inner[-1]
        elif isinstance(getattr(error, "exception", None), BaseException):
            error = error.exception  # type: ignore[attr-defined]
        elif error.args and isinstance(error.args[0], BaseException):
            error = error.args[0]
        else:
            break
    if isinstance(error, pika.exceptions.ConnectionClosed | pika.exceptions.ChannelClosed):
        return f"({error.reply_code}) {error.reply_text}"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _mask(url: str) -> str:
    from zhpc.config import mask_url

    return mask_url(url)

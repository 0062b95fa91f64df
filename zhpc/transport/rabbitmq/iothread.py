"""The I/O side of the RabbitMQ transport: one thread, and every pika object it uses.

:class:`IOThread` runs pika's asynchronous ``SelectConnection`` ioloop, so
heartbeats, publisher confirms and deliveries keep flowing while a service
thread is busy. It (re)connects with tenacity, keeps two channels open — a
*work* channel (confirm mode: publishes, consumers, acks) and a *topology*
channel (declares, which the broker answers by closing the channel when they
fail) — and settles batches as their confirms arrive.

The boundary with the caller side (:mod:`zhpc.transport.rabbitmq.transport`):

* Only the I/O thread touches the connection, the channels, the confirm
  numbering and the map of unconfirmed publishes, and the queue of topology
  calls. Methods named ``_io_*`` and ``_on_*`` run there and nowhere else.
* Other threads call the public methods, which never block the I/O thread:
  :meth:`send`, :meth:`settle`, :meth:`consume`, :meth:`cancel` and
  :meth:`topology` queue an operation (a deque plus
  ``ioloop.add_callback_threadsafe``) that runs once the work channel is
  ready; their answer is a future, which :meth:`wait` waits for (it refuses to
  run on the I/O thread, which would wait for itself).
* Back from the I/O thread come: futures completed or failed there;
  deliveries, put into :attr:`deliveries` for the polling thread; and two
  hooks that run on the I/O thread and must not block: ``on_channel`` after
  every new work channel, ``on_abandon`` when everything still waiting must
  fail (the thread gave up, or :meth:`stop` stopped it).
* :attr:`generation`, :attr:`connections`, :attr:`fatal` and :attr:`closing`
  are single attributes other threads may read at any time.

Every work channel incarnation has a *generation*. A delivery remembers its
generation; once that channel is gone the broker has already returned the
message to its queue, so acking it is pointless and a commit for it fails with
a clear error (its outputs may be duplicated, the input is never lost).
"""

from __future__ import annotations

import collections
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pika
import pika.exceptions
import pika.spec
import tenacity
from pika.adapters.select_connection import IOLoop

from zhpc.errors import TransportError, UnroutableError
from zhpc.logs import default_pika_level
from zhpc.message import MESSAGE_ID_HEADER
from zhpc.transport.rabbitmq.connection import Connection
from zhpc.transport.rabbitmq.handoff import (
    Batch,
    ConnectionLostError,
    Delivery,
    Pub,
    RawDelivery,
    Subscription,
    as_transport_error,
)
from zhpc.transport.rabbitmq.republish import DEFAULT_BUDGET_S, NackRetry
from zhpc.transport.rabbitmq.wire import (
    ENCODE_ERRORS,
    PRECONDITION_FAILED,
    connection_parameters,
    describe,
)

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.config import TLSConfig

log = logging.getLogger(__package__)


class _ConnectFailed(Exception):
    """One connection attempt failed; tenacity retries these."""


@dataclass(slots=True)
class _InFlight:
    """A publish awaiting its confirm (keyed by publish sequence number)."""

    batch: Batch
    exchange: str
    routing_key: str
    message_id: str | None
    returned: bool = False
    pub: Pub | None = None  # kept to publish it again after a nack


@dataclass(slots=True)
class _TopologyOp:
    method: str
    kwargs: dict[str, Any]
    future: Future[Any] = field(default_factory=Future)


class IOThread:
    """The I/O thread of one transport and every pika object it uses (one connection).

    Lifecycle: :meth:`start` … :meth:`stop`, again as often as needed; generations
    keep counting across restarts, so a delivery from an earlier run is never
    taken for a current one.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        display_url: str | Sequence[str],
        heartbeat: int,
        connection_attempts: int,
        retry_delay: float,
        tls: TLSConfig | None,
        on_channel: Callable[[int], None],
        on_abandon: Callable[[TransportError], None],
        nack_retry_budget: float = DEFAULT_BUDGET_S,
        blocked_timeout: float | None = None,
    ) -> None:
        # The nodes of a cluster, tried in order (see _node_order); one URL for one broker.
        self._urls = [url] if isinstance(url, str) else list(url)
        self._display_urls = [display_url] if isinstance(display_url, str) else list(display_url)
        #: The node in use (or last tried), as its display URL: read by any thread.
        self.node = self._display_urls[0]
        self._display_url = self.node if len(self._urls) == 1 else ", ".join(self._display_urls)
        self._lost_node: int | None = None
        self._heartbeat = heartbeat
        self._attempts = connection_attempts
        self._retry_delay = retry_delay
        self._tls = tls
        self._on_channel = on_channel
        self._on_abandon = on_abandon
        self._blocked_timeout = blocked_timeout
        #: Why RabbitMQ blocks this connection's publishes now (an alarm), or "".
        self.blocked = ""
        # written on the I/O thread, read by the polling thread
        self.deliveries: queue.SimpleQueue[RawDelivery] = queue.SimpleQueue()
        # shared: written under the GIL as whole attributes, or guarded by their lock
        self._ops: collections.deque[tuple[Callable[[], None], Future[Any] | None]] = (
            collections.deque()
        )
        self._stop = threading.Event()
        self._wake_lock = threading.Lock()
        self._wake_pending = False
        self._ready = threading.Event()
        self.fatal: TransportError | None = None
        self.closing = False
        self._thread: threading.Thread | None = None
        self._ioloop: IOLoop | None = None
        self.generation = 0
        self.connections = 0
        # I/O thread only
        self._conn: Connection | None = None
        self._work: Any = None
        self._topo: Any = None
        self._next_seq = 1
        self._unconfirmed: collections.OrderedDict[int, _InFlight] = collections.OrderedDict()
        self._topo_ops: collections.deque[_TopologyOp] = collections.deque()
        self._topo_current: _TopologyOp | None = None
        self._get_current: Future[Any] | None = None
        self._open_error: BaseException | None = None
        self.nack_retry = NackRetry(
            budget=nack_retry_budget,
            call_later=lambda delay, fn: self._ioloop.call_later(delay, fn),  # type: ignore[union-attr]
            on_confirmed=self._confirmed_after_nack,
            on_failed=lambda batch, error: self._fail_batch(batch, error, settle_input=True),
        )
        #: Delivery tags of the work channel not yet acked or rejected (ack batching).
        self._unsettled: set[int] = set()
        #: Commits whose outputs are confirmed, acked together once per ioloop pass.
        self._acks_due: list[Batch] = []
        #: basic.consume and basic.cancel sent on the work channel, not answered yet: a
        #: channel lost first never answers them (_lose_channel settles them instead).
        self._consuming: set[Future[None]] = set()
        self._cancelling: set[Future[None]] = set()

    # == caller side: lifecycle ===============================================
    def start(self) -> None:
        """Start the I/O thread and wait until the work channel is ready (or it gave up)."""
        if self._thread is not None:
            return
        default_pika_level()
        self.closing = False
        self._stop.clear()
        self._ioloop = IOLoop()
        self._thread = threading.Thread(target=self._run, name="zhpc-rabbitmq-io", daemon=True)
        self._thread.start()
        while not self._ready.wait(0.05):
            if self.fatal is not None:
                self._thread.join(5)
                self._thread = None
                raise self.fatal

    def stop(self) -> None:
        """Close the connection, stop the thread, fail whatever still waits for it."""
        thread = self._thread
        if thread is None:
            return
        self.closing = True
        self._stop.set()
        self._ready.clear()
        assert self._ioloop is not None
        self._ioloop.add_callback_threadsafe(self._io_close)
        thread.join(2 if self.blocked else 15)  # a blocked broker does not read our close
        if thread.is_alive():
            log.warning("RabbitMQ I/O thread did not stop within 15 s")
        self._thread = None
        self._fail_queued(TransportError("the transport was closed"))

    # == caller side: operations ==============================================
    def send(self, batch: Batch) -> None:
        """Publish ``batch`` (and settle its input); ``batch.future`` tells the outcome."""
        self._submit(lambda: self._io_send_batch(batch), batch.future)

    def settle(self, delivery: Delivery, *, ack: bool, requeue: bool) -> None:
        """Ack or nack a delivery (nothing happens for one from a lost channel)."""
        self._submit(lambda: self._io_settle(delivery, ack=ack, requeue=requeue))

    def consume(self, sub: Subscription, consumer_queue: str, generation: int) -> Future[None]:
        """Start ``sub``'s consumer on ``consumer_queue`` if ``generation`` is still current."""
        future: Future[None] = Future()
        self._submit(lambda: self._io_consume(sub, consumer_queue, generation, future), future)
        return future

    def get(self, queue: str) -> Future[Any]:
        """One basic.get: the future holds ``(generation, method, properties, body)`` or None.

        One at a time per transport (pika allows one per channel): the caller serialises.
        """
        future: Future[Any] = Future()
        self._submit(lambda: self._io_get(queue, future), future)
        return future

    def cancel(self, sub: Subscription) -> Future[None]:
        """Cancel ``sub``'s consumer; done once the broker confirmed (or it had none)."""
        future: Future[None] = Future()
        self._submit(lambda: self._io_cancel(sub, future), future)
        return future

    def topology(self, method: str, kwargs: dict[str, Any]) -> Future[Any]:
        """Run one declare-like RPC (a channel method) on the topology channel."""
        op = _TopologyOp(method, kwargs)
        self._submit(lambda: self._io_topology(op), op.future)
        return op.future

    def wait_ready(self, timeout: float) -> bool:
        """Wait until a work channel is open (after a loss: the next one); False if none
        opened within ``timeout`` or the thread gave up or is stopping."""
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.fatal is not None or self.closing or time.monotonic() > deadline:
                return False
        return True

    def wait(self, future: Future[Any], timeout: float | None = None) -> Any:
        """Wait for the I/O thread's answer (never on the I/O thread itself)."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("blocking transport calls cannot run on the I/O thread")
        try:
            return future.result(timeout)
        except FutureTimeout:
            raise TransportError(f"the broker did not answer within {timeout} s") from None
        except pika.exceptions.AMQPError as exc:  # never let pika's own errors reach a caller
            raise as_transport_error(exc) from None

    def _submit(self, op: Callable[[], None], future: Future[Any] | None = None) -> None:
        """Queue ``op`` for the I/O thread; it runs once the work channel is ready.

        ``future`` is failed instead if the thread gives up or stops first.
        """
        if self.fatal is not None:
            raise self.fatal
        if self._thread is None or self.closing:
            raise TransportError("the transport is not connected")
        self._ops.append((op, future))
        with self._wake_lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        assert self._ioloop is not None
        self._ioloop.add_callback_threadsafe(self._io_drain)

    def _fail_queued(self, error: TransportError) -> None:
        """Fail everything still waiting for the I/O thread (it has stopped or given up)."""
        while self._ops:
            _op, future = self._ops.popleft()
            if future is not None:
                fail(future, error)
        while self._topo_ops:
            fail(self._topo_ops.popleft().future, error)
        if self._topo_current is not None:
            fail(self._topo_current.future, error)
            self._topo_current = None
        self._on_abandon(error)

    # == I/O thread: connection ===============================================
    def _run(self) -> None:
        """The I/O thread: connect (retrying), run the ioloop, reconnect after a loss."""
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self._attempts) | self._stop_when_closing,
            # With several nodes, a random part too: clients that lost the same node
            # spread their attempts instead of retrying in step.
            wait=tenacity.wait_exponential(multiplier=self._retry_delay, max=30)
            + tenacity.wait_random(0, min(self._retry_delay, 1.0) if len(self._urls) > 1 else 0),
            retry=tenacity.retry_if_exception_type(_ConnectFailed),
            before_sleep=self._log_retry,
            sleep=self._stop.wait,
            reraise=True,
        )
        while not self.closing:
            try:
                retrying(self._run_connection)
            except _ConnectFailed as exc:
                if self.closing:
                    return
                self._give_up(
                    f"cannot connect to RabbitMQ at {self._display_url} after "
                    f"{self._attempts} attempt(s): {exc}"
                )
                return
            except pika.exceptions.ProbableAuthenticationError:
                self._give_up(f"RabbitMQ at {self.node} refused the user name or password")
                return
            except pika.exceptions.ProbableAccessDeniedError:
                self._give_up(f"RabbitMQ at {self.node} denied access to the virtual host")
                return
            except Exception as exc:  # never let the I/O thread die silently
                log.exception("RabbitMQ I/O thread failed")
                self._give_up(f"RabbitMQ I/O thread failed: {exc}")
                return

    def _stop_when_closing(self, _state: tenacity.RetryCallState) -> bool:
        return self.closing

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "connecting to RabbitMQ at %s failed (attempt %d of %d): %s; retrying in %.1f s",
            self._display_url,
            state.attempt_number,
            self._attempts,
            exc,
            wait,
        )

    def _give_up(self, text: str) -> None:
        log.error("%s", text)
        self.fatal = TransportError(text)
        self._fail_queued(self.fatal)

    def _node_order(self) -> list[int]:
        """Nodes in the order listed, except that the one just lost is tried last."""
        order = list(range(len(self._urls)))
        if self._lost_node is not None and len(order) > 1:
            order.remove(self._lost_node)
            order.append(self._lost_node)
        return order

    def _run_connection(self) -> None:
        """One connection's life; raises _ConnectFailed if no node would open one.

        Every attempt tries each node once. Before a reconnection it waits a
        random moment first, so that the consumers of a lost node do not all
        land on the survivor in the same instant.
        """
        if self.closing:
            return
        if self.connections and len(self._urls) > 1:
            self._stop.wait(random.uniform(0.0, min(self._retry_delay, 1.0)))
        errors = []
        for index in self._node_order():
            if self.closing:
                return
            try:
                self._run_node(index)
            except _ConnectFailed as exc:
                errors.append(
                    f"{self._display_urls[index]}: {exc}" if len(self._urls) > 1 else str(exc)
                )
                if len(self._urls) > 1:
                    log.info("cannot connect to RabbitMQ at %s: %s", self._display_urls[index], exc)
                continue
            self._lost_node = index if len(self._urls) > 1 else None
            return
        raise _ConnectFailed("; ".join(errors))

    def _run_node(self, index: int) -> None:
        """One connection to one node: returns once it was lost, raises if it never opened."""
        assert self._ioloop is not None
        self.node = self._display_urls[index]
        self._open_error = None
        self._conn = Connection(
            connection_parameters(
                self._urls[index], self._heartbeat, self._tls, self._blocked_timeout
            ),
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
            raise _ConnectFailed(describe(error))

    def _on_connection_open(self, connection: pika.SelectConnection) -> None:
        log.info("connected to RabbitMQ at %s", self.node)
        self.connections += 1  # what was declared on an earlier connection is declared again
        self.nack_retry.connection_opened(connection)
        self.blocked = ""
        connection.add_on_connection_blocked_callback(self._on_blocked)
        connection.add_on_connection_unblocked_callback(self._on_unblocked)
        connection.channel(on_open_callback=self._on_topo_open)
        connection.channel(on_open_callback=self._on_work_open)

    def _on_blocked(self, _conn: Any, frame: Any) -> None:
        self.blocked = getattr(frame.method, "reason", "") or "blocked"
        log.warning("RabbitMQ at %s blocks publishing: %s", self._display_url, self.blocked)

    def _on_unblocked(self, _conn: Any, _frame: Any) -> None:
        self.blocked = ""
        log.info("RabbitMQ at %s accepts publishes again", self._display_url)

    def _on_connection_open_error(self, _conn: Any, error: BaseException) -> None:
        self._open_error = error
        assert self._ioloop is not None
        self._ioloop.stop()

    def _on_connection_closed(self, _conn: Any, reason: BaseException) -> None:
        lost = ConnectionLostError(f"connection to RabbitMQ lost: {describe(reason)}")
        self._lose_channel(lost)
        self.nack_retry.connection_lost(lost)
        self._work = None
        self._topo = None
        if self._topo_current is not None:
            fail(self._topo_current.future, ConnectionLostError("connection to RabbitMQ lost"))
            self._topo_current = None
        if not self.closing:
            log.warning(
                "connection to RabbitMQ at %s lost (%s); reconnecting",
                self.node,
                describe(reason),
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
        channel.add_callback(self._on_get_empty, [pika.spec.Basic.GetEmpty], one_shot=False)
        channel.confirm_delivery(self._on_confirm, callback=self._on_confirm_ok)
        assert self._conn is not None
        self._conn.fast_channel(channel, self._on_confirm)

    def _on_confirm_ok(self, _frame: Any) -> None:
        self.generation += 1
        self._next_seq = 1
        generation = self.generation
        self._ready.set()
        self._io_drain()
        self._on_channel(generation)

    def _on_work_closed(self, channel: Any, reason: BaseException) -> None:
        if self._work is not channel:
            return
        self._work = None
        self._ready.clear()
        if isinstance(reason, pika.exceptions.ChannelClosedByBroker):
            if reason.reply_code == PRECONDITION_FAILED and "acknowledgement" in reason.reply_text:
                log.error(
                    "RabbitMQ closed the channel because a message was held unacknowledged "
                    "longer than its consumer_timeout (%s); unacked messages are redelivered, "
                    "commits in flight fail",
                    reason.reply_text,
                )
            else:
                log.error("RabbitMQ closed the work channel: %s", describe(reason))
        self._lose_channel(ConnectionLostError(f"channel to RabbitMQ lost: {describe(reason)}"))
        conn = self._conn
        if conn is not None and conn.is_open and not self.closing:
            assert self._ioloop is not None
            self._ioloop.call_later(
                min(self._retry_delay, 1.0),
                lambda: conn.is_open and conn.channel(on_open_callback=self._on_work_open),
            )

    def _lose_channel(self, error: ConnectionLostError) -> None:
        """Fail everything awaiting a confirm; deliveries of this generation go stale."""
        self._ready.clear()
        self.generation += 1
        unconfirmed, self._unconfirmed = self._unconfirmed, collections.OrderedDict()
        self._unsettled.clear()
        due, self._acks_due = self._acks_due, []
        for batch in due:  # confirmed, but the ack can no longer be sent
            fail(
                batch.future,
                ConnectionLostError(
                    "the input's channel was lost before its ack; the broker redelivers it"
                ),
            )
        for inflight in unconfirmed.values():
            self._fail_batch(inflight.batch, error, settle_input=False)
        current, self._get_current = self._get_current, None
        if current is not None:
            fail(current, error)
        consuming, self._consuming = self._consuming, set()
        for future in consuming:  # the caller subscribes again on the next channel
            fail(future, error)
        cancelling, self._cancelling = self._cancelling, set()
        for future in cancelling:  # no channel, no consumer: cancelled
            _done(future)

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
            fail(current.future, as_transport_error(reason))
        conn = self._conn
        if conn is not None and conn.is_open and not self.closing:
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
            fail(op.future, TransportError(f"cannot {op.method}: {describe(exc)}"))
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
                    fail(future, TransportError(f"RabbitMQ operation failed: {describe(exc)}"))

    def _io_send_batch(self, batch: Batch) -> None:
        if batch.ack is not None and batch.ack.generation != self.generation:
            fail(
                batch.future,
                ConnectionLostError(
                    "the input's channel was lost before its commit; the broker redelivers it"
                ),
            )
            return
        batch.remaining = len(batch.pubs)
        channel = self._work
        publish = self._conn.publish  # type: ignore[union-attr]
        for pub in batch.pubs:
            try:
                publish(
                    channel, pub.exchange, pub.routing_key, pub.body, pub.properties, pub.mandatory
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
                batch, pub.exchange, pub.routing_key, headers.get(MESSAGE_ID_HEADER), pub=pub
            )
        if not batch.pubs:
            self._finish_batch(batch)

    def _publish_failed(self, batch: Batch, exc: Exception) -> None:
        """A publish raised before it was written: fail its batch, return its input.

        pika marshals every frame of a publish before writing any of them
        (``Connection._send_message``), so an encoding error wrote nothing and the
        channel's confirm numbering is intact. Any other error leaves the channel
        in an unknown state, so it is closed: everything it held is redelivered.
        """
        encoding = isinstance(exc, ENCODE_ERRORS)
        log.error(
            "a publish could not be %s: %s", "encoded" if encoding else "written", describe(exc)
        )
        self._fail_batch(
            batch,
            TransportError(f"a message could not be published: {describe(exc)}"),
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
                if inflight.pub is not None and self.nack_retry.nacked(batch, inflight.pub):
                    continue  # counted down once confirmed on the spare channel
                self._fail_batch(
                    batch,
                    TransportError("the broker refused a published message (nack)"),
                    settle_input=True,
                )
                continue
            batch.remaining -= 1
            if batch.remaining == 0:
                self._finish_batch(batch)

    def _confirmed_after_nack(self, batch: Batch) -> None:
        batch.remaining -= 1
        if batch.remaining == 0:
            self._finish_batch(batch)

    def _finish_batch(self, batch: Batch) -> None:
        if batch.ack is not None:
            if batch.ack.generation != self.generation or self._work is None:
                self._fail_batch(
                    batch,
                    ConnectionLostError(
                        "the input's channel was lost before its ack; the broker redelivers it"
                    ),
                    settle_input=False,
                )
                return
            self._ack_soon(batch)
            return
        if batch.future.set_running_or_notify_cancel():
            batch.future.set_result(None)

    def _ack_soon(self, batch: Batch) -> None:
        """Ack a commit's input at the end of this ioloop pass, with the others due then."""
        assert batch.ack is not None
        self._unsettled.discard(batch.ack.tag)
        if not self._acks_due:
            assert self._ioloop is not None
            self._ioloop.call_later(0, self._io_flush_acks)
        self._acks_due.append(batch)

    def _io_flush_acks(self) -> None:
        """Ack every due input: one ``multiple=True`` ack for those below the oldest
        delivery still unsettled (all of them confirmed), single acks above it."""
        due, self._acks_due = self._acks_due, []
        if not due or self._work is None:
            return  # the channel is gone: _lose_channel failed them
        tags = sorted(batch.ack.tag for batch in due if batch.ack is not None)
        oldest = min(self._unsettled, default=None)
        below = [tag for tag in tags if oldest is None or tag < oldest]
        if below:
            self._work.basic_ack(below[-1], multiple=len(below) > 1)
        for tag in tags[len(below) :]:
            self._work.basic_ack(tag)
        for batch in due:
            if batch.future.set_running_or_notify_cancel():
                batch.future.set_result(None)

    def _fail_batch(self, batch: Batch, error: BaseException, *, settle_input: bool) -> None:
        """Fail a batch once; a commit's input goes back to its queue."""
        if batch.failed:
            return
        batch.failed = True
        if (
            settle_input
            and batch.ack is not None
            and batch.ack.generation == self.generation
            and self._work is not None
        ):
            self._unsettled.discard(batch.ack.tag)
            self._work.basic_reject(batch.ack.tag, requeue=True)
        fail(batch.future, error)

    def _io_settle(self, delivery: Delivery, *, ack: bool, requeue: bool) -> None:
        if delivery.generation != self.generation:
            log.warning(
                "cannot %s a message from a lost channel; the broker delivers it again",
                "ack" if ack else "nack",
            )
            return
        self._unsettled.discard(delivery.tag)
        if ack:
            self._work.basic_ack(delivery.tag)
        else:
            # reject, not nack: from RabbitMQ 4.3 a nack with requeue no longer counts
            # toward a quorum queue's delivery limit, and a work queue's limit of 0 is
            # what moves a returned message to its retry lane (accounting).
            self._work.basic_reject(delivery.tag, requeue=requeue)

    def _io_get(self, queue: str, future: Future[Any]) -> None:
        if self._get_current is not None:
            fail(future, TransportError("a fetch is already in progress on this transport"))
            return
        generation = self.generation
        self._get_current = future

        def on_ok(_ch: Any, method: Any, props: Any, body: bytes) -> None:
            if self._get_current is future:
                self._get_current = None
            if future.done() or not future.set_running_or_notify_cancel():
                # The caller stopped waiting (RabbitMQTransport.fetch cancelled it): give the
                # message back now rather than hold it unsettled for the connection's life.
                self._work.basic_reject(method.delivery_tag, requeue=True)
                return
            self._unsettled.add(method.delivery_tag)  # unacked on this channel now
            future.set_result((generation, method, props, body))

        self._work.basic_get(queue, on_ok)

    def _on_get_empty(self, _frame: Any) -> None:
        current, self._get_current = self._get_current, None
        if current is not None:
            _resolve(current, None)

    def _io_consume(
        self, sub: Subscription, consumer_queue: str, generation: int, future: Future[None]
    ) -> None:
        if generation != self.generation or not sub.active:
            fail(future, ConnectionLostError("channel lost while subscribing"))
            return
        channel = self._work

        def on_message(_ch: Any, method: Any, props: Any, body: bytes) -> None:
            if not sub.broadcast:  # broadcasts are auto-acked
                self._unsettled.add(method.delivery_tag)
            self.deliveries.put((sub.sub_id, generation, method, props, body))

        if sub.sub_id in channel.consumer_tags:  # the recovery thread got there first
            future.set_result(None)
            return

        def consuming(_frame: Any) -> None:
            self._consuming.discard(future)
            _done(future)

        if not sub.broadcast:
            channel.basic_qos(prefetch_count=sub.prefetch)
        self._consuming.add(future)
        channel.basic_consume(
            consumer_queue,
            on_message,
            auto_ack=sub.broadcast,
            consumer_tag=sub.sub_id,
            callback=consuming,
        )

    def _io_cancel(self, sub: Subscription, future: Future[None]) -> None:
        if self._work is not None and sub.sub_id in self._work.consumer_tags:

            def cancelled(_frame: Any) -> None:
                self._cancelling.discard(future)
                _done(future)

            self._cancelling.add(future)
            self._work.basic_cancel(sub.sub_id, callback=cancelled)
        else:
            _done(future)


def _resolve(future: Future[Any], value: Any) -> None:
    if not future.done() and future.set_running_or_notify_cancel():
        future.set_result(value)


def _done(future: Future[None]) -> None:
    if not future.done() and future.set_running_or_notify_cancel():
        future.set_result(None)


def fail(future: Future[Any], error: BaseException) -> None:
    """Fail ``future`` unless it is already settled (or was cancelled)."""
    if future.done():
        return
    if future.set_running_or_notify_cancel():
        future.set_exception(error)

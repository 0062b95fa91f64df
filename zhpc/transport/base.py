"""The transport interface: everything a service needs from a message broker.

Threading contract, shared by every implementation:

* Subscription callbacks run only on the thread that calls :meth:`Transport.poll`
  (normally the service's main thread), one message at a time.
* ``publish``/``ack``/``nack``/``commit``/``dead_letter``/``hand_back`` may be
  called from that same thread (implementations may do the I/O elsewhere).
* A transport may keep an I/O thread of its own (heartbeats, confirms) so that
  long work in a callback never starves the connection.

Delivery guarantees: at least once. A message is removed from its queue only
by ``ack`` (directly, or through ``commit``/``move``/``dead_letter``/``hand_back``);
if the consumer dies, the broker hands it out again. What counts against a
message's delivery limit is decided in one place for every broker,
:mod:`zhpc.transport.accounting`: a work queue ``Q`` returns whatever comes back
to its retry lane ``retry.Q`` uncounted; the lane is read one message at a time
(:meth:`Transport.fetch`), so only a message that was being processed counts;
past the limit it goes to ``dlq.Q`` with its history.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

from zhpc.message import Message, Outgoing
from zhpc.transport.accounting import (
    HANDBACK_HEADER,
    carried_headers,
    dlq_name,
    origin_queue,
    retry_name,
)

__all__ = ["HANDBACK_HEADER", "dlq_name", "retry_name"]

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.config import BrokerConfig

#: Header on a copy put into ``dlq.<queue>`` by zhpc itself (not by the broker's delivery limit).
DEAD_LETTER_REASON_HEADER = "zhpc-dead-letter-reason"
#: Header naming the queue a dead-lettered message came from.
DEAD_LETTER_QUEUE_HEADER = "zhpc-dead-letter-queue"
#: Header on a copy put into ``dlq.<queue>`` by zhpc: deliveries before it was moved
#: (RabbitMQ overwrites ``x-delivery-count`` when the copy is delivered from the DLQ).
DEAD_LETTER_COUNT_HEADER = "zhpc-dead-letter-count"

Callback = Callable[[Message], None]


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """What the scaler needs to know about a queue.

    ``unacked`` is None where the broker cannot tell cheaply (RabbitMQ over AMQP).
    """

    ready: int
    unacked: int | None
    consumers: int


@dataclass(frozen=True, slots=True)
class DeathRecord:
    """Why a message in a dead-letter queue is there."""

    reason: str  # e.g. "delivery_limit", "malformed", "rejected"
    queue: str  # the work queue it died in (its retry lane counts as the queue)
    count: int  # deliveries before it died (0 if unknown)
    detail: str = ""


class Transport(abc.ABC):
    """A connection to one broker. Lifecycle: ``connect()`` … ``close()``, or use ``with``."""

    def __init__(self, *, delivery_limit: int = 5) -> None:
        self.delivery_limit = delivery_limit

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: BrokerConfig) -> Self:
        """The transport for the ``broker`` section (not yet connected)."""

    # -- lifecycle -------------------------------------------------------------
    @abc.abstractmethod
    def connect(self) -> None:
        """Connect (retrying with backoff); raises TransportError when it gives up."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection; unacked messages go back to their queues."""

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def broker_node(self) -> str | None:
        """Which node of a broker cluster this transport talks to (None: not a cluster's)."""
        return None

    # -- topology --------------------------------------------------------------
    @abc.abstractmethod
    def declare_queue(self, name: str, *, delivery_limit: int | None = None) -> None:
        """Declare a durable work queue, its ``retry.<name>`` lane and ``dlq.<name>``; idempotent.

        ``delivery_limit`` None means the transport's default. A queue that
        already exists with other arguments is used as it is.
        """

    @abc.abstractmethod
    def delete_queue(self, name: str) -> None:
        """Delete a queue and the messages in it (not its ``dlq.<name>``); a missing one is fine.

        For tidying up (tests, benchmarks, tools): unsubscribe its consumers first,
        brokers differ in what happens to them.
        """

    # -- sending ---------------------------------------------------------------
    @abc.abstractmethod
    def publish(self, message: Outgoing) -> None:
        """Publish and wait until the broker has taken responsibility for it.

        A ``queue`` destination is declared on first use, so work sent to a
        service that never ran waits for it. Raises UnroutableError if the
        broker could route it nowhere (broadcasts to no listener are fine),
        TransportError on any other failure: never drops silently.
        """

    def publish_many(self, messages: Sequence[Outgoing]) -> None:
        """Publish several, confirmed together (cheaper than one by one)."""
        for message in messages:
            self.publish(message)

    # -- receiving -------------------------------------------------------------
    @abc.abstractmethod
    def fetch(self, queue: str) -> Message | None:
        """Take the next ready message of ``queue`` to process now (AMQP basic.get), or None.

        Nothing else is held, so if the process dies only this message counts a
        delivery: retry lanes are read this way. Settle it like any delivery.
        """

    @abc.abstractmethod
    def subscribe(self, queue: str, callback: Callback, *, prefetch: int = 1) -> str:
        """Consume ``queue`` (declared if needed) with manual acks; returns a subscription id."""

    @abc.abstractmethod
    def subscribe_broadcast(self, topic: str, callback: Callback) -> str:
        """Receive broadcasts on ``topic`` from now on (no acks needed)."""

    @abc.abstractmethod
    def unsubscribe(self, subscription: str) -> None:
        """Stop new deliveries; messages already delivered must still be acked or nacked."""

    @abc.abstractmethod
    def poll(self, timeout: float) -> int:
        """Run callbacks for messages that arrive within ``timeout`` seconds; return how many."""

    # -- settling --------------------------------------------------------------
    @abc.abstractmethod
    def ack(self, message: Message) -> None:
        """The message is done: remove it from its queue."""

    @abc.abstractmethod
    def nack(self, message: Message, *, requeue: bool = True) -> None:
        """Processing failed: return it (counts toward the delivery limit) or reject it."""

    @abc.abstractmethod
    def commit(self, outputs: Sequence[Outgoing], ack: Message) -> Future[None]:
        """Publish ``outputs``, then ack ``ack`` once every output is confirmed.

        Either both happen or, if the process dies in between, the input is
        delivered again (duplicates of outputs are possible, losses are not).
        May return before the broker has answered, so that a service can
        pipeline; the future completes when the ack was sent, or fails (and the
        input is returned to its queue) if the broker refused an output.
        An output that can never be sent (a name the wire cannot carry, an
        exchange that does not exist, no route on the embedded broker) raises
        TransportError at once instead, with nothing sent and the input left
        unsettled, so the caller can record the failure with its reason.
        """

    @abc.abstractmethod
    def flush(self, timeout: float | None = None) -> None:
        """Wait for every pending ``commit``; raise TransportError if one failed or timed out."""

    @abc.abstractmethod
    def move(self, message: Message, queue: str, headers: dict[str, Any]) -> None:
        """Put a copy of ``message`` with ``headers`` into ``queue``, then remove the original.

        Blocks until done. If it fails (TransportError) the original is not lost:
        it stays unsettled or goes back to its queue.
        """

    def dead_letter(
        self, message: Message, reason: str, headers: dict[str, Any] | None = None
    ) -> None:
        """Move a message to ``dlq.<queue>`` at once (no retries), recording ``reason``.

        ``headers``: the copy's headers (default: the message's, broker headers dropped),
        to which the reason, the origin queue and the delivery count are added.
        """
        stamped = dict(headers) if headers is not None else carried_headers(message)
        stamped[DEAD_LETTER_REASON_HEADER] = reason
        stamped[DEAD_LETTER_QUEUE_HEADER] = origin_queue(message.queue)
        stamped[DEAD_LETTER_COUNT_HEADER] = message.delivery_count
        self.move(message, dlq_name(message.queue), stamped)

    def retry(self, message: Message, headers: dict[str, Any]) -> None:
        """Move a message that failed into its queue's retry lane with ``headers``."""
        self.move(message, retry_name(message.queue), headers)

    @abc.abstractmethod
    def hand_back(self, message: Message) -> None:
        """Return a message unprocessed without counting it as a failed delivery.

        Used when a job must stop (drain): the copy keeps its headers, including
        zhpc's message id, and ``zhpc-handbacks`` goes up by one.
        """

    # -- inspection ------------------------------------------------------------
    @abc.abstractmethod
    def queue_depth(self, name: str) -> QueueDepth:
        """Ready and in-flight messages and consumers of a queue (zeros if it does not exist)."""


def death_record(message: Message) -> DeathRecord | None:
    """Why a message read from a dead-letter queue died, whoever dead-lettered it."""
    headers = message.headers
    reason = headers.get(DEAD_LETTER_REASON_HEADER)
    if reason is not None:
        return DeathRecord(
            reason=str(reason).split(":", 1)[0],
            queue=str(headers.get(DEAD_LETTER_QUEUE_HEADER, "")),
            count=int(headers.get(DEAD_LETTER_COUNT_HEADER, headers.get("x-delivery-count")) or 0),
            detail=str(reason),
        )
    deaths: Any = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        first = deaths[0]
        return DeathRecord(
            reason=_text(first.get("reason", "")),
            queue=origin_queue(_text(first.get("queue", ""))),
            count=int(first.get("count", 0) or 0),
        )
    return None


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

r"""What the caller side and the I/O thread of the RabbitMQ transport hand each other.

A caller builds a :class:`Subscription` or a :class:`Batch` of :class:`Pub`\ s and
gives it to :class:`~zhpc.transport.rabbitmq.iothread.IOThread`; deliveries come
back as :data:`RawDelivery` tuples, and a received message's handle is its
:class:`Delivery`. Both sides fail with the errors here. No threads, no I/O.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
import pika.spec

from zhpc.errors import TransportError
from zhpc.transport.base import Callback
from zhpc.transport.rabbitmq.wire import describe

__all__ = [
    "Batch",
    "BrokerRefused",
    "ConnectionLostError",
    "Delivery",
    "Pub",
    "RawDelivery",
    "Subscription",
    "as_transport_error",
]


class ConnectionLostError(TransportError):
    """The channel or connection went away before the broker answered."""


class BrokerRefused(TransportError):
    """The broker answered a declare-like call by closing the topology channel."""

    def __init__(self, reply_code: int, reply_text: str) -> None:
        super().__init__(f"RabbitMQ refused: ({reply_code}) {reply_text}")
        self.reply_code = reply_code
        self.reply_text = reply_text


def as_transport_error(reason: BaseException) -> TransportError:
    """pika's reason for a lost channel or connection as zhpc's error (never pika's own).

    Callers catch TransportError only: a pika exception escaping to them would
    crash a service (a heartbeat after a reconnect) or stop ``zhpc go`` spooling.
    """
    if isinstance(reason, TransportError):
        return reason
    if isinstance(reason, pika.exceptions.ChannelClosedByBroker):
        return BrokerRefused(reason.reply_code, reason.reply_text)
    return ConnectionLostError(f"channel to RabbitMQ lost: {describe(reason)}")


@dataclass(slots=True)
class Delivery:
    """What a :class:`Message` handle holds: enough to settle it on the right channel."""

    generation: int
    tag: int
    subscription: str
    broadcast: bool
    properties: pika.spec.BasicProperties


@dataclass(slots=True)
class Subscription:
    """A consumer. The caller side writes it (``active``); the I/O thread only reads it."""

    sub_id: str
    source: str  # queue name, or topic (fanout exchange) for a broadcast
    callback: Callback
    prefetch: int
    broadcast: bool
    active: bool = True


@dataclass(slots=True)
class Pub:
    """One basic.publish, ready for the wire."""

    exchange: str
    routing_key: str
    body: bytes
    properties: pika.spec.BasicProperties
    mandatory: bool


@dataclass(slots=True)
class Batch:
    """Publishes confirmed together, then (for commits) an ack of their input.

    Built by the caller; once handed to :meth:`IOThread.send`, only the I/O thread
    touches it (the caller keeps only ``future``).
    """

    pubs: list[Pub]
    future: Future[None]
    ack: Delivery | None = None
    remaining: int = 0
    failed: bool = False


#: What the I/O thread hands the polling thread: (subscription, generation, method, props, body).
RawDelivery = tuple[str, int, Any, Any, bytes]

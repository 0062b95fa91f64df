"""Declaring queues and exchanges on RabbitMQ, each once per connection (caller side).

Threading contract: :class:`Topology` is used by caller threads and by the
transport's recovery thread, never by the I/O thread. It owns the cache of
what was declared, under its own lock; the I/O thread only counts connections
(:attr:`IOThread.connections`), and an entry remembered on an earlier
connection counts as not declared, so a reconnection re-declares without the
I/O thread touching the cache. Two threads may declare the same name at the
same time; that is harmless (declares are idempotent) and cheaper than holding
the lock across a round trip to the broker.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import Any

from zhpc.errors import TransportError
from zhpc.transport.accounting import (
    dlq_name,
    is_dead_letter_queue,
    lane_limit,
    origin_queue,
    retry_name,
)
from zhpc.transport.base import QueueDepth
from zhpc.transport.rabbitmq.handoff import BrokerRefused, ConnectionLostError
from zhpc.transport.rabbitmq.iothread import IOThread
from zhpc.transport.rabbitmq.wire import (
    NOT_FOUND,
    PRECONDITION_FAILED,
    check_name,
    delay_queue_arguments,
    delay_queue_name,
    dlq_arguments,
    work_queue_arguments,
)

log = logging.getLogger(__package__)


class Topology:
    """What messages and consumers need declared, over the I/O thread's topology channel."""

    def __init__(self, io: IOThread, *, quorum_group_size: int | None = None) -> None:
        self._io = io
        #: x-quorum-initial-group-size of the queues declared here (None: the broker's default)
        self._group_size = quorum_group_size
        self._lock = threading.Lock()
        #: (kind, name) -> (connection it was declared on, monotonic time of the declare)
        self._declared: dict[tuple[str, str], tuple[int, float]] = {}
        self._foreign_logged: set[str] = set()

    # -- the cache (guarded by _lock) ----------------------------------------------------------
    def _age(self, key: tuple[str, str]) -> float | None:
        """Seconds since ``key`` was declared on the current connection; None if it was not."""
        with self._lock:
            entry = self._declared.get(key)
        if entry is None or entry[0] != self._io.connections:
            return None
        return time.monotonic() - entry[1]

    def _remember(self, key: tuple[str, str], connection: int) -> None:
        with self._lock:
            self._declared[key] = (connection, time.monotonic())

    def _first_time(self, name: str) -> bool:
        with self._lock:
            first = name not in self._foreign_logged
            self._foreign_logged.add(name)
        return first

    # -- declaring -----------------------------------------------------------------------------
    def ensure_queue(self, name: str, delivery_limit: int, *, force: bool = False) -> None:
        """Declare a work queue, its retry lane and its DLQ once per connection.

        Dead-letter queues are plain; naming a lane declares its work queue too.
        """
        key = ("queue", name)
        if not force and self._age(key) is not None:
            return
        connection = self._io.connections  # read first: a declare racing a reconnect is redone
        if is_dead_letter_queue(name):
            self._declare_or_adopt(name, dlq_arguments())
        else:
            work = origin_queue(name)
            dlq, lane, limit = dlq_name(work), retry_name(work), lane_limit(delivery_limit)
            self._declare_or_adopt(dlq, dlq_arguments())
            self._remember(("queue", dlq), connection)
            if limit is None:  # no retries at all: straight to the dead-letter queue
                self._declare_or_adopt(work, work_queue_arguments(dlq, 0))
            else:
                self._declare_or_adopt(lane, work_queue_arguments(dlq, limit))
                self._remember(("queue", lane), connection)
                self._declare_or_adopt(work, work_queue_arguments(lane, 0))
            self._remember(("queue", work), connection)
        self._remember(key, connection)

    def _replicated(self, arguments: dict[str, Any]) -> dict[str, Any]:
        if self._group_size is None:
            return arguments
        return {**arguments, "x-quorum-initial-group-size": self._group_size}

    def _declare_or_adopt(self, name: str, arguments: dict[str, Any]) -> None:
        try:
            self.call(
                "queue_declare", queue=name, durable=True, arguments=self._replicated(arguments)
            )
        except BrokerRefused as exc:
            if exc.reply_code != PRECONDITION_FAILED:
                raise TransportError(f"cannot declare queue {name!r}: {exc.reply_text}") from None
            if self._first_time(name):
                log.info("queue %r exists with other arguments; using it as it is", name)

    def ensure_exchange(self, name: str, *, fanout: bool) -> None:
        """A fanout exchange for a topic is declared; a named exchange must already exist."""
        key = ("topic" if fanout else "exchange", name)
        if self._age(key) is not None:
            return
        connection = self._io.connections
        try:
            if fanout:
                self.call("exchange_declare", exchange=name, exchange_type="fanout", durable=True)
            else:
                self.call("exchange_declare", exchange=name, passive=True)
        except BrokerRefused as exc:
            if exc.reply_code == NOT_FOUND:
                raise TransportError(f"exchange {name!r} does not exist") from None
            if exc.reply_code != PRECONDITION_FAILED:
                raise TransportError(
                    f"cannot declare exchange {name!r}: {exc.reply_text}"
                ) from None
            log.info("exchange %r exists with other arguments; using it as it is", name)
        self._remember(key, connection)

    def ensure_delay_queue(self, exchange: str, routing_key: str, delay_ms: int) -> str:
        """A holding queue whose messages dead-letter to the target after ``delay_ms``."""
        name = delay_queue_name(exchange, routing_key, delay_ms)
        key = ("delay", name)
        if self._age(key) is not None:
            return name
        connection = self._io.connections
        args = self._replicated(delay_queue_arguments(exchange, routing_key, delay_ms))
        self.call("queue_declare", queue=name, durable=True, arguments=args)
        self._remember(key, connection)
        return name

    def queue_depth(self, name: str) -> QueueDepth:
        try:
            frame = self.call("queue_declare", queue=name, passive=True)
        except BrokerRefused as exc:
            if exc.reply_code == NOT_FOUND:
                return QueueDepth(ready=0, unacked=None, consumers=0)
            raise TransportError(f"cannot inspect queue {name!r}: {exc.reply_text}") from None
        return QueueDepth(
            ready=frame.method.message_count, unacked=None, consumers=frame.method.consumer_count
        )

    def delete_queue(self, name: str) -> None:
        self.call("queue_delete", queue=name)
        with self._lock:
            self._declared.pop(("queue", name), None)

    def call(self, method: str, **kwargs: Any) -> Any:
        """Run one declare-like RPC on the topology channel and wait for its answer."""
        for kind in ("queue", "exchange"):
            if isinstance(kwargs.get(kind), str):
                check_name(kind, kwargs[kind])
        for attempt in itertools.count(1):
            future = self._io.topology(method, kwargs)
            try:
                return self._io.wait(future, 60)
            except ConnectionLostError:
                if attempt >= 3:
                    raise

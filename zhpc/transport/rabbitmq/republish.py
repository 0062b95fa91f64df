"""Publishing again what the broker nacked, on a fresh channel (I/O thread only).

When a node of a cluster dies, a channel that published to a quorum queue led
from that node is nacked on every publish until the node returns (measured: 5 s
to 16 s), while a new channel reaches the new leader within a second. Failing
the commit at the first nack would return its input to the queue, where it
fails again, in a loop for the whole outage. So a nacked publish goes to a
*spare* confirm channel, reopened after each nack, and is retried there within
a time budget; only when the budget is spent does its batch fail (and its
input go back). The input is still acked only after every output is confirmed:
the batch's remaining count goes down only on a positive confirm.

Threading contract: every method runs on the I/O thread (it is part of
:class:`~zhpc.transport.rabbitmq.iothread.IOThread`'s state).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pika
import pika.spec

from zhpc.errors import TransportError, UnroutableError
from zhpc.message import MESSAGE_ID_HEADER
from zhpc.transport.rabbitmq.wire import describe

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.transport.rabbitmq.handoff import Batch, Pub

log = logging.getLogger(__package__)

#: Seconds a nacked publish is retried before its commit fails.
DEFAULT_BUDGET_S = 30.0
#: Delay before reopening the spare channel after a nack: doubles up to the maximum.
_FIRST_DELAY_S, _MAX_DELAY_S = 0.1, 2.0


@dataclass(slots=True)
class _Retry:
    batch: Batch
    pub: Pub
    deadline: float
    nacks: int = 1


class NackRetry:
    """The spare channel and the nacked publishes waiting for it."""

    def __init__(
        self,
        *,
        budget: float,
        call_later: Callable[[float, Callable[[], None]], Any],
        on_confirmed: Callable[[Batch], None],
        on_failed: Callable[[Batch, BaseException], None],
    ) -> None:
        self.budget = budget
        self._call_later = call_later
        self._on_confirmed = on_confirmed
        self._on_failed = on_failed
        self._conn: Any = None
        self._channel: Any = None
        self._ready = False
        self._opening = False
        self._delay = _FIRST_DELAY_S
        self._seq = 1
        self._unconfirmed: dict[int, _Retry] = {}
        self._waiting: collections.deque[_Retry] = collections.deque()
        #: Publishes confirmed after a nack, and nacks taken (for tests and benchmarks).
        self.rescued = 0
        self.nacks_seen = 0

    def connection_opened(self, conn: Any) -> None:
        self._conn = conn

    def connection_lost(self, error: BaseException) -> None:
        """The connection is gone: whatever waits here fails with it (inputs come back)."""
        self._conn = None
        self._channel = None
        self._ready = self._opening = False
        pending = [*self._unconfirmed.values(), *self._waiting]
        self._unconfirmed.clear()
        self._waiting.clear()
        for retry in pending:
            self._on_failed(retry.batch, error)

    def nacked(self, batch: Batch, pub: Pub) -> bool:
        """Take a publish the work channel's broker refused; False if retrying is off."""
        self.nacks_seen += 1
        if self.budget <= 0 or self._conn is None:
            return False
        log.info(
            "the broker nacked a publish to %r; publishing it again on a fresh channel",
            pub.routing_key or pub.exchange,
        )
        self._waiting.append(_Retry(batch, pub, time.monotonic() + self.budget))
        self._pump()
        return True

    # -- the spare channel -------------------------------------------------------------
    def _pump(self) -> None:
        if not self._waiting:
            return
        if not self._ready:
            self._open()
            return
        while self._waiting and self._ready:
            retry = self._waiting.popleft()
            if retry.batch.failed:
                continue
            pub = retry.pub
            try:
                self._channel.basic_publish(
                    pub.exchange, pub.routing_key, pub.body, pub.properties, pub.mandatory
                )
            except Exception as exc:  # the channel is unusable: try again on a new one
                log.warning("publishing on the spare channel failed: %s", describe(exc))
                self._waiting.appendleft(retry)
                self._reopen_later()
                return
            self._unconfirmed[self._seq] = retry
            self._seq += 1

    def _open(self) -> None:
        if self._opening or self._conn is None or not self._conn.is_open:
            return
        self._opening = True
        self._conn.channel(on_open_callback=self._on_open)

    def _on_open(self, channel: Any) -> None:
        if self._conn is None:  # the connection went meanwhile
            return
        self._channel = channel
        channel.add_on_close_callback(self._on_closed)
        channel.add_on_return_callback(self._on_returned)
        channel.confirm_delivery(self._on_confirm, callback=self._on_confirm_ok)

    def _on_confirm_ok(self, _frame: Any) -> None:
        self._seq = 1
        self._ready = True
        self._opening = False
        self._pump()

    def _on_closed(self, channel: Any, reason: BaseException) -> None:
        if channel is not self._channel:
            return
        self._channel = None
        self._ready = self._opening = False
        # What was in flight on it is published again (its confirms can no longer come).
        self._requeue(list(self._unconfirmed.values()), f"channel closed: {describe(reason)}")
        self._unconfirmed.clear()
        self._call_later(self._delay, self._pump)
        self._delay = min(self._delay * 2, _MAX_DELAY_S)

    def _reopen_later(self) -> None:
        """Close the spare channel; _on_closed reopens it after a growing delay."""
        channel, self._ready = self._channel, False
        if channel is not None and channel.is_open:
            channel.close()
        elif channel is None:
            self._call_later(self._delay, self._pump)

    def _requeue(self, retries: list[_Retry], why: str) -> None:
        now = time.monotonic()
        for retry in reversed(retries):
            if retry.batch.failed:
                continue
            if now >= retry.deadline:
                self._on_failed(
                    retry.batch,
                    TransportError(
                        f"the broker refused a published message (nack), {retry.nacks} time(s) "
                        f"within {self.budget:g} s ({why})"
                    ),
                )
            else:
                self._waiting.appendleft(retry)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        positive = isinstance(method, pika.spec.Basic.Ack)
        tags = (
            [t for t in self._unconfirmed if t <= method.delivery_tag]
            if method.multiple
            else [method.delivery_tag]
        )
        settled = [r for r in (self._unconfirmed.pop(t, None) for t in sorted(tags)) if r]
        if positive:
            self._delay = _FIRST_DELAY_S
            for retry in settled:
                if not retry.batch.failed:
                    self.rescued += 1
                    self._on_confirmed(retry.batch)
            return
        for retry in settled:
            retry.nacks += 1
            self.nacks_seen += 1
        self._requeue(settled, "nacked again")
        self._reopen_later()

    def _on_returned(self, _channel: Any, method: Any, props: Any, _body: bytes) -> None:
        message_id = (props.headers or {}).get(MESSAGE_ID_HEADER)
        for tag, retry in list(self._unconfirmed.items()):
            pub = retry.pub
            pub_id = (pub.properties.headers or {}).get(MESSAGE_ID_HEADER)
            if (pub.exchange, pub.routing_key, pub_id) == (
                method.exchange,
                method.routing_key,
                message_id,
            ):
                del self._unconfirmed[tag]
                self._on_failed(
                    retry.batch,
                    UnroutableError(
                        f"no queue for {method.exchange or 'the default exchange'!r} "
                        f"routing key {method.routing_key!r}: {method.reply_text}"
                    ),
                )
                return

"""Reading a work queue's retry lane (``retry.<queue>``) between its deliveries.

A service consumes its work queue by subscription and reads the lane, where
failed messages wait (``zhpc.transport.accounting``), one message at a time
with ``Transport.fetch``: whenever the subscription has nothing to do, and at
least every ``retry_interval`` seconds while it is busy, at most
:data:`LANE_BATCH` messages per look so that the subscription gets its turn.

A lane message's commit is settled before the next one is fetched. Otherwise a
good message whose ack is still on its way when the next one (a poison) kills
the process goes back to the lane counted as a crash, comes back just before
the poison each time, and is dead-lettered with it. The fetch that follows also
tells that the ack arrived: on RabbitMQ both travel on the same channel, in
order, and the broker answers a basic.get only after what came before it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures

from zhpc.errors import TransportError
from zhpc.message import Message
from zhpc.transport import accounting
from zhpc.transport.base import Transport

__all__ = ["LANE_BATCH", "RetryLane"]

log = logging.getLogger("zhpc.service")

#: Lane messages processed per look before the subscription gets its turn again.
LANE_BATCH = 100
#: How long a lane message's commit may take to settle before the look ends.
SETTLE_TIMEOUT_S = 30.0


class RetryLane:
    """The retry lane of ``queue``, and when to look at it next."""

    def __init__(
        self,
        transport: Transport,
        queue: str,
        *,
        interval: float,
        clock: Callable[[], float],
        owner: str,
    ) -> None:
        self.transport = transport
        self.name = accounting.retry_name(queue)
        self.interval = interval
        self.clock = clock
        self.owner = owner  # the service, for log lines
        self.next_look = clock()

    def timeout(self, poll_timeout: float) -> float:
        """Poll no longer than until the next look at the lane is due."""
        return max(min(poll_timeout, self.next_look - self.clock()), 0.0)

    def read(
        self,
        *,
        idle: bool,
        should_stop: Callable[[], bool],
        process: Callable[[Message], Future[None] | None],
        dead_letter: Callable[[Message, str], None],
    ) -> None:
        """Process lane messages if a look is due (always when ``idle``).

        ``process`` returns the future of the message's commit, if it committed one.
        """
        now = self.clock()
        if not idle and now < self.next_look:
            return
        self.next_look = now + self.interval
        for _ in range(LANE_BATCH):
            if should_stop():
                return
            try:
                message = self.transport.fetch(self.name)
            except TransportError as exc:
                # The broker is away (the transport reconnects; poll raises once it gives
                # up for good): the lane waits for the next look, the service keeps running.
                log.warning("%s: cannot read %s now: %s", self.owner, self.name, exc)
                return
            if message is None:
                return
            if accounting.exhausted(message, self.transport.delivery_limit):
                dead_letter(
                    message, f"delivery_limit: {accounting.spent(message)} failures or crashes"
                )
                continue
            commit = process(message)
            if commit is not None and wait_futures([commit], SETTLE_TIMEOUT_S).not_done:
                log.warning(
                    "%s: a commit from %s is unconfirmed after %g s; reading it later",
                    self.owner,
                    self.name,
                    SETTLE_TIMEOUT_S,
                )
                return

"""When a service must stop: the end of its time, and the grace after a drain signal.

The *end deadline* (``max_runtime``, or the job's end time minus ``end_margin``)
stops a service taking messages; the *hard deadline* (the end deadline, or
``drain_grace`` after a drain signal) interrupts a message still in ``process``:
:class:`Deadlines` arms SIGALRM for it once per change, not per message, and
the runner's alarm handler decides what the alarm means.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from zhpc.jobenv import end_deadline
from zhpc.message import Message

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.config import ServiceConfig
    from zhpc.jobenv import JobEnvironment

__all__ = ["Deadlines", "expected_runtime"]


class Deadlines:
    """A service's deadlines (monotonic times from ``clock``); :meth:`start` once it runs."""

    def __init__(
        self,
        settings: ServiceConfig,
        job: JobEnvironment,
        clock: Callable[[], float],
        started: float,
    ) -> None:
        self.settings = settings
        self.job = job
        self.clock = clock
        self.started = started
        #: The end deadline, fixed by :meth:`start` (None: no end).
        self.end: float | None = None
        #: When the first drain signal arrived (None: none yet).
        self.drain_started: float | None = None

    def start(self) -> None:
        self.end = self.end_deadline()
        self.arm_alarm()

    def end_deadline(self) -> float | None:
        """Monotonic time by which this service must have stopped processing, if any."""
        return end_deadline(
            self.job,
            started=self.started,
            now=self.clock(),
            max_runtime=self.settings.max_runtime,
            end_margin=self.settings.end_margin,
        )

    def hard_deadline(self) -> float | None:
        """When a message still in ``process`` must be handed back."""
        deadline = self.end
        if self.drain_started is not None:
            after_signal = self.drain_started + self.settings.drain_grace
            deadline = after_signal if deadline is None else min(deadline, after_signal)
        return deadline

    def arm_alarm(self) -> None:
        deadline = self.hard_deadline()
        if deadline is not None:
            signal.setitimer(signal.ITIMER_REAL, max(deadline - self.clock(), 0.001))

    def drain_signalled(self) -> None:
        """A drain signal (or ``zhpc shutdown``): the grace starts with the first one."""
        if self.drain_started is None:
            self.drain_started = self.clock()
            self.arm_alarm()

    def too_long(self, message: Message) -> bool:
        """True if the step declares an ``expected_runtime`` that no longer fits."""
        if self.end is None:
            return False
        expected = expected_runtime(message)
        return expected is not None and self.clock() + expected > self.end


def expected_runtime(message: Message) -> float | None:
    """The ``expected_runtime`` parameter of the step a message is for, if it has one."""
    try:
        body = message.json()
        step = body["recipe"][str(body["recipe-pointer"])]
        value = step.get("parameters", {}).get("expected_runtime")
        return float(value) if value is not None else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None

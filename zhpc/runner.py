"""The service runner: feeds a :class:`~zhpc.service.Service` and makes killing it harmless.

The :class:`ServiceRunner` feeds a service from a queue and settles every
message in exactly one way:

* ``process`` returned: everything it sent is published and confirmed, then the
  input is acked (``Transport.commit``). Confirms are pipelined, so the next
  message is processed while the broker confirms the previous one.
* ``process`` raised: if the step has an ``error`` route (or the recipe a
  top-level one) the error details go there and the input is acked; otherwise
  the failure is recorded in the message, which moves to the queue's retry
  lane, and once the delivery limit is used up to ``dlq.<queue>`` with its
  whole history (``zhpc.transport.accounting`` says what counts and why).
* the message cannot be a recipe message at all (not JSON, no recipe, a pointer
  to a missing step): it is dead-lettered at once with the reason.
* the job must stop (signal, ``--max-runtime``, the Slurm end time) and the
  message cannot be finished in time: it is handed back without counting as a
  failure, and the runner exits 0.

Threads: ``process`` runs on the main thread, which is also where the
transport runs subscription callbacks (``Transport.poll``); only the commit
callbacks that count processed/failed messages may run on the transport's I/O
thread. A drain deadline during ``process`` is delivered by SIGALRM, which
raises :class:`DrainDeadline` inside ``process``; code that is stuck in C and
never returns to Python is killed by the scheduler instead, and its message is
then redelivered.

Draining cancels the subscription before anything is handed back, so a handed
back message goes to another consumer rather than straight back to this one.
When to stop is :mod:`zhpc.deadlines`; how the retry lane is read, :mod:`zhpc.retrylane`.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from zhpc import events as step_events
from zhpc import logfields, shutdown
from zhpc.deadlines import Deadlines
from zhpc.errors import Rejected, TransportError, ZhpcError
from zhpc.jobenv import Drain, JobEnvironment, poll_timeout, stop_reason
from zhpc.message import Message, Outgoing
from zhpc.retrylane import RetryLane
from zhpc.status import (
    STATUS_END,
    STATUS_IDLE,
    STATUS_PROCESSING,
    STATUS_SHUTDOWN,
    Heartbeat,
    status_message,
    status_payload,
)
from zhpc.stepevents import StepEvents
from zhpc.transport import accounting
from zhpc.transport.base import Transport

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.service import Service

log = logging.getLogger("zhpc.service")  # the name operators filter on, as before the split

#: How long a thread may hold the GIL while another waits for it, while a runner runs.
#: Python's default (5 ms) makes the service thread and the transport's I/O thread,
#: both busy under a backlog, trade the GIL hundreds of times a second; each trade
#: costs a context switch on both. With 50 ms each does a longer stretch of work per
#: turn (measured: +17% hop rate and 15% less CPU per message, bench/service_hop.py).
#: What it delays is bounded by it: a heartbeat or a signal waits at most 50 ms while
#: ``process`` computes, and one message in flight never waits (only one thread runs).
SWITCH_INTERVAL_S = 0.05


class DrainDeadline(BaseException):
    """Raised inside ``process`` when the job must stop before the message is done.

    A BaseException, like KeyboardInterrupt, so that ``except Exception`` in a
    service does not swallow it.
    """


class ServiceRunner:
    """Runs one service on one queue until it drains; :meth:`run` returns the exit code.

    Deadlines (:mod:`zhpc.deadlines`): past the *end deadline* the service takes no
    more messages; at the *hard deadline* SIGALRM interrupts a message still in
    ``process`` with :class:`DrainDeadline` (it only ever raises while a message is
    being received), and the message is handed back.
    """

    def __init__(
        self,
        service: Service,
        transport: Transport,
        *,
        queue: str | None = None,
        job: JobEnvironment | None = None,
        drain: Drain | None = None,
        clock: Callable[[], float] = time.monotonic,
        events: step_events.Emitter | None = None,
    ) -> None:
        self.service = service
        #: Step events (zhpc.events): emitting only appends to a buffer, never blocks.
        self.events = StepEvents(events, clock)
        self.transport = transport
        self.queue = queue or service.settings.queue or service.queue or service.name
        self.job = job if job is not None else JobEnvironment.from_environ()
        self.drain = drain or Drain(job=self.job)
        self.clock = clock
        self.processed = 0
        self.failed = 0
        self.handed_back = 0
        self.dead_lettered = 0
        self._busy = False
        self._deadline_passed = False
        self._subscription: str | None = None
        self._started = clock()
        self.deadlines = Deadlines(service.settings, self.job, clock, self._started)
        self._last_activity = self._started
        self._beat = Heartbeat(service.settings.heartbeat_interval, self._started)
        # Counts, and commits not yet settled: their futures complete on the I/O thread.
        self._lock = threading.Condition()
        self._unsettled = 0
        #: Messages handed back because their expected_runtime did not fit.
        self._left_alone: set[str] = set()
        self._set_up = False  # setup() ran and teardown() is still due
        self.lane = RetryLane(
            transport,
            self.queue,
            interval=service.settings.retry_interval,
            clock=clock,
            owner=service.name,
        )
        self.retry_lane = self.lane.name
        self._where = {
            "host": socket.gethostname(),
            "pid": os.getpid(),  # in failure records
            "job_id": self.job.job_id,
            "service": service.name,
        }

    # -- deadlines ------------------------------------------------------------------
    def _on_alarm(self, signum: int, frame: object) -> None:
        if self._busy and not self._deadline_passed:
            self._deadline_passed = True
            raise DrainDeadline
        # Between messages: the loop sees the deadline itself (``_should_stop``).

    def _on_drain_signal(self, sig: signal.Signals) -> None:
        self.deadlines.drain_signalled()

    # -- the loop -----------------------------------------------------------------
    def run(self) -> int:
        """Process messages until drained: 0 after a clean drain, 1 if outputs stayed unconfirmed.

        Errors that make processing impossible (broker unreachable, ``setup``
        failing) propagate; unsettled messages then go back to their queues.
        """
        old_alarm = signal.signal(signal.SIGALRM, self._on_alarm)
        old_interval = sys.getswitchinterval()
        sys.setswitchinterval(max(old_interval, SWITCH_INTERVAL_S))
        self.drain.on_signal(self._on_drain_signal)
        self.drain.install()
        froze = False
        try:
            if not self.service.consumes_dead_letters:
                accounting.refuse_as_work_queue(self.queue)
            self.deadlines.start()
            self.service.setup()
            self._set_up = True
            self._subscription = self._subscribe()
            # What exists now (modules, configuration, the service's own set-up) lives as
            # long as the process: kept out of the cyclic collector's full passes, which
            # would otherwise walk all of it again every few thousand messages (measured:
            # 5 us a message, most of the collector's time). Given back in ``finally``;
            # left alone if the process froze objects itself (or another runner did).
            if gc.get_freeze_count() == 0:
                gc.freeze()
                froze = True
            self.transport.subscribe_broadcast(shutdown.SHUTDOWN_TOPIC, self._on_shutdown)
            self._beat.enter(STATUS_IDLE)
            log.info("%s: consuming %s", self.service.name, self.queue)
            while not self._should_stop():
                delivered = self.transport.poll(self._lane_timeout())
                self._read_lane(idle=delivered == 0)
                self._heartbeat()
                self._tick()
            return self._shutdown()
        except BaseException:
            if self._set_up:  # e.g. the broker went away for good: still close files
                with contextlib.suppress(Exception):
                    self.service.teardown()
            raise
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old_alarm)
            sys.setswitchinterval(old_interval)
            if froze:
                gc.unfreeze()
            self.drain.uninstall()

    def _subscribe(self) -> str:
        """Start consuming; the recorder's runner overrides this to read a broadcast topic."""
        self.transport.declare_queue(self.queue)
        return self.transport.subscribe(
            self.queue, self._on_message, prefetch=self.service.settings.prefetch
        )

    def _on_shutdown(self, message: Message) -> None:
        """A ``zhpc shutdown`` broadcast: drain as after SIGTERM if it names this service."""
        sender = shutdown.sender_if_for(message, self.service.name)
        if sender is not None:
            log.warning("%s: shutdown requested by %s", self.service.name, sender)
            self.drain.request("zhpc shutdown")
            self._on_drain_signal(signal.SIGTERM)  # the same drain grace as a signal

    def _should_stop(self) -> bool:
        if self.drain.requested:
            return True
        reason = stop_reason(
            now=self.clock(),
            end=self.deadlines.end,
            last_activity=self._last_activity,
            idle_timeout=self.service.settings.idle_timeout,
        )
        if reason is not None:
            self.drain.request(reason)
            return True
        return False

    def _poll_timeout(self) -> float:
        return poll_timeout(self.clock(), self._beat.next, self.deadlines.end)

    def _on_message(self, message: Message) -> None:
        self._process(message)

    def _process(self, message: Message) -> Future[None] | None:
        """Settle ``message`` in one of the ways above; the commit's future if it was committed."""
        self._last_activity = self.clock()
        if self._should_stop():
            self._stop_consuming()
            self._hand_back(message)
            return None
        if self.deadlines.too_long(message):
            if message.message_id in self._left_alone:
                # It came back to us: only work we cannot finish is left. Leave it to
                # jobs with more time instead of handing it back and forth until the end.
                self.drain.request("the messages left do not fit the time left")
                self._stop_consuming()
            elif message.message_id is not None:
                self._left_alone.add(message.message_id)
            self._hand_back(message)
            return None
        future: Future[None] | None = None
        outputs: list[Outgoing] = []
        ref = self.events.received(message)
        received_at = self.events.since(message)
        logfields.set_message(ref.recipe_id, ref.step)  # log records of this message carry them
        self._beat.enter(STATUS_PROCESSING)
        try:
            self._deadline_passed = False
            self._busy = True  # from here on SIGALRM may raise DrainDeadline
            try:
                self.service.receive(message, outputs)
            finally:
                self._busy = False
        except DrainDeadline:
            log.warning(
                "%s: out of time, handing message %s back", self.service.name, message.message_id
            )
            self.drain.request("out of time during a message")
            self._stop_consuming()
            self._hand_back(message)
        except Rejected as exc:
            self._dead_letter(message, f"malformed: {exc}")
        except Exception as exc:
            log.error(
                "%s: processing failed (delivery %d) for message %s: %s",
                self.service.name,
                message.delivery_count,
                message.message_id,
                exc,
                exc_info=True,
            )
            self._record_failure(message, exc)
        else:
            try:
                future = self.transport.commit(outputs, ack=message)
            except TransportError as exc:  # outputs that can never be sent: a failure too
                log.error(
                    "%s: outputs of message %s cannot be sent: %s",
                    self.service.name,
                    message.message_id,
                    exc,
                )
                self._record_failure(message, exc)
            else:
                with self._lock:
                    self._unsettled += 1
                future.add_done_callback(
                    functools.partial(
                        self._committed, message=message, received=received_at, ref=ref
                    )
                )
        self.events.put_down()
        logfields.clear_message()
        self._beat.enter(STATUS_IDLE)
        self._last_activity = self.clock()
        return future

    def _committed(
        self,
        future: Future[None],
        message: Message | None = None,
        received: float | None = None,
        ref: step_events.StepRef | None = None,
    ) -> None:
        """Count a settled commit (runs on whichever thread completed the future)."""
        exc = future.exception()
        if message is not None:
            self.events.settled(message, ref, received, exc)
        with self._lock:
            self._unsettled -= 1
            if not self._unsettled:
                self._lock.notify_all()
            if exc is None:
                self.processed += 1
            else:
                self.failed += 1
        if exc is not None:
            # The transport already returned the input (or the broker will): nothing is lost.
            log.error(
                "%s: outputs not confirmed, message returned to its queue: %s",
                self.service.name,
                exc,
            )

    def _stop_consuming(self) -> None:
        """Cancel the subscription (once) before handing anything back.

        Otherwise a handed-back message can be delivered straight back to this
        consumer, handed back again, and so on until the process is killed.
        Deliveries already on their way still reach ``_on_message``, which hands
        them back too.
        """
        if self._subscription is not None:
            subscription, self._subscription = self._subscription, None
            self.transport.unsubscribe(subscription)

    def _hand_back(self, message: Message) -> None:
        limit = self.service.settings.max_handbacks
        if accounting.handbacks(message.headers) >= limit:
            self._dead_letter(message, f"handed back {limit} times: it never fits the time left")
            return
        self.handed_back += 1
        self.events.emit(step_events.HANDED_BACK, message, duration=self.events.held(message))
        self.transport.hand_back(message)

    # -- failures and the retry lane ------------------------------------------------
    def _record_failure(self, message: Message, error: BaseException) -> None:
        """Count a real failure in the message itself: to the retry lane, or past the limit
        to the dead-letter queue with its history and last error."""
        with self._lock:
            self.failed += 1
        self.events.failed(message, error)
        headers = accounting.with_failure(message, error, self._where)
        limit = self.transport.delivery_limit
        try:
            if accounting.dead_after_failure(message, limit):
                count = accounting.spent(message) + 1
                self._dead_letter(
                    message, f"delivery_limit: failed {count} times, last: {error}", headers
                )
            else:
                self.transport.retry(message, headers)
        except TransportError as exc:  # the broker returns it by itself (counted there)
            log.error(
                "%s: could not record the failure of message %s (%s); returning it",
                self.service.name,
                message.message_id,
                exc,
            )
            with contextlib.suppress(TransportError):
                self.transport.nack(message, requeue=True)

    def _dead_letter(
        self, message: Message, reason: str, headers: dict[str, Any] | None = None
    ) -> None:
        self.dead_lettered += 1
        self.events.emit(
            step_events.DEAD_LETTERED,
            message,
            duration=self.events.held(message),
            error=step_events.excerpt(reason),
            dlq=accounting.dlq_name(message.queue),
        )
        log.error(
            "%s: dead-lettering message %s: %s", self.service.name, message.message_id, reason
        )
        self.transport.dead_letter(message, reason, headers)

    def _lane_timeout(self) -> float:
        return self.lane.timeout(self._poll_timeout())

    def _read_lane(self, *, idle: bool) -> None:
        """Process messages from the retry lane (the recorder's runner has none)."""
        self.lane.read(
            idle=idle,
            should_stop=self._should_stop,
            process=self._process,
            dead_letter=self._dead_letter,
        )

    def _shutdown(self) -> int:
        log.info("%s: draining (%s)", self.service.name, self.drain.reason or "stopped")
        self._beat.enter(STATUS_SHUTDOWN)
        code = 0
        try:
            # Once unsubscribed no more arrive; messages already prefetched are
            # delivered here and handed back (``_should_stop`` is true), uncounted.
            self._stop_consuming()
            while self.transport.poll(0):
                pass
            with self._lock:
                self._lock.wait_for(
                    lambda: not self._unsettled, max(self.service.settings.drain_grace, 5)
                )
                late = self._unsettled
            if late:
                code = 1
                log.error(
                    "%s: %d commit(s) still unconfirmed at exit; the broker delivers "
                    "those inputs again",
                    self.service.name,
                    late,
                )
            with contextlib.suppress(TransportError):
                self.transport.flush(0)  # failures were counted and logged as they happened
        finally:
            self._set_up = False
            self.service.teardown()
            self._beat.enter(STATUS_END)
            self._heartbeat(force=True)
            self.events.close()
        log.info(
            "%s: stopped after %d processed, %d failed, %d handed back, %d dead-lettered",
            self.service.name,
            self.processed,
            self.failed,
            self.handed_back,
            self.dead_lettered,
        )
        return code

    # -- status -------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The status broadcast: workflows' fields plus zhpc's own."""
        return status_payload(
            self._beat.status,
            host=self._beat.host,
            service=self.service.name,
            serviceclass=type(self.service).__name__,
            utilization=self._beat.utilization.report(),
            queue=self.queue,
            slurm_job_id=self.job.slurm_job_id,
            job_id=self.job.job_id,
            processed=self.processed,
            failed=self.failed,
            handed_back=self.handed_back,
            dead_lettered=self.dead_lettered,
            broker=self.transport.broker_node,
        )

    def _tick(self) -> None:
        try:
            self.service.tick(self.transport)
        except Exception as exc:  # the service's periodic work must not stop its messages
            log.error("%s: periodic work failed: %s", self.service.name, exc, exc_info=True)

    def _heartbeat(self, force: bool = False) -> None:
        if not self._beat.due(self.clock(), force):
            return
        try:
            self.transport.publish(status_message(self.status()))
        except ZhpcError as exc:  # a lost heartbeat is not worth stopping the work for
            log.warning("%s: status heartbeat not sent: %s", self.service.name, exc)

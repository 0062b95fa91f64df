"""Schlockmeister: every dead-lettered message, kept safe in the quarantine store.

``zhpc service -s schlockmeister`` consumes every ``dlq.*`` queue it can find
(:mod:`zhpc.quarantine.discovery`; it looks again every
``quarantine.rescan_interval`` seconds, so new dead-letter queues are picked up)
and files each message in the quarantine store (:mod:`zhpc.quarantine.intake`):
store commit first, ack last, one ERROR line and one note on ``zhpc.quarantine``
per message. ``zhpc dlq`` then lists, shows, reinjects or purges them.

Why its own runner: a :class:`~zhpc.service.ServiceRunner` consumes one queue
and hands each message to ``process`` as a recipe step; Schlockmeister consumes
many queues, whose messages are anything at all, and its queues change while it
runs. ``zhpc service`` uses a service's ``runner_class`` when it has one. The
runner keeps the runner's rules on stopping: it drains on SIGTERM/SIGINT/
SIGUSR1/SIGUSR2 (:class:`~zhpc.jobenv.Drain`), at ``--max-runtime``, before the
batch job's end time and after ``--idle-timeout``, and exits 0.

If the store fails, the message in hand is handed back (not counted as a
failure), Schlockmeister stops with exit code 1, and everything waits in its
dead-letter queue until the store is back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar

from zhpc.errors import TransportError
from zhpc.jobenv import Drain, JobEnvironment, end_deadline, poll_timeout, stop_reason
from zhpc.message import Message
from zhpc.quarantine import QuarantineStore, StoreError, open_store
from zhpc.quarantine.discovery import QueueFinder
from zhpc.quarantine.intake import Quarantiner
from zhpc.recipe import RecipeWrapper
from zhpc.service import Service
from zhpc.transport.base import Transport

log = logging.getLogger("zhpc.services.schlockmeister")


class SchlockmeisterRunner:
    """Consumes the dead-letter queues for one :class:`Schlockmeister` until drained."""

    def __init__(
        self,
        service: Schlockmeister,
        transport: Transport,
        *,
        queue: str | None = None,
        job: JobEnvironment | None = None,
        drain: Drain | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.transport = transport
        self.settings = service.settings
        self.job = job if job is not None else JobEnvironment.from_environ()
        self.drain = drain or Drain(job=self.job)
        self.clock = clock
        self.finder = QueueFinder(transport, service.config, only=queue or self.settings.queue)
        self.watching: dict[str, str] = {}  # dead-letter queue -> subscription id
        self.quarantiner: Quarantiner | None = None
        self.handed_back = 0
        self._code = 0
        self._started = clock()
        self._last_activity = self._started
        self._next_scan = self._started
        self._end: float | None = None

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> int:
        """File messages until drained: 0 after a clean drain, 1 if the store failed."""
        self.drain.install()
        store: QuarantineStore | None = None
        try:
            self._end = end_deadline(
                self.job,
                started=self._started,
                now=self.clock(),
                max_runtime=self.settings.max_runtime,
                end_margin=self.settings.end_margin,
            )
            store = open_store(self.service.config.quarantine)
            self.quarantiner = Quarantiner(
                store, self.transport, notify_queue=self.service.config.quarantine.notify_queue
            )
            log.info("schlockmeister: filing dead letters in %s", store.where)
            while not self._should_stop():
                if self.clock() >= self._next_scan:
                    self._scan()
                self.transport.poll(poll_timeout(self.clock(), self._next_scan, self._end))
            return self._shutdown()
        finally:
            self.drain.uninstall()
            if store is not None:
                store.close()

    def _scan(self) -> None:
        """Subscribe to dead-letter queues not watched yet."""
        self._next_scan = self.clock() + self.service.config.quarantine.rescan_interval
        for queue in sorted(self.finder.find() - set(self.watching)):
            try:
                self.watching[queue] = self.transport.subscribe(
                    queue, self._on_message, prefetch=self.settings.prefetch
                )
            except TransportError as exc:
                log.warning("schlockmeister: cannot consume %s: %s", queue, exc)
                continue
            log.info("schlockmeister: watching %s", queue)

    def _on_message(self, message: Message) -> None:
        self._last_activity = self.clock()
        if self._code:  # the store failed: leave everything in its queue
            self._hand_back(message)
            return
        assert self.quarantiner is not None
        try:
            self.quarantiner.file(message)
        except Exception as exc:  # StoreError, or a bug: never loop on it, never lose it
            self._code = 1
            if isinstance(exc, StoreError):
                log.error(
                    "schlockmeister: %s; message %s stays in %s, stopping",
                    exc,
                    message.message_id,
                    message.queue,
                )
            else:
                log.exception(
                    "schlockmeister: filing message %s from %s failed; it stays there, stopping",
                    message.message_id,
                    message.queue,
                )
            self.drain.request("the quarantine store failed")
            self._stop_consuming()
            self._hand_back(message)

    def _hand_back(self, message: Message) -> None:
        self.handed_back += 1
        self.transport.hand_back(message)

    def _stop_consuming(self) -> None:
        """Cancel every subscription first, so nothing handed back comes straight back here."""
        for subscription in self.watching.values():
            self.transport.unsubscribe(subscription)
        self.watching.clear()

    # -- stopping -------------------------------------------------------------------------
    def _should_stop(self) -> bool:
        if self.drain.requested:
            return True
        reason = stop_reason(
            now=self.clock(),
            end=self._end,
            last_activity=self._last_activity,
            idle_timeout=self.settings.idle_timeout,
        )
        if reason is not None:
            self.drain.request(reason)
        return reason is not None

    def _shutdown(self) -> int:
        log.info("schlockmeister: draining (%s)", self.drain.reason or "stopped")
        self._stop_consuming()
        while self.transport.poll(0):  # deliveries already on their way: filed (it is quick)
            pass
        try:
            self.transport.flush(5)
        except TransportError as exc:
            log.warning("schlockmeister: %s", exc)
        filed = self.quarantiner.filed if self.quarantiner else 0
        log.info(
            "schlockmeister: stopped after filing %d message(s), %d handed back",
            filed,
            self.handed_back,
        )
        return self._code


class Schlockmeister(Service):
    """Keeps every dead-lettered message (all dlq.* queues) in the quarantine store."""

    queue = "dlq.*"
    #: ``zhpc service`` runs this service with its own runner (several queues, any message).
    runner_class: ClassVar[Any] = SchlockmeisterRunner

    def process(self, rw: RecipeWrapper, payload: Any) -> None:
        raise RuntimeError("Schlockmeister files whole messages; run it with its runner_class")

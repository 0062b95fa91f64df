"""The recorder: keeps the step events of ``zhpc.events`` for ``zhpc trace``.

It listens to the ``zhpc.events`` broadcast (not a work queue: events are
observations, and one missed while no recorder runs is acceptable) and stores
each broadcast batch in one transaction of the event store
(:mod:`zhpc.eventstore`, SQLite by default, PostgreSQL with ``events.url``).
Events older than ``events.retention_days`` are deleted at start and hourly.

It runs under the ordinary :class:`~zhpc.runner.ServiceRunner` (drain signals,
``--max-runtime``, heartbeats), whose subscription is replaced by the broadcast.
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

from zhpc.errors import ZhpcError
from zhpc.events import EVENTS_TOPIC, decode_batch
from zhpc.eventstore import EventStore, open_event_store
from zhpc.message import Message
from zhpc.recipe import RecipeWrapper
from zhpc.runner import ServiceRunner
from zhpc.service import Service

log = logging.getLogger("zhpc.services.recorder")

#: Seconds between two retention sweeps.
EXPIRE_INTERVAL = 3600.0


class RecorderRunner(ServiceRunner):
    """A ServiceRunner whose input is the ``zhpc.events`` broadcast."""

    service: Recorder

    def _subscribe(self) -> str:
        return self.transport.subscribe_broadcast(EVENTS_TOPIC, self._on_broadcast)

    def _read_lane(self, *, idle: bool) -> None:
        """Broadcasts have no retry lane."""

    def _on_broadcast(self, message: Message) -> None:
        self._last_activity = self.clock()
        try:
            self.service.record(message)
        except ZhpcError as exc:  # the store is down: these events are lost, the next may not be
            with self._lock:
                self.failed += 1
            log.error("recorder: events not stored: %s", exc)
        else:
            with self._lock:
                self.processed += 1


class Recorder(Service):
    """Stores step events (zhpc.events) for zhpc trace."""

    queue = "zhpc.recorder"
    runner_class: ClassVar[Any] = RecorderRunner

    def setup(self) -> None:
        self.store: EventStore = open_event_store(self.config.events)
        self.recorded = 0
        self._next_expiry = 0.0
        self._expire()
        log.info("recorder: storing events in %s", self.store.where)

    def teardown(self) -> None:
        self.store.close()

    def record(self, message: Message) -> int:
        """Store the events of one broadcast; a malformed one is skipped with a warning."""
        try:
            events = decode_batch(message.json())
        except ValueError as exc:
            log.warning("recorder: ignoring a broadcast: %s", exc)
            return 0
        stored = self.store.add(events)
        self.recorded += stored
        if time.monotonic() >= self._next_expiry:
            self._expire()
        return stored

    def _expire(self) -> None:
        self._next_expiry = time.monotonic() + EXPIRE_INTERVAL
        gone = self.store.expire(self.config.events.retention_days)
        if gone:
            log.info(
                "recorder: deleted %d events older than %g days",
                gone,
                self.config.events.retention_days,
            )

    def process(self, rw: RecipeWrapper, payload: Any) -> None:
        raise RuntimeError("the recorder stores broadcasts; run it with its runner_class")

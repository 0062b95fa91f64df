"""Step events: what happened to each recipe step, broadcast on ``zhpc.events`` for the recorder.

Services (:class:`~zhpc.runner.ServiceRunner`) emit ``received``, ``done`` (outputs
confirmed, input acked), ``failed``, ``handed-back`` and ``dead-lettered``;
``zhpc wrap`` emits ``job-started`` and ``job-ended``. Each event carries the
recipe id (``environment.ID``), the step (``recipe-pointer``), the message id,
where it ran (service, host, pid, Slurm job id and array task) and durations.

Events must never delay or lose a message, so :meth:`EventEmitter.emit` only
appends to a bounded in-memory buffer; a daemon thread with *its own* broker
connection publishes the buffer in batches (one broadcast per batch) on the
fanout topic ``zhpc.events``; what is the same for every event of a process
(service, host, pid, job) is sent once per batch as ``source``. When the
buffer is full, or the broker cannot be reached, events are dropped and
counted (``dropped``): losing an event is acceptable, slowing the message
path is not.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.jobenv import JobEnvironment
    from zhpc.message import Message
    from zhpc.transport.base import Transport

log = logging.getLogger(__name__)

EVENTS_TOPIC = "zhpc.events"
#: Format marker in each broadcast, so that a reader can refuse what it does not understand.
EVENTS_FORMAT = "zhpc-events/1"

RECEIVED, DONE, FAILED, HANDED_BACK, DEAD_LETTERED = (
    "received",
    "done",
    "failed",
    "handed-back",
    "dead-lettered",
)
JOB_STARTED, JOB_ENDED = "job-started", "job-ended"
KINDS = (RECEIVED, DONE, FAILED, HANDED_BACK, DEAD_LETTERED, JOB_STARTED, JOB_ENDED)
#: The fields of each event row in a broadcast (``more``: a dict of the others, or null).
ROW_COLUMNS = (
    "event",
    "time",
    "recipe_id",
    "step",
    "queue",
    "message_id",
    "duration",
    "delivery",
    "more",
)
#: Kinds that end one run of a step (a ``received`` or ``job-started`` begins it).
FINAL_KINDS = frozenset({DONE, FAILED, HANDED_BACK, DEAD_LETTERED, JOB_ENDED})

_HANDLED_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM}
#: Error texts are cut to this many characters: an excerpt, not a traceback.
ERROR_EXCERPT = 500
#: Recipes with more steps than this do not send their plan with each ``received``.
PLAN_LIMIT = 64


class StepRef(NamedTuple):
    """Which recipe step a message is: read once from its body, never raising.

    A NamedTuple: built for every message, and cheaper to build than a dataclass.
    """

    recipe_id: str | None = None
    step: int | None = None
    queue: str | None = None
    #: The recipe's steps (number -> queue or service), so a trace can show the waiting ones;
    #: only read for a message at the start of its recipe.
    plan: dict[str, str] | None = None

    @classmethod
    def of(cls, message: Message, *, plan: bool = False) -> StepRef:
        try:
            body = message.json()
            environment = body.get("environment") or {}
            recipe_id = environment.get("ID")
            pointer = body.get("recipe-pointer")
            step = int(pointer) if pointer is not None else None
            recipe = body.get("recipe") or {}
            node = recipe.get(str(pointer)) or {}
            queue = node.get("queue") if isinstance(node, dict) else None
            # The plan goes with the recipe's first steps only (no recipe-path yet): one
            # event per recipe is enough for a trace, and building it is not free.
            steps = _plan(recipe) if plan and not body.get("recipe-path") else None
        except Exception:  # not a recipe message: the event still says what happened
            return cls(None, None, message.queue)
        return cls(
            None if recipe_id is None else str(recipe_id),
            step,
            str(queue) if queue else message.queue,
            steps,
        )


def _plan(recipe: dict[str, Any]) -> dict[str, str] | None:
    if len(recipe) > PLAN_LIMIT:
        return None
    return {
        key: str(node.get("queue") or node.get("service") or "")
        for key, node in recipe.items()
        if key.isdigit() and isinstance(node, dict)
    }


def source_fields(service: str, job: JobEnvironment | None = None) -> dict[str, Any]:
    """Where events of this process come from (fixed for its lifetime)."""
    fields: dict[str, Any] = {"service": service, "host": socket.gethostname(), "pid": os.getpid()}
    if job is not None:
        fields["job_id"] = job.job_id
        fields["slurm_job_id"] = job.slurm_job_id
        fields["array_task"] = job.array_task_id
    return fields


def excerpt(error: BaseException | str | None) -> str | None:
    if error is None:
        return None
    text = str(error).strip() or type(error).__name__
    return text if len(text) <= ERROR_EXCERPT else text[: ERROR_EXCERPT - 1] + "…"


class EventEmitter:
    """A bounded buffer of events and the thread that broadcasts them.

    Lifecycle: construct, ``emit`` from any thread, ``close`` (sends what is
    left, waiting at most its ``timeout``). ``connect`` returns a connected
    transport for the publishing thread alone; it is called again (after
    ``retry_after`` seconds) when publishing failed.
    """

    def __init__(
        self,
        connect: Callable[[], Transport],
        source: dict[str, Any],
        *,
        capacity: int = 10_000,
        interval: float = 0.2,
        batch: int = 200,
        retry_after: float = 5.0,
        close_transport: bool = True,
    ) -> None:
        self._connect = connect
        self.source = dict(source)
        self.capacity = capacity
        self.interval = interval
        self.batch = batch
        self.retry_after = retry_after
        self._close_transport = close_transport
        self._buffer: collections.deque[dict[str, Any]] = collections.deque()
        self._wake = threading.Event()
        self._stopping = False
        self._transport: Transport | None = None
        self._down_until = 0.0
        self.sent = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._loop, name="zhpc-events", daemon=True)
        # Deaf to the signals zhpc handles, so that the kernel delivers them to the main
        # thread (zhpc wrap forwards them to its command at once); so are the threads it
        # starts (a broker connection's I/O thread).
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED_SIGNALS)
        try:
            self._thread.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def emit(self, kind: str, ref: StepRef | None = None, **fields: Any) -> None:
        """Queue one event; O(1) and never blocks (dropped when the buffer is full)."""
        if len(self._buffer) >= self.capacity:
            self.dropped += 1
            return
        # Only a tuple here; the publishing thread turns it into a row.
        self._buffer.append((kind, time.time(), ref, fields))
        if len(self._buffer) >= self.batch:
            self._wake.set()

    def close(self, timeout: float = 2.0) -> None:
        """Send what is buffered (at most ``timeout`` seconds), stop the thread, disconnect."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.debug("events: publisher still busy at close; %d events left", len(self._buffer))
            return
        self._disconnect()

    # -- the publishing thread ----------------------------------------------------------
    def _loop(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            stopping = self._stopping
            while self._buffer:
                if not self._send_batch():
                    break
            if stopping:
                return

    def _send_batch(self) -> bool:
        """Publish up to ``batch`` events; False if the broker is unavailable (they are dropped)."""
        from zhpc.errors import ZhpcError
        from zhpc.message import Outgoing

        events: list[list[Any]] = []
        received: dict[Any, list[Any]] = {}  # message id -> its received row in this batch
        while self._buffer and len(events) < self.batch:
            kind, at, ref, fields = self._buffer.popleft()
            if kind == DONE and (row := received.pop(fields.get("message_id"), None)):
                _merge_done(row, at, fields)  # one row instead of two: half the encoding
                continue
            row = _row(kind, at, ref, fields)
            if kind == RECEIVED and row[5] is not None:
                received[row[5]] = row
            events.append(row)
        transport = self._ready_transport()
        if transport is None:
            self.dropped += len(events)
            return False
        try:
            transport.publish(
                Outgoing.json(
                    EVENTS_TOPIC,
                    {
                        "format": EVENTS_FORMAT,
                        "source": self.source,
                        "columns": ROW_COLUMNS,
                        "rows": events,
                    },
                    kind="topic",
                    persistent=False,
                    expiration=3600,
                )
            )
        except (ZhpcError, OSError) as exc:
            self.dropped += len(events)
            log.warning("events: %d dropped, broker unavailable: %s", len(events), exc)
            self._disconnect()
            self._down_until = time.monotonic() + self.retry_after
            return False
        self.sent += len(events)
        return True

    def _ready_transport(self) -> Transport | None:
        from zhpc.errors import ZhpcError

        if self._transport is not None:
            return self._transport
        if time.monotonic() < self._down_until:
            return None
        try:
            self._transport = self._connect()
        except (ZhpcError, OSError) as exc:
            log.warning("events: cannot connect to the broker, dropping events: %s", exc)
            self._down_until = time.monotonic() + self.retry_after
            return None
        return self._transport

    def _disconnect(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None and self._close_transport:
            with contextlib.suppress(Exception):
                transport.close()


def _row(kind: str, at: float, ref: StepRef | None, fields: dict[str, Any]) -> list[Any]:
    """One event as a row of :data:`ROW_COLUMNS` (``fields`` is the emit call's own dict)."""
    message_id = fields.pop("message_id", None)
    duration = fields.pop("duration", None)
    delivery = fields.pop("delivery", None)
    recipe_id = step = queue = None
    if ref is not None:
        recipe_id, step, queue = ref.recipe_id, ref.step, ref.queue
        if ref.plan and kind in (RECEIVED, JOB_STARTED):
            fields["plan"] = ref.plan
    return [kind, at, recipe_id, step, queue, message_id, duration, delivery, fields or None]


def _merge_done(row: list[Any], at: float, fields: dict[str, Any]) -> None:
    """Turn a ``received`` row into the ``done`` of the same run (``started``: when received)."""
    more = row[8] or {}
    more["started"] = row[1]
    row[0], row[1], row[6], row[8] = DONE, at, fields.get("duration"), more


def decode_batch(body: Any) -> list[dict[str, Any]]:
    """The events of one ``zhpc.events`` broadcast as dicts (with the sender's fields);
    ValueError if it is not a batch of this format."""
    if not isinstance(body, dict) or body.get("format") != EVENTS_FORMAT:
        raise ValueError(f"not a {EVENTS_FORMAT} broadcast")
    columns, rows = body.get("columns"), body.get("rows")
    if not isinstance(columns, list) or not isinstance(rows, list):
        raise ValueError("a batch without columns and rows")
    source = body.get("source") if isinstance(body.get("source"), dict) else {}
    events = []
    for row in rows:
        if not isinstance(row, list) or len(row) != len(columns):
            continue
        event = {**source, **dict(zip(columns, row, strict=True))}
        more = event.pop("more", None)
        if isinstance(more, dict):
            event.update({k: v for k, v in more.items() if k not in event or event[k] is None})
        events.append(event)
    return events


class NoEvents:
    """The emitter when events are switched off (``events: {enabled: false}``)."""

    sent = dropped = 0

    def emit(self, kind: str, ref: StepRef | None = None, **fields: Any) -> None:
        pass

    def close(self, timeout: float = 2.0) -> None:
        pass


class Tee:
    """Several event sinks as one (the emitter and the Prometheus metrics)."""

    def __init__(self, *sinks: Any) -> None:
        self.sinks = sinks

    def emit(self, kind: str, ref: StepRef | None = None, **fields: Any) -> None:
        for sink in self.sinks:
            sink.emit(kind, ref, **fields)

    def close(self, timeout: float = 2.0) -> None:
        for sink in self.sinks:
            sink.close(timeout)


Emitter = EventEmitter | NoEvents | Tee


def emitter_for(config: Any, service: str, job: JobEnvironment | None = None) -> Emitter:
    """The emitter a configuration asks for: its own broker connection, or none."""
    if not config.events.enabled:
        return NoEvents()

    def connect() -> Transport:
        from zhpc.transport import get_transport

        transport = get_transport(config.broker)
        transport.connect()
        return transport

    return EventEmitter(connect, source_fields(service, job), capacity=config.events.buffer)

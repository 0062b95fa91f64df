"""The step events of one service (:mod:`zhpc.events`): which message is in hand, and since when.

The runner says what happened to a message; this class turns that into the event
with its step, delivery count and the time the message was in hand, so that the
message path keeps one line per outcome. Emitting never blocks (see
:class:`~zhpc.events.EventEmitter`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from zhpc import events

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.message import Message


class StepEvents:
    """Events of the messages one service processes; :meth:`received` starts a message."""

    def __init__(self, emitter: events.Emitter | None, clock: Callable[[], float]) -> None:
        self.emitter = emitter if emitter is not None else events.NoEvents()
        #: Events are on: otherwise only the ref is built (log records carry its fields),
        #: and a ``received`` ref carries no plan of the recipe (no one reads it).
        self._on = not isinstance(self.emitter, events.NoEvents)
        self._clock = clock
        self._in_hand: tuple[Message, float] | None = None

    def received(self, message: Message) -> events.StepRef:
        """``message`` is now in hand: its ``received`` event, and the ref for the others."""
        self._in_hand = (message, self._clock())
        return self.emit(events.RECEIVED, message)

    def put_down(self) -> None:
        """The message in hand is processed (its commit may still be on its way)."""
        self._in_hand = None

    def since(self, message: Message) -> float | None:
        """When ``message`` was received, if it is the one in hand."""
        if self._in_hand is None or self._in_hand[0] is not message:
            return None
        return self._in_hand[1]

    def held(self, message: Message) -> float | None:
        """Seconds since ``message`` was received, if it is the one in hand."""
        since = self.since(message)
        return None if since is None else round(self._clock() - since, 6)

    def emit(
        self,
        kind: str,
        message: Message,
        ref: events.StepRef | None = None,
        **fields: Any,
    ) -> events.StepRef:
        if ref is None:
            ref = events.StepRef.of(message, plan=self._on and kind == events.RECEIVED)
        if not self._on:
            return ref
        if kind != events.DONE:
            fields["delivery"] = message.delivery_count
        self.emitter.emit(kind, ref, message_id=message.message_id, **fields)
        return ref

    def settled(
        self,
        message: Message,
        ref: events.StepRef | None,
        received: float | None,
        error: BaseException | None,
    ) -> None:
        """A commit settled: ``done``, or ``failed`` with the input returned by the transport."""
        if not self._on:
            return
        took = None if received is None else round(self._clock() - received, 6)
        if error is None:
            self.emit(events.DONE, message, ref, duration=took)
        else:
            self.emit(
                events.FAILED,
                message,
                ref,
                duration=took,
                returned=True,
                exception=type(error).__name__,
                error=events.excerpt(error),
            )

    def failed(self, message: Message, error: BaseException) -> None:
        self.emit(
            events.FAILED,
            message,
            duration=self.held(message),
            exception=type(error).__name__,
            error=events.excerpt(error),
        )

    def close(self) -> None:
        self.emitter.close()

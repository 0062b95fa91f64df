"""Messages as they cross the broker boundary: what is sent and what is received.

Both the recipe model (which produces :class:`Outgoing`) and the transports
(which publish :class:`Outgoing` and deliver :class:`Message`) depend on this
module; neither depends on the other.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

#: Header marking a workflows/Zocalo recipe message (value ``True``).
RECIPE_HEADER = "workflows-recipe"
#: zhpc's unique id of one logical message, kept across redeliveries and hand-backs.
MESSAGE_ID_HEADER = "zhpc-message-id"

DestinationKind = Literal["queue", "topic", "exchange"]


def new_message_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message ready to publish.

    ``kind`` says what ``destination`` names: a work queue, a fanout broadcast
    topic, or an exchange (published with ``routing_key``). ``delay`` and
    ``expiration`` are in seconds.
    """

    destination: str
    body: bytes
    kind: DestinationKind = "queue"
    headers: dict[str, Any] = field(default_factory=dict)
    routing_key: str = ""
    delay: float | None = None
    expiration: float | None = None
    persistent: bool = True
    message_id: str = field(default_factory=new_message_id)

    @classmethod
    def json(
        cls, destination: str, payload: Any, kind: DestinationKind = "queue", **kwargs: Any
    ) -> Outgoing:
        """Build an Outgoing with ``payload`` encoded as UTF-8 JSON."""
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        return cls(destination=destination, body=body, kind=kind, **kwargs)


class MalformedBody(ValueError):
    """The body of a received message is not UTF-8 JSON."""


_UNPARSED = object()


@dataclass(slots=True, eq=False)
class Message:
    """A received message.

    ``delivery_count`` is 1 on the first delivery and grows each time the
    broker hands the same message out again. ``handle`` is the transport's own
    delivery reference (pass the whole Message back to ack or nack it).
    """

    body: bytes
    headers: dict[str, Any]
    queue: str
    delivery_count: int = 1
    redelivered: bool = False
    message_id: str | None = None
    handle: Any = None
    _parsed: Any = field(default=_UNPARSED, repr=False)
    _error: str | None = field(default=None, repr=False)

    def _parse(self) -> None:
        if self._parsed is not _UNPARSED or self._error is not None:
            return
        try:
            self._parsed = json.loads(self.body.decode("utf-8"))
        except UnicodeDecodeError as exc:
            self._error = f"body is not UTF-8: {exc.reason} at byte {exc.start}"
        except (json.JSONDecodeError, RecursionError) as exc:
            self._error = f"body is not JSON: {exc}"

    @property
    def malformed(self) -> str | None:
        """Why the body cannot be decoded as UTF-8 JSON, or None if it can."""
        self._parse()
        return self._error

    def json(self) -> Any:
        """The decoded body; raises :class:`MalformedBody` if it is not UTF-8 JSON."""
        self._parse()
        if self._error is not None:
            raise MalformedBody(self._error)
        return self._parsed

    @property
    def is_recipe(self) -> bool:
        """Whether the recipe header is set (accepting the spellings workflows uses)."""
        value = self.headers.get(RECIPE_HEADER)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str):
            return value.strip().lower() in ("true", "1")
        return value is True or value == 1

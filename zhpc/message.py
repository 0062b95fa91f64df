"""Messages as they cross the broker boundary: what is sent and what is received.

Both the recipe model (which produces :class:`Outgoing`) and the transports
(which publish :class:`Outgoing` and deliver :class:`Message`) depend on this
module; neither depends on the other.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from zhpc import strictjson
from zhpc.errors import InvalidHeaders, MalformedBody, ZhpcError

#: Header marking a workflows/Zocalo recipe message (value ``True``).
RECIPE_HEADER = "workflows-recipe"
#: zhpc's unique id of one logical message, kept across redeliveries and hand-backs.
MESSAGE_ID_HEADER = "zhpc-message-id"

DestinationKind = Literal["queue", "topic", "exchange"]

#: AMQP short strings (header keys, queue and exchange names) are at most this many bytes.
MAX_SHORT_STRING = 255
#: Signed 64-bit: the widest integer an AMQP field table carries.
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
#: Longest delay or expiry, in seconds: RabbitMQ's per-message TTL limit (2**32-1 ms).
MAX_DELAY = (2**32 - 1) / 1000
#: Nesting of header values deeper than this is refused (it is never a real header).
_MAX_HEADER_DEPTH = 16


class InvalidMessage(ZhpcError, ValueError):
    """A message that cannot be sent as built: a non-finite or absurd delay, a bad payload."""


def check_headers(headers: Any) -> None:
    """Refuse headers that would not arrive intact on every transport.

    The rule is the same for every broker, so a service behaves alike on the
    embedded broker and on RabbitMQ: keys are strings of at most 255 UTF-8
    bytes; values are str, bytes, bool, None, 64-bit int, or lists and dicts
    of those. Floats are refused: pika cannot encode them, and a float that
    silently became a string or a decimal would not be what was sent.
    """
    if not isinstance(headers, dict):
        raise InvalidHeaders(f"headers must be a dict, not {type(headers).__name__}")
    _check_table(headers, "", 0)


def _check_table(table: dict[Any, Any], path: str, depth: int) -> None:
    for key, value in table.items():
        # The usual case first, without a call: ASCII is UTF-8 with one byte a character.
        if not (type(key) is str and key.isascii() and len(key) <= MAX_SHORT_STRING):
            _check_key(key, path)
        kind = type(value)
        if depth <= _MAX_HEADER_DEPTH and (
            value is None or kind is bool or (kind is str and value.isascii())
        ):
            continue
        _check_value(value, f"{path}.{key}" if path else key, depth)


def _check_key(key: Any, path: str) -> None:
    if not isinstance(key, str):
        raise InvalidHeaders(f"header key {key!r}{_at(path)} is not a string")
    if len(_utf8(key, path or key)) > MAX_SHORT_STRING:
        raise InvalidHeaders(
            f"header key {key[:40]!r}...{_at(path)} is longer than {MAX_SHORT_STRING} bytes"
        )


def _check_value(value: Any, path: str, depth: int) -> None:
    if depth > _MAX_HEADER_DEPTH:
        raise InvalidHeaders(f"header {path!r} is nested more than {_MAX_HEADER_DEPTH} deep")
    if value is None or isinstance(value, bytes | bool):
        return
    if isinstance(value, str):
        _utf8(value, path)
        return
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise InvalidHeaders(f"header {path!r}: integer does not fit in 64 bits")
        return
    if isinstance(value, dict):
        _check_table(value, path, depth + 1)
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_value(item, f"{path}[{index}]", depth + 1)
        return
    if isinstance(value, float):
        raise InvalidHeaders(
            f"header {path!r}: float values cannot be sent as headers (AMQP clients "
            "cannot encode them); send the number in the payload or as a string"
        )
    raise InvalidHeaders(f"header {path!r}: values of type {type(value).__name__} cannot be sent")


def _utf8(text: str, path: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidHeaders(f"header {path!r} is not valid UTF-8 text") from None


def _at(path: str) -> str:
    return f" (in {path!r})" if path else ""


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

    def __post_init__(self) -> None:
        if self.headers:
            check_headers(self.headers)
        for name in ("delay", "expiration"):
            seconds = getattr(self, name)
            if seconds is not None and not (
                isinstance(seconds, int | float)
                and math.isfinite(seconds)
                and 0 <= seconds <= MAX_DELAY
            ):
                raise InvalidMessage(
                    f"{name} must be a number of seconds from 0 to {MAX_DELAY:g}, not {seconds!r}"
                )

    @classmethod
    def json(
        cls, destination: str, payload: Any, kind: DestinationKind = "queue", **kwargs: Any
    ) -> Outgoing:
        """Build an Outgoing with ``payload`` encoded as UTF-8 JSON."""
        try:
            body = strictjson.dumps(payload, separators=(",", ":")).encode("utf-8")
        except ValueError as exc:
            raise InvalidMessage(f"payload cannot be sent as JSON: {exc}") from None
        return cls(destination=destination, body=body, kind=kind, **kwargs)


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
            self._parsed = strictjson.loads_utf8(self.body)
        except UnicodeDecodeError as exc:
            self._error = f"body is not UTF-8: {exc.reason} at byte {exc.start}"
        except (ValueError, RecursionError) as exc:
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

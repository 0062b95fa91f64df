"""What zhpc's messages and queues look like on STOMP to ActiveMQ, without threads or I/O.

Destinations are those of python-workflows' StompTransport: a work queue ``Q`` is
``/queue/Q``, a broadcast topic ``T`` is ``/topic/T``. zhpc's dead-letter queue
``dlq.Q`` is ActiveMQ's individual DLQ of ``Q``, ``/queue/ActiveMQ.DLQ.Queue.Q``, so
what the broker's redelivery policy dead-letters (a workflows service's NACKs) and
what zhpc dead-letters land in the same queue.

STOMP headers are text. zhpc's structured headers (ints, lists, dicts, booleans)
travel as JSON and bytes as base64, and so does text STOMP cannot frame (a NUL byte);
``zhpc-json`` and ``zhpc-bytes`` list the keys
to decode, so a workflows client sees plain text and zhpc gets back exactly what
was sent (bytes nested inside a list or dict come back as text).
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any
from urllib.parse import unquote, urlsplit

from zhpc.errors import ConfigError, TransportError
from zhpc.message import MESSAGE_ID_HEADER, Message, Outgoing
from zhpc.transport.accounting import DLQ_PREFIX, is_dead_letter_queue, is_retry_lane
from zhpc.transport.stomp.handles import Delivery

#: ActiveMQ's prefix for a queue's individual dead-letter queue.
ACTIVEMQ_DLQ_PREFIX = "ActiveMQ.DLQ.Queue."
#: Keys of headers sent as JSON (comma-separated).
JSON_KEYS_HEADER = "zhpc-json"
#: Keys of bytes headers, sent as base64 (comma-separated).
BYTES_KEYS_HEADER = "zhpc-bytes"
#: Deliveries of a retry-lane message before this copy was made (zhpc's own count:
#: ActiveMQ tells a STOMP client only *whether* a message was redelivered).
DELIVERIES_HEADER = "zhpc-deliveries"
#: The delivery limit of the queue a lane message belongs to.
LIMIT_HEADER = "zhpc-delivery-limit"
#: ActiveMQ's scheduler: deliver this many milliseconds later.
SCHEDULED_DELAY_HEADER = "AMQ_SCHEDULED_DELAY"
#: Headers the broker or STOMP sets on a delivery; never part of Message.headers.
FRAME_HEADERS = frozenset(
    {
        "message-id",
        "destination",
        "subscription",
        "ack",
        "redelivered",
        "priority",
        "timestamp",
        "expires",
        "persistent",
        "content-length",
        "content-type",
        "receipt",
        "transformation",
        "scheduledJobId",
        "original-destination",
        "reply-to",
        "type",
        "correlation-id",
        "JMSXUserID",
        "originalExpiration",
        SCHEDULED_DELAY_HEADER,
        "AMQ_SCHEDULED_PERIOD",
        "AMQ_SCHEDULED_REPEAT",
        JSON_KEYS_HEADER,
        BYTES_KEYS_HEADER,
        DELIVERIES_HEADER,
        LIMIT_HEADER,
    }
)


def queue_destination(name: str) -> str:
    """The STOMP destination of a zhpc queue name."""
    if is_dead_letter_queue(name):
        return "/queue/" + ACTIVEMQ_DLQ_PREFIX + name[len(DLQ_PREFIX) :]
    return "/queue/" + name


def wire_queue_name(name: str) -> str:
    """The ActiveMQ queue name of a zhpc queue name (for statistics)."""
    return queue_destination(name)[len("/queue/") :]


def zhpc_queue_name(destination: str) -> str:
    """The zhpc queue name of a STOMP queue destination (the inverse)."""
    name = destination.removeprefix("/queue/")
    if name.startswith(ACTIVEMQ_DLQ_PREFIX):
        return DLQ_PREFIX + name[len(ACTIVEMQ_DLQ_PREFIX) :]
    return name


def topic_destination(name: str) -> str:
    return "/topic/" + name


def check_name(name: str) -> None:
    if not name or any(c in name for c in "\n\r\0/*>") or name.strip() != name:
        raise TransportError(f"{name!r} cannot be an ActiveMQ destination name")


def encode_headers(headers: dict[str, Any]) -> dict[str, str]:
    """zhpc headers as STOMP text headers (JSON for anything that is not text)."""
    wire: dict[str, str] = {}
    as_json: list[str] = []
    as_bytes: list[str] = []
    for key, value in headers.items():
        if key in FRAME_HEADERS or not _framable(key) or any(c in key for c in _KEY_BREAKERS):
            raise TransportError(f"header {key!r} cannot be sent over STOMP")
        if isinstance(value, str) and _framable(value):
            wire[key] = value
        elif isinstance(value, bytes):
            wire[key] = base64.b64encode(value).decode("ascii")
            as_bytes.append(key)
        else:
            wire[key] = json.dumps(_jsonable(value), separators=(",", ":"))
            as_json.append(key)
    if as_json:
        wire[JSON_KEYS_HEADER] = ",".join(as_json)
    if as_bytes:
        wire[BYTES_KEYS_HEADER] = ",".join(as_bytes)
    return wire


#: stomp.py escapes none of these in a header key; ActiveMQ would split, refuse or
#: unescape it (``,`` separates the keys of ``zhpc-json``).
_KEY_BREAKERS = ":\n\r\\,"


def _framable(text: str) -> bool:
    """Whether STOMP carries this text as it is: a NUL ends a frame (ActiveMQ keeps it
    inside a header and stomp.py then cuts the delivered frame there), and a header is
    UTF-8. Other text travels as JSON, whose ASCII form escapes both."""
    if "\0" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):  # nested bytes arrive as text (top-level ones as bytes)
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def decode_headers(frame_headers: dict[str, str]) -> dict[str, Any]:
    """The zhpc headers of a received frame (frame headers dropped, JSON decoded)."""
    as_json = set(filter(None, frame_headers.get(JSON_KEYS_HEADER, "").split(",")))
    as_bytes = set(filter(None, frame_headers.get(BYTES_KEYS_HEADER, "").split(",")))
    headers: dict[str, Any] = {}
    for key, value in frame_headers.items():
        if key in FRAME_HEADERS:
            continue
        if key in as_bytes:
            try:
                headers[key] = base64.b64decode(value, validate=True)
                continue
            except ValueError:
                pass
        if key in as_json:
            try:
                headers[key] = json.loads(value)
                continue
            except ValueError:
                pass  # not ours after all: keep the text
        headers[key] = value
    return headers


def frame_message(
    queue_name: str, generation: int, frame: Any, broadcast: bool, fetch_sub: str = ""
) -> Message:
    """A received MESSAGE frame as zhpc's Message, its delivery count as far as known
    (ActiveMQ says only *whether* it was redelivered; a lane message carries its count)."""
    wire = frame.headers
    redelivered = wire.get("redelivered") == "true"
    before = int_header(wire, DELIVERIES_HEADER) or 0
    headers = decode_headers(wire)
    return Message(
        body=frame.body if isinstance(frame.body, bytes) else frame.body.encode(),
        headers=headers,
        queue=queue_name,
        delivery_count=1 + int(redelivered) if not is_retry_lane(queue_name) else before + 1,
        redelivered=redelivered or before > 0,
        message_id=str(headers.get(MESSAGE_ID_HEADER) or wire.get("message-id", "")),
        handle=Delivery(
            generation,
            wire.get("ack", ""),
            broadcast,
            dict(wire),
            fetch_sub,
            wire.get("subscription", ""),
        ),
    )


def with_death(headers: dict[str, Any], queue: str, count: int) -> dict[str, Any]:
    """The headers with a delivery-limit ``x-death`` record first, as RabbitMQ writes it."""
    found = headers.get("x-death")
    death = {"reason": "delivery_limit", "queue": queue, "count": count}
    headers["x-death"] = [death, *(found if isinstance(found, list) else [])]
    headers.setdefault("x-first-death-reason", "delivery_limit")
    headers.setdefault("x-first-death-queue", queue)
    return headers


def send_headers(out: Outgoing) -> dict[str, str]:
    """The frame headers of an outgoing message: persistence, id, delay, expiry."""
    if out.delay is not None and out.expiration is not None:
        raise TransportError("a message cannot have both a delay and an expiration")
    headers = dict(out.headers)
    headers.setdefault(MESSAGE_ID_HEADER, out.message_id)
    wire = encode_headers(headers)
    wire["persistent"] = "true" if out.persistent else "false"
    if out.delay:
        wire[SCHEDULED_DELAY_HEADER] = str(round(out.delay * 1000))
    if out.expiration is not None:
        wire["expires"] = str(round((time.time() + out.expiration) * 1000))
    return wire


def int_header(headers: dict[str, str], key: str) -> int | None:
    try:
        return int(headers[key])
    except (KeyError, ValueError):
        return None


def server(url: str) -> tuple[str, int, str | None, str | None, bool]:
    """Host, port, user, password and whether TLS is used, from a ``stomp[+ssl]://`` URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("stomp", "stomp+ssl"):
        raise ConfigError(f"not a STOMP URL: {parts.scheme}://…")
    try:
        port = parts.port or 61613
    except ValueError:
        raise ConfigError("the STOMP URL has an invalid port") from None
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return parts.hostname or "localhost", port, user, password, parts.scheme == "stomp+ssl"

"""How zhpc's messages and queues look on the AMQP wire: pure helpers, no threads, no I/O.

Properties of published and republished messages, the arguments of work,
dead-letter and holding queues, what a delivery's headers say, connection
parameters (TLS), and the checks and one-line descriptions used on both sides
of the transport.
"""

from __future__ import annotations

import ssl
import struct
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pika
import pika.exceptions
import pika.spec

from zhpc.errors import TransportError
from zhpc.message import MAX_SHORT_STRING, MESSAGE_ID_HEADER, Outgoing

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.config import TLSConfig

#: Prefix of the holding queues that implement delays (TTL + dead-letter to the target).
DELAY_QUEUE_PREFIX = "zhpc.delay"
NOT_FOUND = 404
PRECONDITION_FAILED = 406
#: What pika raises while marshalling a publish that it cannot encode (nothing written).
ENCODE_ERRORS = (
    pika.exceptions.UnsupportedAMQPFieldException,
    pika.exceptions.ShortStringTooLong,
    struct.error,
    TypeError,
    ValueError,
    UnicodeError,
)


# -- messages -------------------------------------------------------------------------------------
def message_properties(out: Outgoing) -> pika.spec.BasicProperties:
    """The properties of a new message: its headers plus zhpc's message id, persistence, TTL."""
    headers = dict(out.headers)
    headers.setdefault(MESSAGE_ID_HEADER, out.message_id)
    props = pika.BasicProperties(
        headers=headers,
        delivery_mode=2 if out.persistent else 1,
        message_id=out.message_id,
    )
    if out.expiration is not None:
        props.expiration = str(max(0, round(out.expiration * 1000)))
    return props


def republish_properties(
    old: pika.spec.BasicProperties, headers: dict[str, Any]
) -> pika.spec.BasicProperties:
    """A received message's properties for its copy, with ``headers`` instead of its own."""
    return pika.BasicProperties(
        content_type=old.content_type,
        content_encoding=old.content_encoding,
        headers=headers,
        delivery_mode=old.delivery_mode or 2,
        priority=old.priority,
        correlation_id=old.correlation_id,
        reply_to=old.reply_to,
        message_id=old.message_id,
        timestamp=old.timestamp,
        type=old.type,
    )


def encodable(value: Any) -> Any:
    """A received header value as pika can send it again: floats (which other clients
    send and pika decodes, but cannot encode) become their decimal text."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return {key: encodable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [encodable(item) for item in value]
    return value


def delivery_count(headers: dict[str, Any], redelivered: bool) -> int:
    """How often a message was delivered, this time included (quorum queues count exactly)."""
    count_header = headers.get("x-delivery-count")
    if isinstance(count_header, int):
        return count_header + 1
    return 2 if redelivered else 1


def received_message_id(headers: dict[str, Any], props: pika.spec.BasicProperties) -> str | None:
    """zhpc's message id of a delivery, else the AMQP message id (other senders)."""
    message_id = headers.get(MESSAGE_ID_HEADER) or props.message_id
    if isinstance(message_id, bytes):
        message_id = message_id.decode("utf-8", "replace")
    return str(message_id) if message_id is not None else None


def check_name(kind: str, name: str) -> None:
    """Refuse a name the wire cannot carry before anything is sent or declared."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise TransportError(f"{kind} {name[:60]!r} is not valid UTF-8") from None
    if size > MAX_SHORT_STRING:
        raise TransportError(
            f"{kind} {name[:60]!r}... is {size} bytes long; RabbitMQ allows {MAX_SHORT_STRING}"
        )


# -- queues ---------------------------------------------------------------------------------------
def dlq_arguments() -> dict[str, Any]:
    """A dead-letter queue: a plain quorum queue."""
    return {"x-queue-type": "quorum"}


def work_queue_arguments(target: str, delivery_limit: int) -> dict[str, Any]:
    """Quorum, dead-lettering to ``target`` once returned more than ``delivery_limit`` times.

    A work queue has limit 0 and its retry lane as target; the lane has the
    delivery limit less one and the dead-letter queue (see accounting).
    """
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": delivery_limit,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": target,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def delay_queue_name(exchange: str, routing_key: str, delay_ms: int) -> str:
    """The holding queue for messages to ``exchange``/``routing_key`` delayed by ``delay_ms``.

    ``<ms>ms``: holding queues of zhpc before 2026-12 had ``x-expires`` and the plain
    number; a new name avoids redeclaring those with other arguments.
    """
    return f"{DELAY_QUEUE_PREFIX}.{delay_ms}ms.{exchange or '-'}.{routing_key}"


def delay_queue_arguments(exchange: str, routing_key: str, delay_ms: int) -> dict[str, Any]:
    """A holding queue whose messages dead-letter to the target after ``delay_ms``.

    Durable and without ``x-expires``: RabbitMQ deletes an expiring queue with the
    messages still inside (one whose target was unroutable when its TTL ran out,
    which at-least-once dead-lettering keeps retrying). So holding queues stay,
    one per target and delay, empty between uses.
    """
    return {
        "x-queue-type": "quorum",
        "x-message-ttl": delay_ms,
        "x-dead-letter-exchange": exchange,
        "x-dead-letter-routing-key": routing_key,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


# -- connecting -----------------------------------------------------------------------------------
def connection_parameters(
    url: str, heartbeat: int, tls: TLSConfig | None, blocked_timeout: float | None = None
) -> pika.URLParameters:
    """pika's parameters for one connection attempt (zhpc retries by itself).

    ``blocked_timeout``: pika drops a connection RabbitMQ blocks (alarm) that long.
    """
    params = pika.URLParameters(url)
    params.heartbeat = heartbeat
    params.blocked_connection_timeout = blocked_timeout
    params.connection_attempts = 1
    params.client_properties = {"connection_name": "zhpc"}
    if urlsplit(url).scheme == "amqps":
        params.ssl_options = pika.SSLOptions(ssl_context(tls), params.host)
    return params


def ssl_context(tls: TLSConfig | None) -> ssl.SSLContext:
    """The TLS context for ``amqps://``: the system's CAs unless ``tls`` names others."""
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls and tls.ca_file else None)
    if tls is not None:
        if tls.cert_file is not None:
            key = str(tls.key_file) if tls.key_file else None
            context.load_cert_chain(str(tls.cert_file), key)
        if not tls.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    return context


def mask(url: str) -> str:
    """``url`` without its password, for logs and errors."""
    from zhpc.config import mask_url  # only when no display URL was given: config is heavy

    return mask_url(url)


def describe(error: BaseException) -> str:
    """One line for a pika error, unwrapping pika's nested connection-workflow errors."""
    seen = 0
    while seen < 5:
        seen += 1
        inner = getattr(error, "exceptions", None)
        if isinstance(inner, list | tuple) and inner and isinstance(inner[-1], BaseException):
            error = inner[-1]
        elif isinstance(getattr(error, "exception", None), BaseException):
            error = error.exception  # type: ignore[attr-defined]
        elif error.args and isinstance(error.args[0], BaseException):
            error = error.args[0]
        else:
            break
    if isinstance(error, pika.exceptions.ConnectionClosed | pika.exceptions.ChannelClosed):
        return f"({error.reply_code}) {error.reply_text}"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__

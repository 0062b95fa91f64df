"""One quarantined message: what is kept about a dead-lettered message, read as safely as possible.

:meth:`QuarantineEntry.from_message` never raises, whatever the message: a body that
is not JSON, not UTF-8 or very large is kept as it is (only its summary says less);
headers of any type (pika's datetimes and bytes, the embedded broker's floats) are
kept in a JSON-safe form (:func:`encode_value`) that :func:`decode_value` reverses.

Headers read from a dead-lettered copy (all optional):

* ``zhpc-dead-letter-queue`` / ``-reason`` / ``-count``: zhpc moved it (malformed...);
* ``x-death``, ``x-first-death-queue``: the broker's delivery limit moved it;
* ``zhpc-failures``: one object per real failure ``{host, pid, job_id, error,
  exception, time}``; ``zhpc-last-error`` / ``zhpc-last-exception``.

A queue named ``retry.X`` (a retry lane) or ``dlq.X`` maps back to the work queue ``X``.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import hashlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from zhpc.message import MESSAGE_ID_HEADER, Message
from zhpc.transport.base import (
    DEAD_LETTER_COUNT_HEADER,
    DEAD_LETTER_QUEUE_HEADER,
    DeathRecord,
    death_record,
)

FAILURES_HEADER = "zhpc-failures"
LAST_ERROR_HEADER = "zhpc-last-error"
LAST_EXCEPTION_HEADER = "zhpc-last-exception"
#: Set on a copy put back by ``zhpc dlq reinject``: how often it was reinjected.
REINJECTED_HEADER = "zhpc-reinjected"
#: Headers that change while the same copy waits in its queue (not part of its fingerprint).
_VOLATILE_HEADERS = ("x-delivery-count", "zhpc-handbacks")
#: Bodies larger than this are kept but not parsed for the summary.
PARSE_LIMIT = 16 * 1024 * 1024
SUMMARY_LIMIT = 200
_MAX_DEPTH = 32
_TAGS = ("$bytes", "$datetime", "$decimal", "$float", "$repr", "$dict")


# -- JSON-safe values --------------------------------------------------------------------------
def encode_value(value: Any, depth: int = 0) -> Any:
    """``value`` as plain JSON data; types JSON lacks become one-key ``{"$tag": text}`` objects."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)  # pika's long subclass
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, datetime.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, decimal.Decimal):
        return {"$decimal": str(value)}
    if depth >= _MAX_DEPTH:
        return {"$repr": repr(value)[:1000]}
    if isinstance(value, Mapping):
        table = {str(k): encode_value(v, depth + 1) for k, v in value.items()}
        return {"$dict": table} if len(table) == 1 and next(iter(table)) in _TAGS else table
    if isinstance(value, list | tuple):
        return [encode_value(item, depth + 1) for item in value]
    return {"$repr": repr(value)[:1000]}


def decode_value(value: Any) -> Any:
    """The inverse of :func:`encode_value` (a ``$repr`` stays the text it was)."""
    if isinstance(value, list):
        return [decode_value(item) for item in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((tag, inner),) = value.items()
        try:
            if tag == "$bytes":
                return base64.b64decode(inner)
            if tag == "$datetime":
                return datetime.datetime.fromisoformat(inner)
            if tag == "$decimal":
                return decimal.Decimal(inner)
            if tag == "$float":
                return float(inner)
            if tag == "$repr":
                return str(inner)
            if tag == "$dict":
                return {k: decode_value(v) for k, v in inner.items()}
        except (ValueError, TypeError, AttributeError, decimal.InvalidOperation):
            return value
    return {k: decode_value(v) for k, v in value.items()}


def text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def iso(epoch: float | None) -> str | None:
    """UTC ISO 8601 with milliseconds, the form every ``zhpc dlq`` output uses."""
    if epoch is None:
        return None
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def epoch_of(value: Any) -> float | None:
    """A timestamp in any form a header uses (epoch number, datetime, ISO text), or None."""
    value = decode_value(value)
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, datetime.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
        return moment.timestamp()
    if isinstance(value, str | bytes):
        try:
            return epoch_of(datetime.datetime.fromisoformat(text(value).replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


def work_queue(name: str) -> str:
    """The work queue behind a dead-letter queue or retry lane (``dlq.retry.X`` -> ``X``)."""
    while True:
        for prefix in ("dlq.", "retry."):
            if name.startswith(prefix) and len(name) > len(prefix):
                name = name[len(prefix) :]
                break
        else:
            return name


# -- the entry ---------------------------------------------------------------------------------
@dataclass
class QuarantineEntry:
    """A dead-lettered message as stored; ``id`` is its message id (the dedupe key)."""

    id: str
    queue: str  #: the work queue it failed in
    dlq: str  #: the dead-letter queue it was taken from
    reason: str  #: e.g. delivery_limit, malformed, rejected
    body: bytes
    headers: dict[str, Any]  #: JSON-safe (see encode_value)
    recipe_id: str | None = None
    step: int | None = None
    error: str | None = None
    exception: str | None = None
    deliveries: int = 0
    summary: str = ""
    history: list[Any] = field(default_factory=list)  #: the x-death entries, JSON-safe
    failures: list[Any] = field(default_factory=list)  #: zhpc-failures, JSON-safe
    quarantined_at: float = 0.0
    updated_at: float = 0.0
    copies: int = 1  #: distinct dead-lettered copies filed under this id
    fingerprint: str = ""
    version: int = 0

    @classmethod
    def from_message(cls, message: Message, *, now: float | None = None) -> QuarantineEntry:
        """Everything worth keeping about a message read from a dead-letter queue."""
        now = time.time() if now is None else now
        raw = message.headers if isinstance(message.headers, dict) else {}
        headers = encode_value(raw)
        if not isinstance(headers, dict):  # pragma: no cover - raw is a dict
            headers = {}
        body = bytes(message.body or b"")
        fingerprint = _fingerprint(body, headers)
        record = _death(message)
        parsed = _parse(body)
        failures = [f for f in _list(headers.get(FAILURES_HEADER)) if isinstance(f, dict)]
        last = failures[-1] if failures else {}
        error = text(raw.get(LAST_ERROR_HEADER)) or text(last.get("error"))
        if not error and record is not None and record.reason != "delivery_limit":
            error = record.detail.removeprefix(f"{record.reason}:").strip()
        exception = text(raw.get(LAST_EXCEPTION_HEADER)) or text(last.get("exception"))
        deliveries = max(
            _int(raw.get(DEAD_LETTER_COUNT_HEADER)), len(failures), record.count if record else 0
        )
        message_id = message.message_id or text(raw.get(MESSAGE_ID_HEADER))
        return cls(
            id=message_id or f"sha-{fingerprint[:32]}",
            queue=_original_queue(raw, message.queue, record.queue if record else ""),
            dlq=message.queue,
            reason=(record.reason if record else "") or "unknown",
            body=body,
            headers=headers,
            recipe_id=_recipe_id(parsed),
            step=_step(parsed),
            error=error or None,
            exception=exception or None,
            deliveries=deliveries,
            summary=_summary(body, parsed),
            history=[d for d in _list(headers.get("x-death")) if isinstance(d, dict)],
            failures=failures,
            quarantined_at=now,
            updated_at=now,
            fingerprint=fingerprint,
        )

    # -- views ------------------------------------------------------------------------------
    def summary_record(self) -> dict[str, Any]:
        """The short form: ``zhpc dlq list --json`` and the ``zhpc.quarantine`` notification."""
        return {
            "id": self.id,
            "queue": self.queue,
            "dlq": self.dlq,
            "recipe_id": self.recipe_id,
            "step": self.step,
            "reason": self.reason,
            "error": self.error,
            "exception": self.exception,
            "deliveries": self.deliveries,
            "quarantined_at": iso(self.quarantined_at),
            "summary": self.summary,
        }

    def to_record(self) -> dict[str, Any]:
        """Everything, JSON-ready: an export line, ``show --json``, a purge file."""
        record = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "version"}
        record["body"] = base64.b64encode(self.body).decode("ascii")
        record["quarantined_at"] = iso(self.quarantined_at)
        record["updated_at"] = iso(self.updated_at)
        return record

    @classmethod
    def from_record(cls, data: Any) -> QuarantineEntry:
        """An entry from :meth:`to_record` output; ValueError says what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"an entry must be a JSON object, not {type(data).__name__}")
        known = {f.name for f in fields(cls)} - {"version"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown key(s): {', '.join(unknown)}")
        for key in ("id", "queue", "dlq", "reason", "body"):
            if not isinstance(data.get(key), str) or (not data[key] and key != "body"):
                raise ValueError(f"{key!r} must be a non-empty string")
        values = dict(data)
        try:
            values["body"] = base64.b64decode(data["body"], validate=True)
        except ValueError:
            raise ValueError("'body' is not base64") from None
        for key in ("quarantined_at", "updated_at"):
            stamp = epoch_of(data.get(key)) if data.get(key) is not None else time.time()
            if stamp is None:
                raise ValueError(f"{key!r} is not a time: {data.get(key)!r:.40}")
            values[key] = stamp
        checks = {
            "headers": (dict, "object"),
            "history": (list, "array"),
            "failures": (list, "array"),
        }
        for key, (kind, name) in checks.items():
            if key in data and not isinstance(data[key], kind):
                raise ValueError(f"{key!r} must be a JSON {name}")
        for key in ("step", "deliveries", "copies"):
            if data.get(key) is not None and (
                isinstance(data[key], bool) or not isinstance(data[key], int)
            ):
                raise ValueError(f"{key!r} must be an integer")
        for key in ("recipe_id", "error", "exception", "summary", "fingerprint"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise ValueError(f"{key!r} must be a string")
        values.setdefault("headers", {})
        if not values.get("fingerprint"):
            values["fingerprint"] = _fingerprint(values["body"], values["headers"])
        for key in ("deliveries", "copies"):
            if values.get(key) is None:
                values.pop(key, None)
        return cls(**values)

    def original_headers(self) -> dict[str, Any]:
        """The headers as the broker delivered them (types restored)."""
        decoded = decode_value(self.headers)
        return decoded if isinstance(decoded, dict) else {}

    def body_json(self) -> Any:
        """The body decoded as JSON, or None if it is not UTF-8 JSON."""
        return _parse(self.body)

    def timeline(self) -> list[dict[str, Any]]:
        """What happened to the message, oldest first: deaths, failures, quarantine."""
        events: list[tuple[float, int, dict[str, Any]]] = []
        for order, failure in enumerate(self.failures):
            at = epoch_of(failure.get("time"))
            where = ", ".join(
                f"{k} {failure[k]}"
                for k in ("host", "pid", "job_id")
                if failure.get(k) not in (None, "")
            )
            what = text(failure.get("exception")) or "failure"
            detail = f"{what}: {text(failure.get('error'))}" if failure.get("error") else what
            events.append(
                (
                    at or 0.0,
                    order,
                    {"time": iso(at), "event": "failed", "where": where, "detail": detail},
                )
            )
        for order, death in enumerate(reversed(self.history)):  # x-death is newest first
            at = epoch_of(death.get("time"))
            detail = f"{text(death.get('reason'))} (count {text(death.get('count'))})"
            events.append(
                (
                    at or 0.0,
                    100 + order,
                    {
                        "time": iso(at),
                        "event": "dead-lettered",
                        "where": text(death.get("queue")),
                        "detail": detail,
                    },
                )
            )
        if not self.history:
            events.append(
                (
                    self.quarantined_at - 1e-6,
                    200,
                    {
                        "time": None,
                        "event": "dead-lettered",
                        "where": self.queue,
                        "detail": self.error or self.reason,
                    },
                )
            )
        events.append(
            (
                self.quarantined_at,
                300,
                {
                    "time": iso(self.quarantined_at),
                    "event": "quarantined",
                    "where": self.dlq,
                    "detail": f"{self.copies} copy(ies)",
                },
            )
        )
        return [event for _at, _order, event in sorted(events, key=lambda e: (e[0], e[1]))]


# -- reading a message -------------------------------------------------------------------------
def _fingerprint(body: bytes, headers: dict[str, Any]) -> str:
    """Identifies one dead-lettered copy, whichever delivery of it we see."""
    stable = {k: v for k, v in headers.items() if k not in _VOLATILE_HEADERS}
    digest = hashlib.sha256(body)
    digest.update(json.dumps(stable, sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()


def _death(message: Message) -> DeathRecord | None:
    try:
        return death_record(message)
    except (ValueError, TypeError, AttributeError):  # a foreign x-death of odd shape
        return None


def _parse(body: bytes) -> Any:
    if len(body) > PARSE_LIMIT:
        return None
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def _original_queue(headers: dict[str, Any], dlq: str, death_queue: str) -> str:
    for candidate in (
        headers.get(DEAD_LETTER_QUEUE_HEADER),
        headers.get("x-first-death-queue"),
        death_queue,
    ):
        name = text(candidate)
        if name:
            return work_queue(name)
    return work_queue(dlq)


def _recipe_id(body: Any) -> str | None:
    environment = body.get("environment") if isinstance(body, dict) else None
    value = environment.get("ID") if isinstance(environment, dict) else None
    return None if value is None else str(value)[:200]


def _step(body: Any) -> int | None:
    pointer = body.get("recipe-pointer") if isinstance(body, dict) else None
    if isinstance(pointer, str) and pointer.isdigit():
        pointer = int(pointer)
    return pointer if isinstance(pointer, int) and not isinstance(pointer, bool) else None


def _summary(body: bytes, parsed: Any) -> str:
    if not body:
        return "(empty body)"
    if parsed is None:
        if len(body) > PARSE_LIMIT:
            return f"{len(body)} bytes (too large to inspect)"
        try:
            return _clip(body.decode("utf-8"), f" (not JSON, {len(body)} bytes)")
        except UnicodeDecodeError:
            return f"{len(body)} bytes of binary data: {body[:16].hex()}" + (
                "..." if len(body) > 16 else ""
            )
    shown = parsed.get("payload") if isinstance(parsed, dict) and "recipe" in parsed else parsed
    return _clip(json.dumps(shown, separators=(",", ":"), default=str), "")


def _clip(value: str, suffix: str) -> str:
    value = " ".join(value.split())
    if len(value) > SUMMARY_LIMIT:
        value = value[: SUMMARY_LIMIT - 3] + "..."
    return value + suffix


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _int(value: Any) -> int:
    try:
        return max(int(value), 0) if value is not None and not isinstance(value, bool) else 0
    except (TypeError, ValueError):
        return 0

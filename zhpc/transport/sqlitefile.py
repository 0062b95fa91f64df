"""The embedded broker's file: its tables, how a file an older zhpc made is brought up
to date, and how a message's headers are stored in its row (JSON, bytes as base64).

Kept apart from :mod:`zhpc.transport.embedded`, which is how the transport uses the
file: this is what is in it, the part another version of zhpc must read the same.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from contextlib import suppress
from typing import Any

from zhpc.errors import TransportError

__all__ = ["SCHEMA_VERSION", "decode_headers", "encode_headers", "prepare"]

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,
    delivery_limit INTEGER,
    topic TEXT,
    owner INTEGER,
    dead_letter_to TEXT
);
CREATE INDEX IF NOT EXISTS queues_topic ON queues(topic) WHERE topic IS NOT NULL;
CREATE INDEX IF NOT EXISTS queues_owner ON queues(owner) WHERE owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    headers TEXT NOT NULL,
    message_id TEXT,
    ready_at REAL NOT NULL DEFAULT 0,
    expires_at REAL,
    deliveries INTEGER NOT NULL DEFAULT 0,
    consumer INTEGER
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages(queue, id) WHERE consumer IS NULL;
CREATE INDEX IF NOT EXISTS messages_leased ON messages(consumer) WHERE consumer IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_expiring ON messages(queue, expires_at)
    WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS consumers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    pid_start TEXT NOT NULL,
    heartbeat REAL NOT NULL,
    lease_timeout REAL
);
CREATE TABLE IF NOT EXISTS subscriptions (
    consumer INTEGER NOT NULL,
    queue TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS subscriptions_queue ON subscriptions(queue);
CREATE TABLE IF NOT EXISTS bindings (
    exchange TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    queue TEXT NOT NULL,
    PRIMARY KEY (exchange, routing_key, queue)
);
"""


def prepare(db: sqlite3.Connection) -> None:
    """Create what is missing and migrate what is old (idempotent, safe to race)."""
    db.executescript(_SCHEMA)
    _migrate(db)


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a file made by an older zhpc up to this schema (idempotent)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(queues)")}
    if "dead_letter_to" not in columns:
        with suppress(sqlite3.OperationalError):  # another process just added it
            db.execute("ALTER TABLE queues ADD COLUMN dead_letter_to TEXT")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def _encode_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return {"__bytes__": base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"header value of type {type(value).__name__} cannot be stored")


def _decode_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and "__bytes__" in obj:
        return base64.b64decode(obj["__bytes__"])
    return obj


def encode_headers(headers: dict[str, Any]) -> str:
    if not headers:
        return "{}"
    try:
        return json.dumps(headers, default=_encode_default, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TransportError(f"message headers cannot be stored: {exc}") from None


def decode_headers(text: str) -> dict[str, Any]:
    if text == "{}":
        return {}
    return json.loads(text, object_hook=_decode_hook)

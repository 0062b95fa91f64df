"""Where the recorder keeps step events: one table, on SQLite (default) or PostgreSQL.

The connection handling is the quarantine store's (:func:`zhpc.quarantine.connect_store`
and its public ``connect``/``write``/``query``): the same SQLite pragmas, the same
PostgreSQL reconnect-before-COMMIT rule, statements written once with ``?``
placeholders. The quarantine tables are not touched: only the connection is borrowed.

Events are written in batches (one broadcast of an emitter is one transaction)
and deleted after ``events.retention_days``. Nothing here needs to be durable
beyond that: losing the newest events in a crash is acceptable (they are
observations, not work).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.config import EventsConfig
    from zhpc.quarantine.store import QuarantineStore

TABLE = "zhpc_events"
#: Event fields with a column of their own; everything else goes to ``extra`` (JSON).
COLUMNS = (
    "time",
    "event",
    "recipe_id",
    "step",
    "message_id",
    "service",
    "queue",
    "host",
    "pid",
    "job_id",
    "slurm_job_id",
    "array_task",
    "delivery",
    "duration",
    "exception",
    "error",
    "dlq",
    "exit_code",
    "end_reason",
)
_INTEGER = {"step", "pid", "array_task", "delivery", "exit_code"}
_REAL = {"time", "duration"}

_SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} ("
    + ", ".join(
        f"{c} {'BIGINT' if c in _INTEGER else 'DOUBLE PRECISION' if c in _REAL else 'TEXT'}"
        + (" NOT NULL" if c in ("time", "event") else "")
        for c in COLUMNS
    )
    + ", extra TEXT NOT NULL)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_recipe ON {TABLE}(recipe_id, time)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_time ON {TABLE}(time)",
)
_INSERT = (
    f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}, extra) "
    f"VALUES ({', '.join('?' for _ in COLUMNS)}, ?)"
)


class EventStore:
    """Step events keyed by recipe id. Lifecycle: :func:`open_event_store` ... ``close``."""

    def __init__(self, db: QuarantineStore) -> None:
        self._db = db
        #: Where the store is, safe to print (no password).
        self.where = db.where

    def open(self) -> EventStore:
        self._db.connect()
        self._db.write(self._create_schema)
        return self

    def _create_schema(self, run: Any) -> None:
        for statement in _SCHEMA:
            run(statement, ())

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ------------------------------------------------------------------------
    def add(self, events: Iterable[dict[str, Any]], source: dict[str, Any] | None = None) -> int:
        """Store events (one transaction), each completed by ``source`` (the sender's fields);
        returns how many were stored."""
        rows = [_row({**(source or {}), **event}) for event in events if isinstance(event, dict)]
        rows = [row for row in rows if row is not None]
        if rows:

            def work(run: Any) -> None:
                for row in rows:
                    run(_INSERT, row)

            self._db.write(work)
        return len(rows)

    def expire(self, retention_days: float, now: float | None = None) -> int:
        """Delete events older than ``retention_days``; returns how many went."""
        before = (time.time() if now is None else now) - retention_days * 86400
        rows = self._db.write(
            lambda run: run(f"DELETE FROM {TABLE} WHERE time < ? RETURNING time", (before,))
        )
        return len(rows)

    # -- reading ------------------------------------------------------------------------
    def for_recipe(self, recipe_id: str) -> list[dict[str, Any]]:
        """Every event of one recipe, oldest first."""
        rows = self._db.query(
            f"SELECT {', '.join(COLUMNS)}, extra FROM {TABLE} WHERE recipe_id = ? ORDER BY time",
            (recipe_id,),
        )
        return [_event(row) for row in rows]

    def count(self) -> int:
        return int(self._db.query(f"SELECT COUNT(*) FROM {TABLE}")[0][0])


def _row(event: dict[str, Any]) -> list[Any] | None:
    if not isinstance(event.get("event"), str) or not isinstance(event.get("time"), int | float):
        return None
    values: list[Any] = []
    for column in COLUMNS:
        value = event.get(column)
        if value is not None:
            try:
                value = (
                    int(value)
                    if column in _INTEGER
                    else float(value)
                    if column in _REAL
                    else str(value)
                )
            except (TypeError, ValueError):
                value = None
        values.append(value)
    extra = {k: v for k, v in event.items() if k not in COLUMNS}
    values.append(json.dumps(extra, separators=(",", ":"), default=str))
    return values


def _event(row: Sequence[Any]) -> dict[str, Any]:
    event = dict(zip(COLUMNS, row[:-1], strict=True))
    event.update(json.loads(row[-1] or "{}"))
    return event


def event_store_url(config: EventsConfig | None = None) -> str:
    from zhpc.config import zhpc_home

    url = config.url if config is not None else ""
    return url or f"sqlite://{zhpc_home() / 'events.sqlite'}"


def open_event_store(config: EventsConfig | None = None) -> EventStore:
    """The event store the configuration names, opened (table created if missing)."""
    from zhpc.quarantine import connect_store

    password_file = config.password_file if config is not None else None
    return EventStore(connect_store(event_store_url(config), password_file, "events.url")).open()

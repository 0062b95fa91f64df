"""The quarantine store: one table, the same on SQLite (default) and PostgreSQL.

Why a database and not the broker: a dead-lettered message must stay put, be
searchable and survive broker resets, whatever its body. Schlockmeister writes,
``zhpc dlq`` reads and deletes, possibly at the same time from other hosts.

Rules the table enforces:

* One row per message id. :meth:`QuarantineStore.put` is an upsert: the same
  dead-lettered copy filed twice (Schlockmeister killed between its store commit
  and its ack) leaves one row; another copy with the same id updates the row and
  counts in ``copies``. ``quarantined_at`` is the first filing.
* Every change of a row bumps its ``version``; :meth:`delete` may require a
  version, so that ``zhpc dlq reinject``/``purge`` never delete a newer copy
  filed while they were publishing or exporting.
* ``notified`` says the ERROR line and the notification for this copy went out,
  so a redelivered copy is not reported twice.

Nothing expires: entries stay until purged. SQLite runs in WAL mode with
``synchronous=FULL``: once :meth:`put` returns, the entry survives a power loss,
which is what makes acking the dead-letter copy afterwards safe.
"""

from __future__ import annotations

import abc
import json
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from zhpc.errors import ZhpcError
from zhpc.quarantine.entry import QuarantineEntry

TABLE = "zhpc_quarantine"
BUSY_TIMEOUT = 30.0

_COLUMNS = (
    "id",
    "queue",
    "dlq",
    "reason",
    "recipe_id",
    "step",
    "error",
    "exception",
    "deliveries",
    "summary",
    "history",
    "failures",
    "headers",
    "body",
    "quarantined_at",
    "updated_at",
    "copies",
    "fingerprint",
    "version",
)
_JSON_COLUMNS = ("history", "failures", "headers")
#: Columns refreshed when another copy of a message is filed (quarantined_at stays the first).
_REFRESHED = tuple(
    c for c in _COLUMNS if c not in ("id", "quarantined_at", "copies", "fingerprint", "version")
)

_SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    dlq TEXT NOT NULL,
    reason TEXT NOT NULL,
    recipe_id TEXT,
    step BIGINT,
    error TEXT,
    exception TEXT,
    deliveries BIGINT NOT NULL,
    summary TEXT NOT NULL,
    history TEXT NOT NULL,
    failures TEXT NOT NULL,
    headers TEXT NOT NULL,
    body {{blob}} NOT NULL,
    quarantined_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    copies BIGINT NOT NULL,
    fingerprint TEXT NOT NULL,
    version BIGINT NOT NULL,
    notified BIGINT NOT NULL
)""",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_time ON {TABLE}(quarantined_at)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_queue ON {TABLE}(queue, quarantined_at)",
)

_VALUES = ", ".join("?" for _ in (*_COLUMNS, "notified"))
_PUT = (
    f"INSERT INTO {TABLE} ({', '.join(_COLUMNS)}, notified) VALUES ({_VALUES}) "
    "ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _REFRESHED)
    + f", copies = {TABLE}.copies + CASE WHEN {TABLE}.fingerprint = excluded.fingerprint "
    "THEN 0 ELSE 1 END"
    f", notified = CASE WHEN {TABLE}.fingerprint = excluded.fingerprint "
    f"THEN {TABLE}.notified ELSE 0 END"
    ", fingerprint = excluded.fingerprint"
    f", version = {TABLE}.version + 1 "
    "RETURNING version, notified, copies"
)
_RESTORE = (
    f"INSERT INTO {TABLE} ({', '.join(_COLUMNS)}, notified) VALUES ({_VALUES}) "
    "ON CONFLICT (id) DO NOTHING RETURNING id"
)
_SUMMARY_COLUMNS = tuple(c for c in _COLUMNS if c not in ("body", "headers"))

Run = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]
T = TypeVar("T")


class StoreError(ZhpcError):
    """The quarantine store cannot be opened, read or written."""


@dataclass(frozen=True, slots=True)
class Filed:
    """What :meth:`QuarantineStore.put` did."""

    version: int
    notified: bool  #: this very copy was reported before (a redelivery)
    copies: int

    @property
    def new(self) -> bool:
        return self.version == 1


class QuarantineStore(abc.ABC):
    """Entries keyed by message id. Lifecycle: :func:`zhpc.quarantine.open_store` ... ``close``."""

    #: The column type for the message body.
    blob_type = "BLOB"

    def __init__(self, where: str) -> None:
        #: Where the store is, safe to print (no password).
        self.where = where

    # -- the connection: one per backend; zhpc.eventstore keeps its table on it too --------
    @abc.abstractmethod
    def connect(self) -> None:
        """Open the connection; StoreError if that is impossible."""

    @abc.abstractmethod
    def write(self, work: Callable[[Run], T]) -> T:
        """``work(run)`` in one write transaction, committed; ``run(sql, params) -> rows``."""

    @abc.abstractmethod
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read-only statement (``?`` placeholders)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection (idempotent)."""

    # -- lifecycle --------------------------------------------------------------------------
    def open(self) -> QuarantineStore:
        """Connect and create the table if it is missing; returns self."""
        self.connect()
        self.write(self._create_schema)
        return self

    def _create_schema(self, run: Run) -> None:
        for statement in _SCHEMA:
            run(statement.replace("{blob}", self.blob_type), ())

    def __enter__(self) -> QuarantineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ----------------------------------------------------------------------------
    def put(self, entry: QuarantineEntry) -> Filed:
        """File a dead-lettered copy (insert or update); committed when this returns."""
        row = self._row(entry, notified=False)
        ((version, notified, copies),) = self.write(lambda run: run(_PUT, row))
        return Filed(int(version), bool(notified), int(copies))

    def restore(self, entry: QuarantineEntry) -> bool:
        """Insert an exported entry unless its id is already stored; True if inserted."""
        row = self._row(entry, notified=True)
        return bool(self.write(lambda run: run(_RESTORE, row)))

    def mark_notified(self, entry_id: str, version: int) -> None:
        self.write(
            lambda run: run(
                f"UPDATE {TABLE} SET notified = 1 WHERE id = ? AND version = ?", (entry_id, version)
            )
        )

    def delete(self, entry_id: str, version: int | None = None) -> bool:
        """Delete an entry (only at ``version``, if given); True if a row was deleted."""
        sql, params = f"DELETE FROM {TABLE} WHERE id = ?", [entry_id]
        if version is not None:
            sql, params = sql + " AND version = ?", [entry_id, version]
        return bool(self.write(lambda run: run(sql + " RETURNING id", params)))

    # -- reading ----------------------------------------------------------------------------
    def get(self, entry_id: str) -> QuarantineEntry | None:
        rows = self.query(f"SELECT {', '.join(_COLUMNS)} FROM {TABLE} WHERE id = ?", (entry_id,))
        return self._entry(_COLUMNS, rows[0]) if rows else None

    def resolve(self, entry_id: str) -> str:
        """The full id for ``entry_id`` or a unique prefix of one; ZhpcError otherwise."""
        if self.query(f"SELECT id FROM {TABLE} WHERE id = ?", (entry_id,)):
            return entry_id
        prefix = f"SELECT id FROM {TABLE} WHERE substr(id, 1, CAST(? AS INTEGER)) = ? "
        found = (
            [
                row[0]
                for row in self.query(prefix + "ORDER BY id LIMIT 3", (len(entry_id), entry_id))
            ]
            if len(entry_id) >= 4
            else []
        )
        if len(found) == 1:
            return str(found[0])
        if found:
            raise ZhpcError(
                f"id {entry_id!r} is ambiguous ({', '.join(found)}, ...); give more of it"
            )
        raise ZhpcError(f"no quarantined message with id {entry_id!r} in {self.where}")

    def entries(
        self,
        *,
        queue: str | None = None,
        since: float | None = None,
        before: float | None = None,
        full: bool = False,
    ) -> list[QuarantineEntry]:
        """Entries oldest first, optionally of one queue and in a time window.

        Without ``full`` the body and headers are left out (cheap listings).
        """
        columns = _COLUMNS if full else _SUMMARY_COLUMNS
        where, params = [], []
        for clause, value in (
            ("queue = ?", queue),
            ("quarantined_at >= ?", since),
            ("quarantined_at < ?", before),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        sql = f"SELECT {', '.join(columns)} FROM {TABLE}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self.query(sql + " ORDER BY quarantined_at, id", params)
        return [self._entry(columns, row) for row in rows]

    def count(self) -> int:
        return int(self.query(f"SELECT COUNT(*) FROM {TABLE}")[0][0])

    # -- rows -------------------------------------------------------------------------------
    def _row(self, entry: QuarantineEntry, *, notified: bool) -> list[Any]:
        values = []
        for column in _COLUMNS:
            value = getattr(entry, column)
            if column in _JSON_COLUMNS:
                value = json.dumps(value, separators=(",", ":"))
            elif column == "body":
                value = bytes(value)
            elif column == "version":
                value = 1
            values.append(value)
        values.append(1 if notified else 0)
        return values

    @staticmethod
    def _entry(columns: Sequence[str], row: Sequence[Any]) -> QuarantineEntry:
        values = dict(zip(columns, row, strict=True))
        for column in _JSON_COLUMNS:
            if column in values:
                values[column] = json.loads(values[column])
        values["body"] = bytes(values.get("body") or b"")
        values.setdefault("headers", {})
        return QuarantineEntry(**values)


class SQLiteStore(QuarantineStore):
    """The default store: one SQLite file (local disk only, like the embedded broker)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(str(path))
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None

    def connect(self) -> None:
        if self._db is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open quarantine store {self.path}: {exc}") from None
        self._db = db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"quarantine store {self.path} is not open")
        return self._db

    def write(self, work: Callable[[Run], T]) -> T:
        db = self._conn()

        def run(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
            return db.execute(sql, tuple(params)).fetchall()

        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"quarantine store {self.path}: {exc}") from None
        try:
            result = work(run)
            db.execute("COMMIT")
            return result
        except BaseException as exc:
            with suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"quarantine store {self.path}: {exc}") from None
            raise

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._conn().execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"quarantine store {self.path}: {exc}") from None

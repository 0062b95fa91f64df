"""The quarantine store on PostgreSQL (``quarantine: {url: postgresql://...}``), with psycopg 3.

Same table and statements as the SQLite store (:mod:`zhpc.quarantine.store`);
only the connection, the placeholders and the body's column type differ. A site
uses it when several hosts run Schlockmeister or ``zhpc dlq``, or when the
quarantine must live on a backed-up database server.

A connection that broke before a transaction's COMMIT (the server restarted,
the network dropped it while idle) is opened again and the transaction done once
more; nothing of the first try was committed. A failed COMMIT is not repeated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from zhpc.config import mask_url
from zhpc.quarantine.store import QuarantineStore, Run, StoreError, T

CONNECT_TIMEOUT = 10
#: Key of the advisory lock that serialises creating the table (two first starts at once).
_SCHEMA_LOCK = 0x7A687063  # "zhpc"


class PostgresStore(QuarantineStore):
    """Entries in table ``zhpc_quarantine`` of a PostgreSQL database."""

    blob_type = "BYTEA"

    def __init__(self, url: str, *, password: str | None = None) -> None:
        super().__init__(mask_url(url))
        self._url = url
        self._password = password
        self._conn: Any = None

    def connect(self) -> None:
        if self._conn is not None:
            return
        try:
            import psycopg
        except ImportError:
            raise StoreError(
                "a PostgreSQL quarantine store needs psycopg: pip install 'zhpc[postgres]'"
            ) from None
        extra: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT}
        if self._password is not None:
            extra["password"] = self._password
        try:
            self._conn = psycopg.connect(self._url, **extra)
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot open quarantine store {self.where}: {_first_line(exc)}"
            ) from None

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def _create_schema(self, run: Run) -> None:
        run("SELECT pg_advisory_xact_lock(CAST(? AS BIGINT))", (_SCHEMA_LOCK,))
        super()._create_schema(run)

    def write(self, work: Callable[[Run], T]) -> T:
        """One transaction, done again on a new connection if the old one broke before COMMIT."""
        for attempt in (1, 2):
            try:
                return self._attempt(work)
            except _Retry as retry:
                if attempt == 2:
                    raise StoreError(f"quarantine store {self.where}: {retry}") from None
        raise AssertionError("unreachable")

    def _attempt(self, work: Callable[[Run], T]) -> T:
        import psycopg

        self.connect()
        conn = self._conn

        def run(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
            cursor = conn.execute(_pg(sql), tuple(params))
            return cursor.fetchall() if cursor.description else []

        try:
            result = work(run)
        except psycopg.OperationalError as exc:  # nothing was committed: safe to do again
            self._lost()
            raise _Retry(_first_line(exc)) from None
        except BaseException as exc:
            self._rollback()
            if isinstance(exc, psycopg.Error):
                raise StoreError(f"quarantine store {self.where}: {_first_line(exc)}") from None
            raise
        try:
            conn.commit()
        except psycopg.Error as exc:  # maybe committed, maybe not: not repeated blindly
            self._lost()
            raise StoreError(
                f"quarantine store {self.where}: commit failed: {_first_line(exc)}"
            ) from None
        return result

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.write(lambda run: run(sql, params))

    def _rollback(self) -> None:
        try:
            self._conn.rollback()
        except Exception:  # the connection is broken: closing it rolls back
            self._lost()

    def _lost(self) -> None:
        try:
            self.close()
        except Exception:  # the connection is broken already
            self._conn = None


class _Retry(Exception):
    """The connection broke before anything was committed."""


def _pg(sql: str) -> str:
    """``?`` placeholders (the SQLite form every statement is written in) to psycopg's ``%s``."""
    return sql.replace("%", "%%").replace("?", "%s")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]

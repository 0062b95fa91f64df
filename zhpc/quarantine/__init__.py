"""The quarantine: where dead-lettered messages are kept, inspected and resumed.

Shared by Schlockmeister (``services/schlockmeister.py``, which files every
message arriving in a ``dlq.*`` queue) and ``zhpc dlq`` (which lists, shows,
reinjects, purges, exports and imports them). See docs/dead-letters.md.

* :mod:`~zhpc.quarantine.entry`: what is kept about one message;
* :mod:`~zhpc.quarantine.store`: the table (SQLite; PostgreSQL in
  :mod:`~zhpc.quarantine.postgres`), opened here by :func:`open_store`;
* :mod:`~zhpc.quarantine.intake`: filing a message from a dead-letter queue;
* :mod:`~zhpc.quarantine.discovery`: finding the dead-letter queues;
* :mod:`~zhpc.quarantine.reinject`: the messages that put an entry back to work.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from zhpc.errors import ConfigError
from zhpc.quarantine.entry import QuarantineEntry
from zhpc.quarantine.store import Filed, QuarantineStore, SQLiteStore, StoreError

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.config import QuarantineConfig

__all__ = [
    "Filed",
    "QuarantineEntry",
    "QuarantineStore",
    "StoreError",
    "connect_store",
    "open_store",
    "store_url",
]


def store_url(config: QuarantineConfig | None = None) -> str:
    """The configured store URL, or the default SQLite file in ``$ZHPC_HOME``."""
    from zhpc.config import zhpc_home

    url = config.url if config is not None else ""
    return url or f"sqlite://{zhpc_home() / 'quarantine.sqlite'}"


def open_store(config: QuarantineConfig | None = None) -> QuarantineStore:
    """The quarantine store the configuration names, opened (table created if missing)."""
    password_file = config.password_file if config is not None else None
    return connect_store(store_url(config), password_file, "quarantine.url").open()


def connect_store(url: str, password_file: Path | None, key: str) -> QuarantineStore:
    """The store backend for a ``sqlite:///`` or ``postgresql://`` URL, not yet connected.

    Also the event store's database (:mod:`zhpc.eventstore`): ``key`` names the
    configuration key in errors.
    """
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        # sqlite:///abs/path and sqlite:////abs/path both mean /abs/path, as for the broker.
        path = unquote(parts.netloc + parts.path)
        path = path[1:] if path.startswith("//") else path
        if not path:
            raise ConfigError(f"{key} sqlite:/// needs a file path")
        return SQLiteStore(Path(path).expanduser())
    if parts.scheme in ("postgresql", "postgres"):
        from zhpc.config import read_secret_file
        from zhpc.quarantine.postgres import PostgresStore

        password = read_secret_file(password_file) if password_file is not None else None
        return PostgresStore(url, password=password)
    raise ConfigError(f"{key}: unknown store {parts.scheme!r} (use sqlite:/// or postgresql://)")

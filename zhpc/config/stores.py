"""``quarantine:`` and ``events:``: the two database-backed stores (SQLite or PostgreSQL)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from msgspec import Meta

from zhpc.config.base import Section


def _check_store_url(url: str) -> str:
    """A database: SQLite or PostgreSQL, or empty (the default)."""
    if url and urlsplit(url).scheme not in ("sqlite", "postgresql", "postgres"):
        raise ValueError("must start with sqlite:/// or postgresql://")
    return url


class QuarantineConfig(Section, kw_only=True):
    """Where Schlockmeister and ``zhpc dlq`` keep dead-lettered messages (docs/dead-letters.md)."""

    #: ``sqlite:///path`` or ``postgresql://user@host/db``; empty: $ZHPC_HOME/quarantine.sqlite.
    url: str = ""
    #: The PostgreSQL password (mode 0600), instead of one in the URL.
    password_file: Path | None = None
    #: Dead-letter queues (``dlq.X``, or work queues ``X``) to watch besides those found.
    queues: list[str] = []
    #: Look for dead-letter queues (broker listing, management API, ``services:``); off: only
    #: ``queues`` are watched.
    discover: bool = True
    #: RabbitMQ management API to list queues; None: the broker's host on port 15672; "": off.
    management_url: str | None = None
    #: Seconds between two looks for new dead-letter queues.
    rescan_interval: Annotated[float, Meta(gt=0)] = 30.0
    #: Queue that gets a short JSON note per quarantined message; "": none.
    notify_queue: str = "zhpc.quarantine"

    checks = {"url": _check_store_url}


class EventsConfig(Section, kw_only=True):
    """Step events (docs/observability.md): broadcast on ``zhpc.events``, kept by the recorder."""

    #: Services and ``zhpc wrap`` emit events; off: nothing is sent.
    enabled: bool = True
    #: Events held in memory while the broker is slow; beyond this they are dropped.
    buffer: Annotated[int, Meta(ge=1)] = 10_000
    #: The recorder's store: ``sqlite:///path`` or ``postgresql://...``; empty:
    #: $ZHPC_HOME/events.sqlite.
    url: str = ""
    #: The PostgreSQL password (mode 0600), instead of one in the URL.
    password_file: Path | None = None
    #: Days the recorder keeps events; older ones are deleted.
    retention_days: Annotated[float, Meta(gt=0)] = 30.0

    checks = {"url": _check_store_url}

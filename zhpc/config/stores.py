"""``quarantine:`` and ``events:``: the two database-backed stores (SQLite or PostgreSQL)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from zhpc.config.base import Section


class _StoreSection(Section):
    """A section whose ``url`` names a database: SQLite or PostgreSQL, or empty (the default)."""

    @field_validator("url", check_fields=False)
    @classmethod
    def _known_store(cls, url: str) -> str:
        if url and urlsplit(url).scheme not in ("sqlite", "postgresql", "postgres"):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return url


class QuarantineConfig(_StoreSection):
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
    rescan_interval: float = Field(30.0, gt=0)
    #: Queue that gets a short JSON note per quarantined message; "": none.
    notify_queue: str = "zhpc.quarantine"


class EventsConfig(_StoreSection):
    """Step events (docs/observability.md): broadcast on ``zhpc.events``, kept by the recorder."""

    #: Services and ``zhpc wrap`` emit events; off: nothing is sent.
    enabled: bool = True
    #: Events held in memory while the broker is slow; beyond this they are dropped.
    buffer: int = Field(10_000, ge=1)
    #: The recorder's store: ``sqlite:///path`` or ``postgresql://...``; empty:
    #: $ZHPC_HOME/events.sqlite.
    url: str = ""
    #: The PostgreSQL password (mode 0600), instead of one in the URL.
    password_file: Path | None = None
    #: Days the recorder keeps events; older ones are deleted.
    retention_days: float = Field(30.0, gt=0)

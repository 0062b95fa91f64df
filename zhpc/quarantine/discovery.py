"""Which dead-letter queues there are: for Schlockmeister and ``zhpc dlq pull``.

AMQP has no "list queues" operation, so each broker is asked its own way:

1. a transport that can list its queues (the embedded broker's ``list_queues``)
   names every ``dlq.*`` queue;
2. on RabbitMQ, the management HTTP API (``quarantine.management_url``, by
   default port 15672 of the broker's host, with the broker's credentials) does;
3. where neither answers, the dead-letter queues of the queues zhpc knows of
   are watched: those in ``services:``, and the default queues of the installed
   services.

``quarantine.queues`` is always added; ``quarantine.discover: false`` keeps to it
alone (a shared broker where other people's dead letters are not ours to take).
"""

from __future__ import annotations

import base64
import json
import logging
import time
import urllib.error
import urllib.request
from urllib.parse import quote, unquote, urlsplit

from zhpc.config import BrokerConfig, Config
from zhpc.transport.base import Transport, dlq_name

log = logging.getLogger("zhpc.quarantine")

DLQ_PREFIX = "dlq."
MANAGEMENT_TIMEOUT = 3.0
#: After the management API failed, how long to do without it before asking again.
MANAGEMENT_RETRY = 300.0


def as_dead_letter_queue(name: str) -> str:
    """``dlq.X`` stays as it is; a work queue ``X`` means its ``dlq.X``."""
    return name if name.startswith(DLQ_PREFIX) else dlq_name(name)


class QueueFinder:
    """Finds the dead-letter queues to watch; ask :meth:`find` again to see new ones."""

    def __init__(self, transport: Transport, config: Config, *, only: str | None = None) -> None:
        self.transport = transport
        self.config = config
        self.only = as_dead_letter_queue(only) if only else None
        self._management_off_until = 0.0
        self._known: set[str] | None = None

    def find(self) -> set[str]:
        if self.only:
            return {self.only}
        settings = self.config.quarantine
        found = {as_dead_letter_queue(name) for name in settings.queues if name}
        if settings.discover:
            listed = self._listed()
            found |= listed if listed is not None else self._known_queues()
        return {name for name in found if name.startswith(DLQ_PREFIX) and "*" not in name}

    # -- ways to find them --------------------------------------------------------------------
    def _listed(self) -> set[str] | None:
        lister = getattr(self.transport, "list_queues", None)
        if callable(lister):
            return set(lister(DLQ_PREFIX))
        if self.config.broker.scheme in ("amqp", "amqps"):
            return self._from_management()
        return None

    def _from_management(self) -> set[str] | None:
        base = management_url(self.config)
        if not base or time.monotonic() < self._management_off_until:
            return None
        try:
            return set(management_queues(base, self.config.broker, DLQ_PREFIX))
        except (OSError, ValueError) as exc:
            self._management_off_until = time.monotonic() + MANAGEMENT_RETRY
            log.warning(
                "RabbitMQ management API at %s did not list the queues (%s); watching "
                "the dead-letter queues of known queues instead",
                base,
                _reason(exc),
            )
            return None

    def _known_queues(self) -> set[str]:
        """Dead-letter queues of the configured and installed services (computed once)."""
        if self._known is None:
            from zhpc import plugins
            from zhpc.errors import ZhpcError

            names = {settings.queue or name for name, settings in self.config.services.items()}
            for name in plugins.available(plugins.SERVICES):
                try:
                    cls = plugins.load(plugins.SERVICES, name)
                except ZhpcError:
                    continue
                names.add(self.config.service(name).queue or getattr(cls, "queue", None) or name)
            self._known = {as_dead_letter_queue(n) for n in names if n and "*" not in n}
        return self._known


def management_url(config: Config) -> str:
    """The management API to ask, or "" when it is switched off."""
    configured = config.quarantine.management_url
    if configured is not None:
        return configured.rstrip("/")
    parts = urlsplit(config.broker.resolved_url_without_password())
    secure = parts.scheme == "amqps"
    host = parts.hostname or "localhost"
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if secure else 'http'}://{host}:{15671 if secure else 15672}"


def management_queues(base: str, broker: BrokerConfig, prefix: str) -> list[str]:
    """Names of the queues in the broker's virtual host that start with ``prefix``."""
    parts = urlsplit(broker.resolved_url_without_password())
    user = unquote(parts.username or "guest")
    password = broker.password() or "guest"
    vhost = unquote(parts.path[1:]) if parts.path not in ("", "/") else "/"
    request = urllib.request.Request(
        f"{base}/api/queues/{quote(vhost, safe='')}?columns=name",
        headers={
            "Authorization": "Basic "
            + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        },
    )
    with urllib.request.urlopen(request, timeout=MANAGEMENT_TIMEOUT) as answer:
        queues = json.load(answer)
    if not isinstance(queues, list):
        raise ValueError("the answer is not a list of queues")
    names = [q.get("name") for q in queues if isinstance(q, dict)]
    return sorted(n for n in names if isinstance(n, str) and n.startswith(prefix))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__

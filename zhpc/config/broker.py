"""``broker:``: which broker, how to reach it, and how patiently."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import msgspec
from msgspec import Meta

from zhpc import plugins
from zhpc.config.base import Invalid, Section, read_secret_file, zhpc_home
from zhpc.config.checks import check_broker_url, check_host_port, split_broker_urls, with_host
from zhpc.errors import ConfigError
from zhpc.masking import mask_url

DEFAULT_DELIVERY_LIMIT = 5


def _check_http(url: str | None) -> str | None:
    if url and urlsplit(url).scheme not in ("http", "https"):
        raise ValueError("must start with http:// or https:// (or be empty to disable)")
    return url


class TLSConfig(Section, kw_only=True):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify: bool = True


class BrokerConfig(Section, kw_only=True):
    """``url`` is ``amqp://``, ``amqps://`` or ``sqlite:///abs/path``: a scheme that an
    installed transport serves (the ``zhpc.transports`` entry points)."""

    #: A list of node URLs is split into the first URL and ``hosts`` as the file is read.
    url: str | list[str] = ""
    #: The nodes of a RabbitMQ cluster (``host:port``), tried in order on every (re)connect,
    #: with ``url``'s scheme, user, password and vhost. Empty: ``url``'s host alone. A list
    #: of URLs as ``url`` fills this in (see :func:`split_broker_urls`).
    hosts: list[str] = []
    #: ``x-quorum-initial-group-size`` of new quorum queues. None: the number of nodes
    #: listed, at most 3 (and the broker's own default with one node listed).
    quorum_group_size: Annotated[int, Meta(ge=1)] | None = None
    #: Seconds a publish the broker nacked is retried on a fresh channel before its commit
    #: fails (a cluster that lost a node nacks for a while); 0: fail at the first nack.
    nack_retry_budget: Annotated[float, Meta(ge=0)] = 30.0
    password_file: Path | None = None
    delivery_limit: Annotated[int, Meta(ge=0)] = DEFAULT_DELIVERY_LIMIT
    heartbeat: Annotated[int, Meta(ge=0)] = 60
    connection_attempts: Annotated[int, Meta(ge=1)] = 10
    retry_delay: Annotated[float, Meta(ge=0)] = 1.0
    #: Seconds a publish waits for the broker's confirm, and RabbitMQ may block the
    #: connection (memory or disk alarm) before it is dropped: then the caller fails
    #: (``zhpc go`` spools) instead of hanging.
    confirm_timeout: Annotated[float, Meta(gt=0, le=86400)] = 60.0
    tls: TLSConfig = msgspec.field(default_factory=TLSConfig)
    #: RabbitMQ's management HTTP API (``zhpc scale`` reads unacked counts there). None:
    #: derived from ``url`` (same host and credentials, port 15672); "": do not use it.
    management_url: str | None = None

    def __post_init__(self) -> None:
        """``url: [amqp://a:5672/, amqp://b:5672/]`` means ``url`` a, ``hosts`` [a, b]."""
        if isinstance(self.url, list):
            if self.hosts:
                raise Invalid(
                    "url",
                    "give the nodes either as a list in broker.url or in broker.hosts, not both",
                )
            try:
                self.url, self.hosts = split_broker_urls(self.url)
            except ValueError as exc:
                raise Invalid("url", str(exc)) from None
        super().__post_init__()

    checks = {
        "url": lambda url: check_broker_url(url, plugins.names(plugins.TRANSPORTS)),
        "hosts": lambda hosts: [check_host_port(host) for host in hosts],
        "management_url": _check_http,
    }

    def connection_urls(self) -> list[str]:
        """One URL per node (password included; never log these), in the order to try."""
        url = self.connection_url()
        return [with_host(url, host) for host in self.hosts] or [url]

    def display_urls(self) -> list[str]:
        """:meth:`connection_urls` with any password replaced by ``***``: safe to print."""
        url = self.display_url()
        return [with_host(url, host) for host in self.hosts] or [url]

    def quorum_initial_group_size(self) -> int | None:
        """The replication factor to ask for, or None for the broker's default."""
        if self.quorum_group_size is not None:
            return self.quorum_group_size
        return min(len(self.hosts), 3) if len(self.hosts) > 1 else None

    @property
    def scheme(self) -> str:
        return urlsplit(self.resolved_url_without_password()).scheme

    def resolved_url_without_password(self) -> str:
        return self.url or f"sqlite://{zhpc_home() / 'broker.sqlite'}"

    def password(self) -> str | None:
        """The broker password: from ``password_file`` (mode 0600 only), else from the URL."""
        if self.password_file is not None:
            return read_secret_file(self.password_file)
        parts = urlsplit(self.url)
        return unquote(parts.password) if parts.password else None

    def connection_url(self) -> str:
        """The URL to connect with, password included. Never log this."""
        url = self.resolved_url_without_password()
        parts = urlsplit(url)
        password = self.password()
        if parts.scheme == "sqlite" or password is None:
            return url
        user = quote(unquote(parts.username or "guest"), safe="")
        host = parts.hostname or "localhost"
        host = f"[{host}]" if ":" in host else host  # an IPv6 address keeps its brackets
        port = f":{parts.port}" if parts.port else ""
        netloc = f"{user}:{quote(password, safe='')}@{host}{port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    def display_url(self) -> str:
        """The URL with any password replaced by ``***``: safe to print."""
        return mask_url(self.resolved_url_without_password())

    def sqlite_path(self) -> Path:
        parts = urlsplit(self.resolved_url_without_password())
        if parts.scheme != "sqlite":
            raise ConfigError(f"broker.url is not a sqlite:/// URL: {self.display_url()}")
        # sqlite:///abs/path and SQLAlchemy's sqlite:////abs/path both mean /abs/path;
        # sqlite://rel/path is relative to the working directory.
        path = unquote(parts.netloc + parts.path)
        path = path[1:] if path.startswith("//") else path
        if not path:
            raise ConfigError("broker.url sqlite:/// needs a file path")
        return Path(path).expanduser()

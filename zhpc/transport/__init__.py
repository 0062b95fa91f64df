"""Message transports, found by URL scheme: RabbitMQ (production), embedded SQLite (default).

A transport is a :class:`Transport` registered in the ``zhpc.transports``
entry-point group under the URL scheme it serves (``amqp``, ``amqps``,
``sqlite``). Only the chosen one is imported, so importing zhpc never imports
pika.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zhpc.transport.base import DeathRecord, QueueDepth, Transport, death_record, dlq_name

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.config import BrokerConfig

__all__ = [
    "DeathRecord",
    "QueueDepth",
    "Transport",
    "death_record",
    "dlq_name",
    "get_transport",
    "transport_class",
    "url_schemes",
]


def url_schemes() -> list[str]:
    """The URL schemes of the installed transports, as ``broker.url`` accepts them."""
    from zhpc import plugins

    return plugins.names(plugins.TRANSPORTS)


def transport_class(scheme: str) -> type[Transport]:
    """The transport registered for ``scheme``; ZhpcError if there is none or it is broken."""
    from zhpc import plugins
    from zhpc.errors import TransportError

    return plugins.load_class(plugins.TRANSPORTS, scheme, Transport, TransportError, "transport")


def get_transport(config: BrokerConfig) -> Transport:
    """The transport for ``config.url`` (not yet connected); imports only what it needs."""
    return transport_class(config.scheme).from_config(config)

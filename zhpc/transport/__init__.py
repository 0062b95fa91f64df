"""Message transports: RabbitMQ (production) and an embedded SQLite broker (default)."""

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
]


def get_transport(config: BrokerConfig) -> Transport:
    """The transport for ``config.url`` (not yet connected); imports only what it needs."""
    if config.scheme == "sqlite":
        from zhpc.transport.embedded import EmbeddedTransport

        return EmbeddedTransport.from_config(config)
    from zhpc.transport.rabbitmq import RabbitMQTransport

    return RabbitMQTransport.from_config(config)

"""Fixtures of the job tests (helpers are in jobs_support.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from testsupport import AMQP_URL

from zhpc.config import BrokerConfig
from zhpc.transport import Transport, get_transport


@pytest.fixture
def rabbit(rabbitmq_up: None) -> Iterator[Transport]:
    """A connection to the real RabbitMQ of the test cluster."""
    with get_transport(BrokerConfig(url=AMQP_URL)) as transport:
        yield transport

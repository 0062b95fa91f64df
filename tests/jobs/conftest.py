"""Fixtures of the job tests (helpers are in jobs_support.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from jobs_support import RABBITMQ_URL

from zhpc.config import BrokerConfig
from zhpc.transport import Transport, get_transport


@pytest.fixture
def rabbit(rabbitmq_up: None) -> Iterator[Transport]:
    """A connection to the real RabbitMQ of the test cluster."""
    with get_transport(BrokerConfig(url=RABBITMQ_URL)) as transport:
        yield transport

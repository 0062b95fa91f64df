"""Fixtures for the service tests: ``broker`` is the embedded broker, real RabbitMQ and
real ActiveMQ over STOMP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from service_support import Broker
from testsupport import AMQP_URL, STOMP_URL


@pytest.fixture(
    params=[
        "embedded",
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
        pytest.param("stomp", marks=pytest.mark.activemq),
    ]
)
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    if request.param == "rabbitmq":
        request.getfixturevalue("rabbitmq_up")  # skips, or fails under CI=true
        found = Broker("rabbitmq", AMQP_URL)
    elif request.param == "stomp":
        request.getfixturevalue("activemq_up")
        found = Broker("stomp", STOMP_URL)
    else:
        found = Broker("embedded", f"sqlite://{tmp_path / 'broker.sqlite'}")
    yield found
    found.teardown()


@pytest.fixture
def rabbitmq(rabbitmq_up: None) -> Iterator[Broker]:
    found = Broker("rabbitmq", AMQP_URL)
    yield found
    found.teardown()


@pytest.fixture
def activemq(activemq_up: None) -> Iterator[Broker]:
    found = Broker("stomp", STOMP_URL)
    yield found
    found.teardown()

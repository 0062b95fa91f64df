"""Fixtures for the transport conformance suite: one suite, every transport.

``backend`` is parametrized over the embedded broker (a fresh SQLite file per
test), RabbitMQ on 127.0.0.1:5672 and ActiveMQ (STOMP) on 127.0.0.1:61613. A real
broker skips when nothing listens there, except with ``CI=true``, where it fails
(the root conftest's ``rabbitmq_up``, ``activemq_up``): a CI run must not pass by
skipping half the suite.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conformance_support import Backend, unique
from testsupport import AMQP_URL, STOMP_URL

from zhpc.transport import Transport


@pytest.fixture(
    params=[
        "embedded",
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
        pytest.param("stomp", marks=pytest.mark.activemq),
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "embedded":
        found = Backend("embedded", f"sqlite://{tmp_path / 'broker.sqlite'}")
    elif request.param == "stomp":
        request.getfixturevalue("activemq_up")
        found = Backend("stomp", STOMP_URL)
    else:
        request.getfixturevalue("rabbitmq_up")  # skips, or fails under CI=true
        found = Backend("rabbitmq", AMQP_URL)
    yield found
    found.teardown()


@pytest.fixture
def transport(backend: Backend) -> Transport:
    return backend.make()


@pytest.fixture
def qname() -> str:
    """A queue name no other test or run uses."""
    return unique()

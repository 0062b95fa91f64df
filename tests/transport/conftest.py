"""Fixtures for the transport conformance suite: one suite, every transport.

``backend`` is parametrized over the embedded broker (a fresh SQLite file per
test) and RabbitMQ on 127.0.0.1:5672. RabbitMQ skips when its transport module
is missing or nothing listens there, except with ``CI=true``, where it fails:
a CI run must not pass by skipping half the suite.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from conformance_support import Backend, unique

from zhpc.transport import Transport

AMQP_URL = os.environ.get("ZHPC_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def _rabbitmq_unavailable() -> str | None:
    if importlib.util.find_spec("zhpc.transport.rabbitmq") is None:
        return "zhpc.transport.rabbitmq does not exist yet"
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            pass
    except OSError as exc:
        return f"nothing listens on 127.0.0.1:5672 ({exc.strerror})"
    return None


@pytest.fixture(params=["embedded", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "embedded":
        found = Backend("embedded", f"sqlite://{tmp_path / 'broker.sqlite'}")
    else:
        missing = _rabbitmq_unavailable()
        if missing:
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(f"RabbitMQ conformance cannot run under CI=true: {missing}")
            pytest.skip(missing)
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

"""A publish the broker nacks is published again on a fresh channel, within a budget.

A cluster that lost the node leading a queue nacks a channel's publishes for a while;
failing the commit at once would return its input to the queue again and again. Here
the nacks come from a full queue (``x-overflow: reject-publish``, ``x-max-length: 1``)
on the single test broker, emptied while the publish waits.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pika
import pytest
from testsupport import AMQP_URL, wait_until

from zhpc.errors import TransportError
from zhpc.message import Message, Outgoing
from zhpc.transport.rabbitmq import RabbitMQTransport

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(120)]


@pytest.fixture
def names(rabbitmq_up: None) -> Iterator[Callable[[str], str]]:
    made: list[str] = []

    def make(stem: str) -> str:
        made.append(f"test.{stem}.{uuid.uuid4().hex[:10]}")
        return made[-1]

    yield make
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = conn.channel()
        for name in made:
            for queue in (name, f"retry.{name}", f"dlq.{name}"):
                channel.queue_delete(queue)
    finally:
        conn.close()


def _full_queue(name: str) -> None:
    """A queue that holds one message and nacks every publish beyond it."""
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = conn.channel()
        channel.queue_declare(
            name, durable=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
        )
        channel.basic_publish("", name, b'"filler"')
    finally:
        conn.close()


def _take_one(name: str) -> bytes | None:
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        _method, _props, body = conn.channel().basic_get(name, auto_ack=True)
        return body
    finally:
        conn.close()


def _empty_later(transport: RabbitMQTransport, name: str) -> threading.Thread:
    """Once the transport retried a nacked publish, take the filler out of the queue."""

    def run() -> None:
        wait_until(
            lambda: transport._io.nack_retry.nacks_seen >= 2,
            timeout=30,
            interval=0.02,
            what="a second nack",
        )
        _take_one(name)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_nacked_publish_is_retried_until_the_queue_takes_it(names) -> None:
    full = names("nacked")
    _full_queue(full)
    with RabbitMQTransport(AMQP_URL, nack_retry_budget=60) as transport:
        emptier = _empty_later(transport, full)
        transport.publish(Outgoing.json(full, {"n": 1}))
        emptier.join(30)
        assert transport._io.nack_retry.rescued == 1
    assert _take_one(full) == b'{"n":1}'


def test_a_commit_whose_output_is_nacked_keeps_its_input(names) -> None:
    """The input is acked once the output is in, not returned at the first nack."""
    source, full = names("source"), names("nacked-out")
    _full_queue(full)
    with RabbitMQTransport(AMQP_URL, nack_retry_budget=60) as transport:
        transport.publish(Outgoing.json(source, {"n": 2}))
        got: list[Message] = []
        transport.subscribe(source, got.append)
        wait_until(lambda: transport.poll(0.2) or got, timeout=30, interval=0, what="the input")
        emptier = _empty_later(transport, full)
        future = transport.commit([Outgoing.json(full, {"n": 2})], got[0])
        future.result(60)
        emptier.join(30)
        transport.flush(30)
        assert len(got) == 1  # never redelivered
        assert transport.queue_depth(source).ready == 0
    assert _take_one(full) == b'{"n":2}'


def test_nacks_past_the_budget_fail_the_publish(names) -> None:
    full = names("nacked-long")
    _full_queue(full)
    with RabbitMQTransport(AMQP_URL, nack_retry_budget=1.5) as transport:
        started = time.monotonic()
        with pytest.raises(TransportError, match="nack"):
            transport.publish(Outgoing.json(full, {"n": 3}))
        assert time.monotonic() - started >= 1.5
        assert transport._io.nack_retry.nacks_seen >= 2


def test_no_budget_fails_at_the_first_nack(names) -> None:
    full = names("nacked-now")
    _full_queue(full)
    with (
        RabbitMQTransport(AMQP_URL, nack_retry_budget=0) as transport,
        pytest.raises(TransportError, match="nack"),
    ):
        transport.publish(Outgoing.json(full, {"n": 4}))

"""Batched acks (``multiple=True``) never cover a delivery whose commit is not confirmed."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pika
import pytest
from testsupport import port_open, unavailable, wait_until

from zhpc.message import Message, Outgoing
from zhpc.transport.rabbitmq import RabbitMQTransport

URL = os.environ.get("ZHPC_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(120)]


@pytest.fixture
def names() -> Iterator[Callable[[str], str]]:
    if not port_open(5672, "127.0.0.1", timeout=1):
        unavailable("no RabbitMQ broker listens on 127.0.0.1:5672")
    made: list[str] = []

    def make(stem: str) -> str:
        made.append(f"test.acks.{stem}.{uuid.uuid4().hex[:10]}")
        return made[-1]

    yield make
    conn = pika.BlockingConnection(pika.URLParameters(URL))
    try:
        for name in made:
            for queue in (name, f"retry.{name}", f"dlq.{name}"):
                channel = conn.channel()
                channel.queue_delete(queue)
                channel.close()
    finally:
        conn.close()


def _poll_until(t: RabbitMQTransport, condition: Callable[[], bool]) -> None:
    def polled() -> bool:
        if not condition():
            t.poll(0.05)
        return condition()

    wait_until(polled, 30, interval=0, what=repr(condition))


def test_later_commits_do_not_ack_an_older_unsettled_delivery(names):
    """Inputs 1 and 3 stay unsettled while the others commit: after the connection
    closes exactly those two come back, the rest were acked (together). Acking each
    commit with ``multiple=True`` regardless would lose 1 and 3."""
    inq, outq = names("in"), names("out")
    t = RabbitMQTransport(URL, connection_attempts=3, retry_delay=0.1)
    t.connect()
    try:
        t.publish_many([Outgoing.json(inq, {"n": i}) for i in range(8)])
        got: list[Message] = []
        t.subscribe(inq, got.append, prefetch=20)
        _poll_until(t, lambda: len(got) == 8)
        kept = {1, 3}
        futures = [
            t.commit([Outgoing.json(outq, m.json())], m) for m in got if m.json()["n"] not in kept
        ]
        t.flush(30)
        assert all(f.exception() is None for f in futures)
        wait_until(lambda: t.queue_depth(outq).ready == 6, 30, what="outputs")
    finally:
        t.close()  # inputs 1 and 3 were never settled: the broker must return them
    # A returned input of a work queue moves to its retry lane (zhpc.transport.accounting).
    t = RabbitMQTransport(URL, connection_attempts=3, retry_delay=0.1)
    t.connect()
    try:
        lane = f"retry.{inq}"
        wait_until(
            lambda: t.queue_depth(inq).ready + t.queue_depth(lane).ready >= 2,
            30,
            what="the two unsettled inputs back",
        )
        back = []
        for queue in (inq, lane):
            while (message := t.fetch(queue)) is not None:
                back.append(message)
                t.ack(message)
        assert sorted(m.json()["n"] for m in back) == sorted(kept)
    finally:
        t.close()

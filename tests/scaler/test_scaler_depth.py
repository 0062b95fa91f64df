"""Queue depth for the scaler on the real RabbitMQ: ready and consumers from AMQP, unacked
from the management API, and the fallback when that API does not answer."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from scaler_support import work
from testsupport import AMQP_URL, wait_until

from zhpc.config import BrokerConfig
from zhpc.message import Message
from zhpc.scaler import read_depth
from zhpc.scaler_decision import Observation, work_of
from zhpc.transport import Transport, dlq_name, get_transport
from zhpc.transport.management import ManagementClient

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def queue(rabbit: Transport) -> Iterator[str]:
    name = f"zhpc-test-depth-{uuid.uuid4().hex[:10]}"
    yield name
    rabbit.delete_queue(name)
    rabbit.delete_queue(dlq_name(name))


def test_unacked_messages_held_by_a_consumer_count_as_work(rabbit: Transport, queue: str) -> None:
    management = ManagementClient.from_config(BrokerConfig(url=AMQP_URL))
    assert management is not None
    rabbit.publish_many(work(queue, 30))
    held: list[Message] = []
    with get_transport(BrokerConfig(url=AMQP_URL)) as consumer:
        consumer.subscribe(queue, held.append, prefetch=10)
        wait_until(
            lambda: (consumer.poll(0.1), len(held) >= 10)[1],
            timeout=10,
            what="10 deliveries to the consumer",
        )
        # The plugin samples every 5 s: wait for a sample that shows the held messages.
        depth, _rate, source = wait_until(
            lambda: (found := read_depth(rabbit, management, queue))[0].unacked == 10 and found,
            timeout=30,
            interval=0.5,
            what="the management API to report 10 unacked",
        )
        assert (depth.ready, depth.unacked, depth.consumers) == (20, 10, 1)
        assert source == "transport+management"
        assert work_of(Observation(depth.ready, depth.unacked, depth.consumers)) == 30
        # Without the management API the consumer is counted as holding one message.
        unreachable = ManagementClient(
            "http://127.0.0.1:9/", username="guest", password="guest", timeout=1
        )
        fallback, rate, source = read_depth(rabbit, unreachable, queue)
        assert (fallback.ready, fallback.unacked, fallback.consumers) == (20, None, 1)
        assert rate is None and source == "transport"
        assert work_of(Observation(fallback.ready, fallback.unacked, fallback.consumers)) == 21
    # The consumer is gone, its 10 are ready again; the management API still shows them as
    # unacked until its next sample. With no consumer nothing can be held: no phantom work.
    after, _rate, _source = wait_until(
        lambda: (found := read_depth(rabbit, management, queue))[0].ready == 30 and found,
        timeout=10,
        interval=0.05,
        what="the 10 held messages back in ready",
    )
    assert (after.unacked, after.consumers) == (0, 0), after


def test_a_wrong_password_is_refused_clearly_and_not_shown(queue: str) -> None:
    from zhpc.errors import TransportError

    client = ManagementClient(
        "http://127.0.0.1:15672/", username="guest", password="not-the-password", timeout=5
    )
    with pytest.raises(TransportError, match="refused the broker's credentials") as caught:
        client.queue(queue)
    assert "not-the-password" not in str(caught.value)

"""Headers a service sends that a broker cannot carry: refused, never an input acked without output.

On main before the fix, RabbitMQ numbered a publish before pika tried to encode it;
a header pika cannot encode (a float, a 2**70 int, a 300-byte key) raised on the I/O
thread, every later confirm was credited to the wrong publish, the bad inputs were
acked with their outputs lost, and later inputs were held unacked for good.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import pytest
from service_support import Broker, publish_recipe
from testsupport import collect, wait_until

from zhpc.config import ServiceConfig
from zhpc.errors import InvalidHeaders, TransportError
from zhpc.message import Message, Outgoing
from zhpc.recipe import RecipeWrapper
from zhpc.service import Service, ServiceRunner
from zhpc.transport.base import dlq_name, retry_name

HOSTILE = [
    {"score": 0.5},
    {"nested": {"a": [1, 2.5, None]}},
    {"big": 2**70},
    {"k" * 300: 1},
]


class SendsHeaders(Service):
    """Sends its payload on with the headers the payload names (none for a good message)."""

    def process(self, rw: RecipeWrapper, payload: Any) -> None:
        index = payload.get("hostile")
        rw.send(payload, headers=HOSTILE[index] if index is not None else {"fine": [1, "a"]})


@pytest.mark.parametrize("headers", HOSTILE, ids=["float", "nested-float", "2**70", "long-key"])
def test_outgoing_refuses_headers_no_broker_carries_faithfully(headers: dict) -> None:
    with pytest.raises(InvalidHeaders, match="header"):
        Outgoing.json("q", {}, headers=headers)


def test_hostile_headers_are_refused_and_nothing_is_lost(broker: Broker) -> None:
    queue, out = broker.queue("hostile"), broker.queue("hostile-out")
    broker.delivery_limit = 1
    transport = broker.transport()
    transport.declare_queue(queue)
    transport.declare_queue(out)
    recipe = {
        "1": {"service": "h", "queue": queue, "output": 2},
        "2": {"service": "o", "queue": out},
    }
    payloads: list[dict[str, Any]] = []
    for index in range(len(HOSTILE)):
        payloads += [{"hostile": index}, {"good": index}]
    publish_recipe(transport, recipe, payloads)

    service = SendsHeaders("hostile", ServiceConfig(queue=queue, idle_timeout=1.0))
    runner = ServiceRunner(service, broker.transport())
    assert runner.run() == 0
    assert runner.processed == len(HOSTILE)

    arrived = collect(transport, out, len(HOSTILE), timeout=10, exact=True)
    assert sorted(m.json()["payload"]["good"] for m in arrived) == list(range(len(HOSTILE)))
    dead = collect(transport, dlq_name(queue), len(HOSTILE), timeout=10, exact=True)
    assert sorted(m.json()["payload"]["hostile"] for m in dead) == list(range(len(HOSTILE)))
    depth = transport.queue_depth(queue)
    assert depth.ready == 0 and not depth.unacked


def test_an_unencodable_publish_on_the_io_thread_fails_only_its_own_commit(
    rabbitmq: Broker,
) -> None:
    """The safety net under the check: a publish pika cannot encode takes no confirm number."""
    queue, out = rabbitmq.queue("drift"), rabbitmq.queue("drift-out")
    transport = rabbitmq.transport()
    transport.declare_queue(queue)
    transport.declare_queue(out)
    transport.publish_many([Outgoing.json(queue, {"n": n}) for n in range(4)])
    got: list[Message] = []
    transport.subscribe(queue, got.append, prefetch=10)
    wait_until(lambda: transport.poll(0.1) >= 0 and len(got) == 4, timeout=10, interval=0)

    bad = Outgoing.json(out, {"n": "bad"})
    object.__setattr__(bad, "headers", {"score": 0.5})  # past Outgoing's own check
    futures: list[Future[None]] = [transport.commit([bad], ack=got[0])]
    futures += [transport.commit([Outgoing.json(out, m.json())], ack=m) for m in got[1:]]
    with pytest.raises(TransportError, match="could not be published"):
        futures[0].result(10)
    for future in futures[1:]:
        assert future.result(10) is None

    back: list[Message] = []
    wait_until(
        lambda: back.append(transport.fetch(retry_name(queue))) or back[-1] is not None,
        timeout=10,
        what="the failed input in the retry lane",
    )
    assert back[-1].json() == {"n": 0}  # the failed input came back, once
    transport.ack(back[-1])
    transport.poll(0.3)
    assert len(got) == 4 and transport.fetch(retry_name(queue)) is None
    arrived = collect(rabbitmq.transport(), out, 3, timeout=10, exact=True)
    assert sorted(m.json()["n"] for m in arrived) == [1, 2, 3]

"""The runner in-process on both brokers: malformed messages, failures, error routes."""

from __future__ import annotations

from typing import Any

from service_support import Broker, publish_recipe
from testsupport import collect

from zhpc.config import ServiceConfig
from zhpc.message import Outgoing
from zhpc.recipe import RecipeWrapper
from zhpc.service import Service, ServiceRunner
from zhpc.transport.accounting import FAILURES_HEADER, LAST_ERROR_HEADER, LAST_EXCEPTION_HEADER
from zhpc.transport.base import death_record, dlq_name


class Double(Service):
    def process(self, rw: RecipeWrapper, payload: Any) -> None:
        rw.send({"value": payload["value"] * 2})


def run(broker: Broker, queue: str) -> ServiceRunner:
    transport = broker.transport()
    service = Double("double", ServiceConfig(queue=queue, idle_timeout=0.5, retry_interval=0.2))
    runner = ServiceRunner(service, transport)
    assert runner.run() == 0
    return runner


def test_malformed_messages_are_dead_lettered_with_a_reason(broker: Broker) -> None:
    queue = broker.queue("malformed")
    transport = broker.transport()
    transport.declare_queue(queue)
    header = {"workflows-recipe": True}
    transport.publish_many(
        [
            Outgoing(queue, b"\xff not utf-8", headers=header),
            Outgoing(queue, b'{"no": "recipe"}', headers=header),
            Outgoing.json(queue, {"recipe": {"1": {}}, "recipe-pointer": 7}, headers=header),
            Outgoing.json(queue, {"value": 1}),  # no recipe header at all
        ]
    )
    runner = run(broker, queue)
    assert runner.dead_lettered == 4 and runner.failed == 0
    dead = collect(transport, dlq_name(queue), 4, timeout=10)
    records = [death_record(m) for m in dead]
    assert all(r is not None and r.queue == queue and r.count == 1 for r in records)
    reasons = sorted(r.detail for r in records if r is not None)
    assert all(reason.startswith("malformed: ") for reason in reasons)
    assert any("not UTF-8" in reason for reason in reasons)
    assert any("recipe-pointer 7" in reason for reason in reasons)
    assert any("not a recipe message" in reason for reason in reasons)
    assert transport.queue_depth(queue).ready == 0


def test_a_failing_step_reaches_the_dlq_after_its_delivery_limit(broker: Broker) -> None:
    queue = broker.queue("failing")
    broker.delivery_limit = 1  # broker.delivery_limit: what the queues and the runner use
    transport = broker.transport()
    transport.declare_queue(queue)
    publish_recipe(transport, {"1": {"service": "d", "queue": queue}}, [{"nothing": 1}])
    runner = run(broker, queue)
    assert runner.failed == 2 and runner.processed == 0  # limit 1: two deliveries
    (dead,) = collect(transport, dlq_name(queue), 1, timeout=10)
    record = death_record(dead)
    assert record is not None and record.reason == "delivery_limit"
    assert record.queue == queue
    failures = dead.headers[FAILURES_HEADER]
    assert [f["exception"] for f in failures] == ["KeyError", "KeyError"]
    assert all(f["service"] == "double" and f["pid"] > 0 and f["host"] for f in failures)
    assert dead.headers[LAST_EXCEPTION_HEADER] == "KeyError"
    assert dead.headers[LAST_ERROR_HEADER] == "'value'"


def test_an_error_route_gets_the_details_and_the_input_is_acked(broker: Broker) -> None:
    queue = broker.queue("errroute")
    errors = f"{queue}.err"
    broker.names.append(errors)
    transport = broker.transport()
    recipe = {
        "1": {"service": "d", "queue": queue, "error": 2},
        "2": {"service": "e", "queue": errors},
    }
    publish_recipe(transport, recipe, [{"nothing": 1}])
    runner = run(broker, queue)
    assert runner.failed == 0 and runner.processed == 1
    (error,) = collect(transport, errors, 1, timeout=10)
    assert error.json()["payload"]["exception"] == "KeyError"
    assert transport.queue_depth(queue).ready == 0
    assert transport.queue_depth(dlq_name(queue)).ready == 0


class ToNowhere(Service):
    """Publishes to an exchange that does not exist: every commit fails."""

    def process(self, rw: RecipeWrapper, payload: Any) -> None:
        self.publish(
            Outgoing.json("zst.no-such-exchange", payload, kind="exchange", routing_key="x")
        )


def test_a_failed_commit_returns_the_input_and_the_runner_carries_on(broker: Broker) -> None:
    queue = broker.queue("nowhere")
    broker.delivery_limit = 1
    transport = broker.transport()
    transport.declare_queue(queue)
    publish_recipe(transport, {"1": {"service": "n", "queue": queue}}, [{"value": 1}])
    service = ToNowhere("nowhere", ServiceConfig(queue=queue, idle_timeout=0.5, retry_interval=0.2))
    runner = ServiceRunner(service, broker.transport())
    assert runner.run() == 0  # failures were counted and logged; the drain itself was clean
    assert runner.failed == 2 and runner.processed == 0
    (dead,) = collect(transport, dlq_name(queue), 1, timeout=10)
    assert dead.json()["payload"] == {"value": 1}
    # a permanent error: the DLQ copy says what it was, not only "delivery limit"
    assert "zst.no-such-exchange" in dead.headers[LAST_ERROR_HEADER]
    assert dead.headers[LAST_EXCEPTION_HEADER] in ("UnroutableError", "TransportError")
    assert len(dead.headers[FAILURES_HEADER]) == 2

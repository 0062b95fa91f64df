"""The service runner on the embedded broker: settling, error routes, DLQ, drain, status."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from testsupport import collect

from zhpc.config import ServiceConfig
from zhpc.message import Outgoing
from zhpc.recipe import RecipeWrapper
from zhpc.service import Service, ServiceRunner
from zhpc.transport.base import death_record, dlq_name
from zhpc.transport.embedded import EmbeddedTransport


class Double(Service):
    queue = "double"

    def process(self, rw: RecipeWrapper, payload: Any) -> None:
        rw.send({"value": payload["value"] * 2})


class Sleepy(Service):
    """Sleeps for payload["sleep"] seconds, then passes the payload on."""

    def process(self, rw: RecipeWrapper, payload: Any) -> None:
        time.sleep(payload["sleep"])
        rw.send(payload)


@pytest.fixture
def transport(tmp_path: Path) -> Iterator[EmbeddedTransport]:
    with EmbeddedTransport(tmp_path / "broker.sqlite") as t:
        yield t


def recipe(queue: str, *, error: bool = False, parameters: dict[str, Any] | None = None) -> dict:
    step: dict[str, Any] = {"service": "test", "queue": queue, "output": 2}
    if parameters:
        step["parameters"] = parameters
    nodes: dict[str, Any] = {"1": step, "2": {"service": "sink", "queue": f"{queue}.out"}}
    if error:
        step["error"] = 3
        nodes["3"] = {"service": "errors", "queue": f"{queue}.err"}
    return {**nodes, "start": [[1, {"value": 1}]]}


def start(transport: EmbeddedTransport, rec: dict, payloads: list[Any]) -> None:
    for payload in payloads:
        rw = RecipeWrapper.from_recipe({**rec, "start": [[1, payload]]})
        transport.publish_many(rw.start())


def run(service: Service, transport: EmbeddedTransport, **settings: Any) -> ServiceRunner:
    service.settings = ServiceConfig(**{"idle_timeout": 0.5, **settings})
    runner = ServiceRunner(service, transport, queue=service.queue)
    assert runner.run() == 0
    return runner


def test_outputs_are_sent_and_inputs_acked(transport: EmbeddedTransport) -> None:
    start(transport, recipe("double"), [{"value": v} for v in range(20)])
    runner = run(Double("double"), transport)
    assert runner.processed == 20
    assert transport.queue_depth("double").ready == 0
    out = collect(transport, "double.out", 20)
    assert sorted(m.json()["payload"]["value"] for m in out) == [2 * v for v in range(20)]
    assert all(m.is_recipe and m.json()["recipe-pointer"] == 2 for m in out)


def test_failure_without_error_route_ends_in_dlq(transport: EmbeddedTransport) -> None:
    transport.delivery_limit = 1  # broker.delivery_limit: what the runner counts against
    transport.declare_queue("double")
    start(transport, recipe("double"), [{"nothing": 1}])
    runner = run(Double("double"), transport)
    assert runner.failed == 2  # limit 1: two deliveries, then dead-lettered
    dead = collect(transport, dlq_name("double"), 1)
    assert len(dead) == 1
    record = death_record(dead[0])
    assert record is not None and record.reason == "delivery_limit"


def test_failure_with_error_route_is_routed_and_acked(transport: EmbeddedTransport) -> None:
    start(transport, recipe("double", error=True), [{"nothing": 1}])
    runner = run(Double("double"), transport)
    assert runner.failed == 0
    errors = collect(transport, "double.err", 1)
    details = errors[0].json()["payload"]
    assert details["exception"] == "KeyError"
    assert details["payload"] == {"nothing": 1}
    assert transport.queue_depth("double.out").ready == 0
    assert transport.queue_depth(dlq_name("double")).ready == 0


def test_malformed_messages_are_dead_lettered_at_once(transport: EmbeddedTransport) -> None:
    transport.declare_queue("double")
    header = {"workflows-recipe": True}
    transport.publish(Outgoing("double", b"\xff not utf-8", headers=header))
    transport.publish(Outgoing("double", b'{"no": "recipe"}', headers=header))
    transport.publish(
        Outgoing.json("double", {"recipe": {"1": {}}, "recipe-pointer": 7}, headers=header)
    )
    runner = run(Double("double"), transport)
    assert runner.dead_lettered == 3
    dead = collect(transport, dlq_name("double"), 3)
    reasons = sorted(death_record(m).detail for m in dead)  # type: ignore[union-attr]
    assert len(reasons) == 3
    assert all(r.startswith("malformed: ") for r in reasons)
    assert any("not UTF-8" in r for r in reasons)
    assert any("recipe-pointer 7" in r for r in reasons)


def test_max_runtime_hands_back_a_long_message_without_counting(
    transport: EmbeddedTransport,
) -> None:
    start(transport, recipe("sleepy"), [{"sleep": 30}])
    began = time.monotonic()
    runner = run(Sleepy("sleepy"), transport, max_runtime=0.5, end_margin=0)
    assert time.monotonic() - began < 10
    assert runner.handed_back == 1 and runner.failed == 0
    back = collect(transport, "sleepy", 1)
    assert back[0].delivery_count == 1
    assert back[0].headers.get("zhpc-handbacks") == 1


def test_expected_runtime_that_does_not_fit_is_left_alone(transport: EmbeddedTransport) -> None:
    start(transport, recipe("sleepy", parameters={"expected_runtime": 60}), [{"sleep": 0}])
    runner = run(Sleepy("sleepy"), transport, max_runtime=2, end_margin=0)
    assert runner.processed == 0 and runner.handed_back >= 1
    assert collect(transport, "sleepy", 1)[0].delivery_count == 1


def test_status_is_broadcast_with_workflows_fields(transport: EmbeddedTransport) -> None:
    seen: list[dict[str, Any]] = []
    transport.subscribe_broadcast("transient.status", lambda m: seen.append(m.json()))
    start(transport, recipe("double"), [{"value": 1}])
    run(Double("double"), transport)
    transport.poll(0.2)
    assert seen, "no status broadcast"
    last = seen[-1]
    for key in ("host", "status", "statustext", "service", "utilization", "workflows"):
        assert key in last
    assert last["statustext"] == "shutdown" and last["processed"] == 1
    assert json.dumps(last)


def test_while_it_runs_the_runner_trades_the_gil_less_and_freezes_what_exists(
    transport: EmbeddedTransport,
) -> None:
    """The service and I/O threads trade the GIL less often (zhpc.runner.SWITCH_INTERVAL_S),
    and the objects that exist once it consumes are left out of full collections
    (``gc.freeze``); the process's own settings come back after it."""
    import gc
    import sys

    from zhpc import runner as runner_module

    seen: list[tuple[float, int]] = []

    class Watching(Service):
        queue = "watching"

        def process(self, rw: RecipeWrapper, payload: Any) -> None:
            seen.append((sys.getswitchinterval(), gc.get_freeze_count()))
            rw.send(payload)

    before = sys.getswitchinterval()
    assert gc.get_freeze_count() == 0
    start(transport, recipe("watching"), [{"value": 1}])
    run(Watching("watching"), transport)
    assert len(seen) == 1
    assert seen[0][0] == pytest.approx(runner_module.SWITCH_INTERVAL_S)
    assert seen[0][1] > 0
    assert sys.getswitchinterval() == pytest.approx(before)
    assert gc.get_freeze_count() == 0

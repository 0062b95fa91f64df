"""Step events: the emitter never blocks, the store keeps and expires them, traces are built.

The store runs on SQLite always and on PostgreSQL when ``ZHPC_TEST_POSTGRES_URL``
is set (a schema of its own per test, as the quarantine store's tests do).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_quarantine_store import _drop_schema, _postgres_url
from testsupport import wait_until

from zhpc.config import BrokerConfig, Config, EventsConfig
from zhpc.errors import TransportError
from zhpc.events import (
    EVENTS_FORMAT,
    EVENTS_TOPIC,
    EventEmitter,
    NoEvents,
    StepRef,
    decode_batch,
    emitter_for,
)
from zhpc.eventstore import EventStore, open_event_store
from zhpc.message import Message
from zhpc.recipe import RecipeWrapper
from zhpc.trace import build_trace, render
from zhpc.transport import get_transport


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventStore]:
    if request.param == "sqlite":
        opened = open_event_store(EventsConfig(url=f"sqlite://{tmp_path / 'events.sqlite'}"))
        yield opened
        opened.close()
        return
    schema = f"zhpc_test_{uuid.uuid4().hex[:10]}"
    opened = open_event_store(EventsConfig(url=_postgres_url(schema)))
    try:
        yield opened
    finally:
        opened.close()
        _drop_schema(schema)


def event(kind: str, at: float, **fields: Any) -> dict[str, Any]:
    return {"event": kind, "time": at, "recipe_id": "r1", "host": "n1", "pid": 11, **fields}


def test_the_store_keeps_events_per_recipe_and_expires_old_ones(store: EventStore) -> None:
    now = time.time()
    stored = store.add(
        [
            event("received", now - 1, step=1, service="a", plan={"1": "a", "2": "b"}),
            event("received", now - 40 * 86400, recipe_id="old", step=1),
            {"event": "no time"},  # malformed: skipped
            event("received", now, recipe_id="other", step="not a number"),
        ]
    )
    assert (
        store.add(
            [
                {
                    "event": "done",
                    "time": now,
                    "step": 1,
                    "duration": 0.5,
                    "message_id": "m1",
                    "recipe_id": "r1",
                }
            ],
            {"pid": 11, "host": "n1"},
        )
        == 1
    )
    assert stored == 3
    events = store.for_recipe("r1")
    assert [e["event"] for e in events] == ["received", "done"]
    assert events[0]["plan"] == {"1": "a", "2": "b"} and events[0]["pid"] == 11
    assert events[1]["duration"] == 0.5 and events[1]["message_id"] == "m1"
    assert store.for_recipe("other")[0]["step"] is None
    assert store.expire(30, now=now) == 1
    assert store.for_recipe("old") == [] and store.count() == 3


def test_a_trace_has_every_run_in_recipe_order_and_waiting_steps() -> None:
    plan = {"1": "first", "2": "second", "3": "third"}
    trace = build_trace(
        "r1",
        [
            event("received", 1.0, step=1, service="a", queue="first", plan=plan, message_id="m"),
            event("failed", 1.5, step=1, exception="ValueError", error="bad value", message_id="m"),
            event("received", 2.0, step=1, service="a", queue="first", message_id="m"),
            event("done", 2.2, step=1, duration=0.2, message_id="m"),
            event("received", 3.0, step=2, service="b", queue="second", pid=22, message_id="n"),
            event("failed", 3.1, step=2, pid=22, error="again", message_id="n"),
            event("dead-lettered", 3.1, step=2, pid=22, error="delivery_limit", message_id="n"),
        ],
        dlq_id=lambda message_id: f"dlq-{message_id}",
    )
    steps = trace["steps"]
    assert [(s["step"], s["outcome"]) for s in steps] == [
        (1, "failed"),
        (1, "done"),
        (2, "dead-lettered"),
        (3, "waiting"),
    ]
    assert steps[0]["error"] == "bad value" and steps[0]["exception"] == "ValueError"
    assert steps[1]["duration"] == 0.2 and steps[1]["host"] == "n1" and steps[1]["pid"] == 11
    assert steps[2]["pid"] == 22 and steps[2]["dlq_id"] == "dlq-n"
    assert steps[3]["queue"] == "third"
    assert trace["finished"]  # nothing runs, and a step is dead: nothing more will happen
    text = render(trace)
    assert "ValueError: bad value" in text and "waiting" in text and "dlq-n" in text


def test_a_trace_is_unfinished_while_a_step_runs_or_waits() -> None:
    running = build_trace("r1", [event("received", 1.0, step=1, plan={"1": "a", "2": "b"})])
    assert not running["finished"] and running["steps"][0]["outcome"] == "running"
    waiting = build_trace(
        "r1",
        [event("received", 1.0, step=1, plan={"1": "a", "2": "b"}), event("done", 1.1, step=1)],
    )
    assert not waiting["finished"] and waiting["steps"][1]["outcome"] == "waiting"


def test_a_wrapped_job_shows_its_exit_code_and_end_reason() -> None:
    trace = build_trace(
        "r1",
        [
            event("job-started", 1.0, step=2, service="wrap:command", slurm_job_id="77"),
            event("job-ended", 9.0, step=2, exit_code=143, end_reason="received SIGTERM"),
        ],
    )
    (run,) = trace["steps"]
    assert run["outcome"] == "failed" and run["job_id"] == "77" and run["exit_code"] == 143
    assert run["error"] == "exit code 143 (received SIGTERM)" and run["duration"] == 8.0


def test_step_ref_reads_a_recipe_message_and_survives_anything_else() -> None:
    rw = RecipeWrapper.from_recipe(
        {
            "1": {"service": "a", "queue": "qa", "output": 2},
            "2": {"service": "b", "queue": "qb"},
            "start": [[1, {}]],
        }
    )
    out = rw.start()[0]
    message = Message(body=out.body, headers=out.headers, queue="qa")
    ref = StepRef.of(message, plan=True)
    assert ref.recipe_id == rw.recipe_id and ref.step == 1 and ref.queue == "qa"
    assert ref.plan == {"1": "qa", "2": "qb"}
    assert StepRef.of(Message(body=b"\xff", headers={}, queue="q")) == StepRef(None, None, "q")
    assert StepRef.of(Message(body=b"[1]", headers={}, queue="q")).recipe_id is None


def test_events_are_broadcast_in_batches_on_zhpc_events(tmp_path: Path) -> None:
    broker = BrokerConfig(url=f"sqlite://{tmp_path / 'broker.sqlite'}")
    listener = get_transport(broker)
    listener.connect()
    got: list[Message] = []
    listener.subscribe_broadcast(EVENTS_TOPIC, got.append)
    emitter = emitter_for(Config(broker=broker), "svc")
    try:
        for number in range(3):
            emitter.emit(
                "received", StepRef("r1", number, "q"), message_id=f"m{number}", attempt="x"
            )
        wait_until(lambda: listener.poll(0.1) or got, timeout=30, what="an event broadcast")
    finally:
        emitter.close()
        listener.close()
    body = got[0].json()
    assert body["format"] == EVENTS_FORMAT
    events = decode_batch(body)
    assert [e["message_id"] for e in events] == ["m0", "m1", "m2"]
    assert events[0]["service"] == "svc" and events[0]["pid"] == os.getpid()
    assert events[1]["attempt"] == "x"  # a field without a column of its own
    with pytest.raises(ValueError, match="not a zhpc-events"):
        decode_batch({"events": []})
    assert events[0]["recipe_id"] == "r1" and events[2]["step"] == 2


def test_the_emitter_never_blocks_and_drops_when_the_broker_is_gone() -> None:
    connecting, release = threading.Event(), threading.Event()

    def hanging_broker() -> Any:
        connecting.set()
        release.wait(60)  # a broker that hangs, then refuses
        raise TransportError("connection refused")

    emitter = EventEmitter(hanging_broker, {"service": "svc"}, capacity=100, interval=0.01)
    emitter.emit("received", None, message_id="first")
    assert connecting.wait(30)
    for number in range(1000):  # all while the publisher is stuck in connect
        emitter.emit("received", None, message_id=str(number))
    # The first is in the stuck batch, 100 wait in the buffer, the rest are dropped at once.
    assert not release.is_set() and emitter.dropped == 900
    release.set()
    wait_until(lambda: emitter.dropped == 1001, timeout=30, what="the buffered events dropped")
    emitter.close(timeout=10)
    assert emitter.sent == 0


def test_events_can_be_switched_off(tmp_path: Path) -> None:
    config = Config(
        broker=BrokerConfig(url=f"sqlite://{tmp_path / 'b.sqlite'}"),
        events=EventsConfig(enabled=False),
    )
    assert isinstance(emitter_for(config, "svc"), NoEvents)

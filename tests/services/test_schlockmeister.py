"""Schlockmeister on both brokers: dead letters filed with their story, acked after the store."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from quarantine_support import (
    FlakyStep,
    run_schlockmeister,
    run_service,
    schlockmeister_process,
    setup,
)
from service_support import Broker, publish_recipe
from testsupport import collect, port_open, unavailable, wait_until

from zhpc.config import parse_config
from zhpc.message import Outgoing
from zhpc.quarantine import QuarantineEntry, StoreError
from zhpc.quarantine.discovery import QueueFinder
from zhpc.quarantine.intake import CRASH_AFTER_STORE_ENV, CRASH_EXIT_CODE
from zhpc.quarantine.store import SQLiteStore
from zhpc.transport.base import dlq_name

MANAGEMENT_URL = os.environ.get("ZHPC_TEST_RABBITMQ_MANAGEMENT_URL", "http://127.0.0.1:15672")


def test_a_step_that_keeps_failing_is_quarantined_with_its_history(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker.delivery_limit = 1  # broker.delivery_limit: what the queues and the runner use
    world = setup(broker, tmp_path)
    queue = broker.queue("poison")
    world.watch(dlq_name(queue))
    transport = broker.transport()
    transport.declare_queue(queue)
    recipe = {"1": {"service": "flaky", "queue": queue}}
    publish_recipe(transport, recipe, [{"n": 1}])
    failing = run_service(FlakyStep, queue, transport, fixed=str(tmp_path / "never"))
    assert failing.failed == 2  # limit 1: two deliveries, then dlq.<queue>

    with caplog.at_level(logging.ERROR, logger="zhpc.quarantine"):
        runner = run_schlockmeister(world.config, transport)
    assert runner.quarantiner is not None and runner.quarantiner.filed == 1

    with world.store() as store:
        (entry,) = store.entries(full=True)
    assert (entry.queue, entry.dlq, entry.step, entry.reason) == (
        queue,
        dlq_name(queue),
        1,
        "delivery_limit",
    )
    assert entry.recipe_id and json.loads(entry.body)["payload"] == {"n": 1}
    assert entry.deliveries >= 1
    # the runner dead-lettered it itself, with both failures recorded in the message
    failures = entry.headers["zhpc-failures"]
    assert [f["exception"] for f in failures] == ["RuntimeError", "RuntimeError"]
    assert entry.headers["zhpc-dead-letter-queue"] == queue
    assert entry.headers["workflows-recipe"] is True
    assert transport.queue_depth(dlq_name(queue)).ready == 0
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR and r.name == "zhpc.quarantine"
    ]
    assert len(lines) == 1 and entry.id in lines[0] and "delivery_limit" in lines[0]
    (note,) = collect(transport, world.notify_queue, 1, exact=True, listen=0.5)
    assert note.json()["id"] == entry.id and note.json()["queue"] == queue


def test_bodies_that_are_no_recipe_at_all_are_kept_byte_for_byte(
    broker: Broker, tmp_path: Path
) -> None:
    world = setup(broker, tmp_path)
    queue = broker.queue("odd")
    world.watch(dlq_name(queue))
    transport = broker.transport()
    transport.declare_queue(queue)
    bodies = {
        b"\x00\xff\xfe binary",
        b"not json {",
        b'{"json": "but no recipe"}',
        b"[" * 5000 + b"]" * 5000,
        b"x" * 2_000_000,
    }
    transport.publish_many(
        [Outgoing(queue, body, headers={"raw": b"\x01\x02", "n": 7}) for body in bodies]
    )

    def reject(message: object) -> None:
        transport.dead_letter(message, "malformed: not for this test")  # type: ignore[arg-type]

    sub = transport.subscribe(queue, reject, prefetch=10)
    # Until all are dead-lettered: one poll may see only the first frames (the 2 MB one
    # arrives later), and what is left in hand at unsubscribe would never get there.
    wait_until(
        lambda: (
            transport.poll(0.1) >= 0 and transport.queue_depth(dlq_name(queue)).ready == len(bodies)
        ),
        20,
        what="every body in the dead-letter queue",
    )
    transport.unsubscribe(sub)
    run_schlockmeister(world.config, transport)

    with world.store() as store:
        entries = store.entries(full=True)
    assert {e.body for e in entries} == bodies
    assert all(e.reason == "malformed" and e.error == "not for this test" for e in entries)
    assert all(e.original_headers()["raw"] == b"\x01\x02" for e in entries)
    assert transport.queue_depth(dlq_name(queue)).ready == 0


def test_killed_between_store_commit_and_ack_the_message_is_stored_once(
    broker: Broker, tmp_path: Path
) -> None:
    world = setup(broker, tmp_path)
    queue = broker.queue("crash")
    world.watch(dlq_name(queue))
    transport = broker.transport()
    transport.declare_queue(queue)
    transport.publish(Outgoing.json(queue, {"precious": True}))
    sub = transport.subscribe(queue, lambda m: transport.dead_letter(m, "malformed: test"))
    wait_until(lambda: transport.poll(0.1) or transport.queue_depth(dlq_name(queue)).ready, 20)
    transport.unsubscribe(sub)

    crashing = schlockmeister_process(
        world, tmp_path / "crash.log", "--idle-timeout", "30", env={CRASH_AFTER_STORE_ENV: "1"}
    )
    try:
        assert crashing.wait(60) == CRASH_EXIT_CODE, crashing.output()
    finally:
        crashing.stop()
    with world.store() as store:
        (stored,) = store.entries()
    # Stored, not acked: the copy is back in its dead-letter queue.
    wait_until(
        lambda: transport.queue_depth(dlq_name(queue)).ready == 1,
        30,
        what="the unacked copy to be back in the dead-letter queue",
    )

    again = schlockmeister_process(world, tmp_path / "again.log", "--idle-timeout", "1.5")
    try:
        assert again.wait(60) == 0, again.output()
    finally:
        again.stop()
    with world.store() as store:
        (entry,) = store.entries(full=True)
    assert entry.id == stored.id and entry.copies == 1 and entry.version == 2
    assert json.loads(entry.body) == {"precious": True}
    assert transport.queue_depth(dlq_name(queue)).ready == 0
    notes = collect(transport, world.notify_queue, 1, exact=True, listen=0.5)
    assert [n.json()["id"] for n in notes] == [entry.id]


def test_new_dead_letter_queues_are_found_while_it_runs(tmp_path: Path) -> None:
    """The embedded broker lists its queues (RabbitMQ's are listed by its management API)."""
    broker = Broker("embedded", f"sqlite://{tmp_path / 'broker.sqlite'}")
    world = setup(broker, tmp_path)
    transport = broker.transport()
    process = schlockmeister_process(world, tmp_path / "s.log", "--idle-timeout", "60")
    try:
        wait_until(lambda: "filing dead letters" in process.output(), 30)
        for name in ("later.a", "later.b"):
            transport.declare_queue(name)
            transport.publish(Outgoing.json(name, {"queue": name}))
            sub = transport.subscribe(name, lambda m: transport.dead_letter(m, "malformed: x"))
            wait_until(
                lambda n=name: (
                    transport.poll(0.1)
                    or transport.queue_depth(dlq_name(n)).ready
                    or transport.queue_depth(n).ready == 0
                ),
                20,
            )
            transport.unsubscribe(sub)

        def filed() -> set[str]:
            with world.store() as store:
                return {e.queue for e in store.entries()}

        wait_until(lambda: filed() == {"later.a", "later.b"}, 30, what="both queues filed")
    finally:
        process.stop()
        broker.teardown()
    assert "watching dlq.later.a" in process.output()


def test_a_failing_store_leaves_the_message_in_its_queue_and_stops(
    broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = setup(broker, tmp_path)
    queue = broker.queue("nostore")
    world.watch(dlq_name(queue))
    transport = broker.transport()
    transport.declare_queue(queue)
    transport.publish(Outgoing.json(queue, {"keep": "me"}))
    sub = transport.subscribe(queue, lambda m: transport.dead_letter(m, "malformed: test"))
    wait_until(lambda: transport.poll(0.1) or transport.queue_depth(dlq_name(queue)).ready, 20)
    transport.unsubscribe(sub)

    class FullDisk(SQLiteStore):
        def put(self, entry: QuarantineEntry) -> object:  # type: ignore[override]
            raise StoreError("quarantine store: database or disk is full")

    monkeypatch.setattr(
        "zhpc.services.schlockmeister.open_store",
        lambda config: FullDisk(tmp_path / "full.sqlite").open(),
    )
    from zhpc.config import ServiceConfig
    from zhpc.services.schlockmeister import Schlockmeister, SchlockmeisterRunner

    service = Schlockmeister("schlockmeister", ServiceConfig(idle_timeout=10), world.config)
    runner = SchlockmeisterRunner(service, transport)
    assert runner.run() == 1 and runner.handed_back == 1
    wait_until(lambda: transport.queue_depth(dlq_name(queue)).ready == 1, 20)
    (kept,) = collect(transport, dlq_name(queue), 1)
    assert kept.json() == {"keep": "me"}


def test_rabbitmq_dead_letter_queues_are_listed_by_its_management_api(
    rabbitmq: Broker, tmp_path: Path
) -> None:
    parts = urlsplit(MANAGEMENT_URL)
    if not port_open(parts.port or 80, parts.hostname or "127.0.0.1"):
        unavailable(
            f"the RabbitMQ management API does not answer at {MANAGEMENT_URL}",
            "enable the rabbitmq_management plugin in scripts/setup-cluster",
        )
    queue = rabbitmq.queue("listed")
    transport = rabbitmq.transport()
    transport.declare_queue(queue)  # and its dlq.<queue>
    config = parse_config(
        {"broker": {"url": rabbitmq.url}, "quarantine": {"management_url": MANAGEMENT_URL}}
    )
    found = QueueFinder(transport, config).find()
    assert dlq_name(queue) in found and queue not in found


def test_without_a_queue_listing_the_known_queues_are_watched(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from zhpc.transport import get_transport

    config = parse_config(
        {
            "broker": {"url": "amqp://guest:guest@127.0.0.1:5672/"},
            "services": {"mine": {"queue": "zst.mine"}},
            "quarantine": {
                "management_url": "http://127.0.0.1:1",
                "queues": ["zst.extra", "dlq.zst.other"],
            },
        }
    )
    finder = QueueFinder(get_transport(config.broker), config)  # never connected: not needed
    with caplog.at_level(logging.WARNING, logger="zhpc.quarantine"):
        found = finder.find()
        assert finder.find() == found
    assert {
        "dlq.zst.mine",
        "dlq.zst.extra",
        "dlq.zst.other",
        "dlq.processing_recipe",
        "dlq.cluster.submission",
    } <= found
    assert all(name.startswith("dlq.") and "*" not in name for name in found)
    warnings = [r.getMessage() for r in caplog.records if r.name == "zhpc.quarantine"]
    assert len(warnings) == 1 and "management API at http://127.0.0.1:1" in warnings[0]
    assert "guest" not in warnings[0]

    only = parse_config(
        {
            "broker": {"url": "amqp://127.0.0.1/"},
            "quarantine": {"discover": False, "queues": ["zst.a"]},
        }
    )
    assert QueueFinder(get_transport(only.broker), only).find() == {"dlq.zst.a"}

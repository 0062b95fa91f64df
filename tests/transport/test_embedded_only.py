"""What only the embedded broker promises, beyond the shared conformance suite."""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from conformance_support import Backend, Inbox, Lane
from testsupport import wait_until

from zhpc.config import BrokerConfig
from zhpc.errors import InvalidHeaders, TransportError, UnroutableError
from zhpc.message import Outgoing
from zhpc.transport import death_record, dlq_name, get_transport
from zhpc.transport.deadconsumers import PID_CHECK_IDLE
from zhpc.transport.embedded import EmbeddedTransport


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "broker.sqlite"


@pytest.fixture
def embedded(path: Path) -> Iterator[Backend]:
    backend = Backend("embedded", f"sqlite://{path}")
    yield backend
    backend.teardown()


def open_transport(path: Path, **kwargs: object) -> EmbeddedTransport:
    transport = EmbeddedTransport(path, **kwargs)  # type: ignore[arg-type]
    transport.connect()
    return transport


def out(queue: str, body: str, **kwargs: object) -> Outgoing:
    return Outgoing(destination=queue, body=body.encode(), **kwargs)  # type: ignore[arg-type]


def rows(path: Path, sql: str, *args: object) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(sql, args).fetchall()


def test_get_transport_builds_embedded_from_config(path: Path) -> None:
    transport = get_transport(BrokerConfig(url=f"sqlite://{path}", delivery_limit=7))
    assert isinstance(transport, EmbeddedTransport)
    assert transport.path == path and transport.delivery_limit == 7
    with transport:
        transport.declare_queue("q")
    # the work queue moves every return to its lane; the lane counts up to the limit
    assert rows(path, "SELECT name, delivery_limit, dead_letter_to FROM queues ORDER BY name") == [
        ("dlq.q", None, None),
        ("q", 0, "retry.q"),
        ("retry.q", 6, "dlq.q"),
    ]


def test_messages_survive_reopening_the_file(path: Path) -> None:
    with EmbeddedTransport(path) as first:
        first.publish(out("q", "kept"))
    with EmbeddedTransport(path) as second:
        assert Inbox(second, "q", auto_ack=True).next().body == b"kept"


def test_not_a_database_is_a_clear_error(path: Path) -> None:
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(TransportError, match="cannot open embedded broker"):
        EmbeddedTransport(path).connect()


def test_use_before_connect_is_a_clear_error(path: Path) -> None:
    with pytest.raises(TransportError, match="not connected"):
        EmbeddedTransport(path).publish(out("q", "x"))


def test_commit_is_all_or_nothing(path: Path) -> None:
    transport = open_transport(path)
    transport.publish(out("in", "input"))
    inbox = Inbox(transport, "in")
    outputs = [
        out("out", "first"),
        Outgoing(destination="amq.direct", kind="exchange", routing_key="nobody", body=b"x"),
    ]
    message = inbox.next()
    with pytest.raises(UnroutableError):
        transport.commit(outputs, ack=message)
    assert transport.queue_depth("out").ready == 0  # the first output was rolled back too
    transport.ack(message)  # the input was left unsettled, for the caller to settle
    assert transport.queue_depth("in").ready == 0 and transport.queue_depth("in").unacked == 0
    transport.close()


def test_headers_round_trip_including_bytes(path: Path) -> None:
    transport = open_transport(path)
    headers = {"raw": b"\xff\x00", "n": 3, "nested": {"list": [1, "two", None]}}
    transport.publish(out("q", "h", headers=headers))
    assert Inbox(transport, "q", auto_ack=True).next().headers == headers
    with pytest.raises(InvalidHeaders, match="cannot be sent"):
        transport.publish(out("q", "bad", headers={"obj": object()}))
    transport.close()


def test_bindings_and_default_exchange_route(path: Path) -> None:
    transport = open_transport(path)
    transport.bind("a", "amq.direct", "key")
    transport.bind("b", "amq.direct", "key")
    transport.publish(
        Outgoing(destination="amq.direct", kind="exchange", routing_key="key", body=b"both")
    )
    transport.publish(Outgoing(destination="", kind="exchange", routing_key="a", body=b"only a"))
    assert transport.queue_depth("a").ready == 2
    assert transport.queue_depth("b").ready == 1
    with pytest.raises(UnroutableError):
        transport.publish(Outgoing(destination="", kind="exchange", routing_key="nope", body=b""))
    transport.close()


def test_dead_lettered_copy_counts_deliveries(path: Path) -> None:
    transport = open_transport(path)
    transport.declare_queue("q", delivery_limit=1)
    transport.publish(out("q", "poison"))
    inbox = Inbox(transport, "q", prefetch=1)
    transport.nack(inbox.next())
    transport.nack(Lane(transport, "retry.q").next())
    dead = Inbox(transport, dlq_name("q"), auto_ack=True).next()
    assert dead.headers["x-first-death-queue"] == "q"
    assert [d["queue"] for d in dead.headers["x-death"]] == ["retry.q", "q"]
    record = death_record(dead)
    assert record is not None and record.count == 1 and record.queue == "q"
    transport.close()


def test_consumer_death_counts_toward_the_limit(embedded: Backend) -> None:
    transport = embedded.make()
    transport.declare_queue("q", delivery_limit=0)
    transport.publish(out("q", "fatal"))
    helper = embedded.spawn("hold", "q")
    helper.wait_lines(lambda lines: any(line.startswith("got fatal") for line in lines))
    helper.kill()
    dead = Inbox(transport, dlq_name("q"), auto_ack=True).next()
    record = death_record(dead)
    assert record is not None and record.reason == "delivery_limit"
    assert transport.queue_depth("q").ready == 0


def test_killed_subscriber_loses_its_consumer_and_broadcast_queue(
    embedded: Backend, path: Path
) -> None:
    transport = embedded.make()
    transport.declare_queue("work")
    worker = embedded.spawn("hold", "work")
    listener = embedded.spawn("broadcast", "news")
    for helper in (worker, listener):
        helper.wait_lines(lambda lines: "ready" in lines)
    assert transport.queue_depth("work").consumers == 1
    assert len(rows(path, "SELECT name FROM queues WHERE topic='news'")) == 1
    transport.publish(out("news", "unread", kind="topic"))

    worker.kill()
    listener.kill()
    # A consumer holding nothing is looked up in /proc only every PID_CHECK_IDLE seconds.
    wait_until(
        lambda: transport.queue_depth("work").consumers == 0,
        timeout=PID_CHECK_IDLE * 3,
        what="consumer gone",
    )
    assert rows(path, "SELECT name FROM queues WHERE topic='news'") == []
    assert rows(path, "SELECT COUNT(*) FROM messages") == [(0,)]


@pytest.mark.parametrize("holder_timeout", [0.3, None])
def test_long_work_keeps_its_lease_while_alive(path: Path, holder_timeout: float | None) -> None:
    """Heartbeats keep a lease; a consumer without a lease timeout is judged by its pid only."""
    holder = open_transport(path, lease_timeout=holder_timeout)
    holder.publish(out("q", "slow"))
    held = Inbox(holder, "q", prefetch=1).next()

    other = open_transport(path, lease_timeout=0.3)
    inbox = Inbox(other, "q")
    watched = []

    def long_enough() -> bool:
        other.poll(0.05)
        watched.append(1)
        return len(watched) >= 30  # about 1.5 s: five lease timeouts

    wait_until(long_enough, interval=0.005, what="several lease timeouts")
    assert inbox.messages == []
    holder.ack(held)
    assert other.queue_depth("q").ready == 0 and other.queue_depth("q").unacked == 0
    other.close()
    holder.close()


def test_stopped_consumer_loses_its_lease_then_registers_again(
    embedded: Backend, path: Path
) -> None:
    transport = open_transport(path, lease_timeout=2.0)
    transport.publish(out("q", "stuck"))
    helper = embedded.spawn("hold", "q", "--heartbeat", "1")  # lease timeout 2 s
    helper.wait_lines(lambda lines: any(line.startswith("got stuck") for line in lines))

    helper.signal(signal.SIGSTOP)
    try:
        again = Lane(transport, "retry.q").next(timeout=15)
        assert again.body == b"stuck" and again.delivery_count == 1
    finally:
        helper.signal(signal.SIGCONT)
    wait_until(lambda: transport.queue_depth("q").consumers == 1, what="helper registered again")
    transport.ack(again)
    transport.close()


def test_two_processes_share_a_queue_without_duplicates(embedded: Backend) -> None:
    transport = embedded.make()
    inputs = {f"i{i}".encode() for i in range(300)}
    transport.publish_many([Outgoing(destination="in", body=b) for b in sorted(inputs)])
    for _ in range(2):
        embedded.spawn("commit", "in", "--out", "out", "--prefetch", "5")
    got = Inbox(transport, "out", prefetch=100, auto_ack=True).wait(300, timeout=30)
    assert sorted(m.body for m in got) == sorted(inputs)
    transport.poll(0.2)
    assert len(got) == 300
    assert transport.queue_depth("in").ready == 0


def test_dlq_is_not_given_a_dlq(path: Path) -> None:
    transport = open_transport(path)
    transport.declare_queue("q")
    transport.publish(out(dlq_name("q"), "x"))
    transport.publish(out(dlq_name("retry.q"), "y"))
    assert rows(path, "SELECT name, delivery_limit FROM queues ORDER BY name") == [
        ("dlq.q", None),
        ("q", 0),
        ("retry.q", 4),
    ]
    transport.close()

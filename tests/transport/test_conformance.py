"""The transport contract, checked the same way on every transport (see conftest.backend).

Each test uses fresh queue names, so runs against a shared RabbitMQ never collide.
"""

from __future__ import annotations

import random
import time

import pytest
from conformance_support import Backend, Inbox, Lane, unique
from testsupport import wait_until

from zhpc.errors import TransportError, UnroutableError
from zhpc.message import Message, Outgoing
from zhpc.transport import QueueDepth, Transport, death_record, dlq_name
from zhpc.transport.base import HANDBACK_HEADER, retry_name


def out(queue: str, body: bytes | str, **kwargs: object) -> Outgoing:
    data = body.encode() if isinstance(body, str) else body
    return Outgoing(destination=queue, body=data, **kwargs)  # type: ignore[arg-type]


def bodies(messages: list) -> list[bytes]:
    return [m.body for m in messages]


# -- order, content, settling ----------------------------------------------------------------
def test_order_within_a_queue_and_content_kept(transport: Transport, qname: str) -> None:
    sent = [out(qname, f"m{i}", headers={"i": i, "s": "x", "d": {"k": [1, 2]}}) for i in range(40)]
    for message in sent[:20]:
        transport.publish(message)
    transport.publish_many(sent[20:])

    inbox = Inbox(transport, qname, prefetch=7, auto_ack=True)
    got = inbox.wait(40)

    assert bodies(got) == [m.body for m in sent]
    for original, received in zip(sent, got, strict=True):
        assert received.message_id == original.message_id
        assert received.headers.items() >= original.headers.items()
        assert received.delivery_count == 1 and not received.redelivered
        assert received.queue == qname
    wait_until(lambda: transport.queue_depth(qname).ready == 0, what="queue drained")


def test_prefetch_limits_unsettled_deliveries(transport: Transport, qname: str) -> None:
    transport.publish_many([out(qname, str(i)) for i in range(10)])
    inbox = Inbox(transport, qname, prefetch=3)
    inbox.wait(3)
    transport.poll(0.2)
    assert len(inbox.messages) == 3
    transport.ack(inbox.messages[0])
    inbox.wait(4)
    transport.poll(0.2)
    assert bodies(inbox.messages) == [b"0", b"1", b"2", b"3"]


def test_nack_requeue_moves_to_the_retry_lane_which_counts(
    transport: Transport, qname: str
) -> None:
    """A return from a work queue goes to its lane uncounted; returns from the lane count."""
    transport.publish(out(qname, "once"))
    inbox = Inbox(transport, qname, prefetch=1)
    first = inbox.next()
    assert first.delivery_count == 1 and not first.redelivered
    transport.nack(first, requeue=True)

    lane = Lane(transport, retry_name(qname))
    moved = lane.next()
    assert moved.body == b"once" and moved.queue == retry_name(qname)
    assert moved.delivery_count == 1
    assert moved.message_id == first.message_id
    record = death_record(moved)
    assert record is not None and (record.reason, record.queue) == ("delivery_limit", qname)
    transport.nack(moved, requeue=True)

    again = lane.next()
    assert again.redelivered and again.delivery_count == 2
    transport.ack(again)

    wait_until(lambda: transport.queue_depth(retry_name(qname)).ready == 0, what="lane empty")
    assert transport.fetch(retry_name(qname)) is None
    transport.poll(0.2)
    assert inbox.messages == []
    assert transport.queue_depth(qname).ready == 0


def test_fetch_takes_one_message_and_nothing_else(transport: Transport, qname: str) -> None:
    transport.publish_many([out(qname, "a"), out(qname, "b")])
    wait_until(lambda: transport.queue_depth(qname).ready == 2, what="two ready")
    first = transport.fetch(qname)
    assert first is not None and first.body == b"a" and first.delivery_count == 1
    wait_until(lambda: transport.queue_depth(qname).ready == 1, what="one left ready")
    transport.ack(first)
    second = transport.fetch(qname)
    assert second is not None and second.body == b"b"
    transport.ack(second)
    assert transport.fetch(qname) is None


def test_nack_without_requeue_dead_letters_as_rejected(transport: Transport, qname: str) -> None:
    transport.declare_queue(qname)
    transport.publish(out(qname, "bad"))
    inbox = Inbox(transport, qname, prefetch=1)
    transport.nack(inbox.next(), requeue=False)

    dead = Inbox(transport, dlq_name(qname), auto_ack=True).next()
    assert dead.body == b"bad"
    record = death_record(dead)
    assert record is not None and record.reason == "rejected" and record.queue == qname


def test_close_returns_unacked_messages_to_the_lane(backend: Backend, qname: str) -> None:
    first = backend.make()
    first.publish_many([out(qname, "a"), out(qname, "b")])
    Inbox(first, qname, prefetch=5).wait(2)
    first.close()

    second = backend.make()
    got = Lane(second, retry_name(qname), auto_ack=True).wait(2)
    assert sorted(bodies(got)) == [b"a", b"b"]
    assert all(m.delivery_count == 1 for m in got)  # moved, not counted


# -- crashes -----------------------------------------------------------------------------------
def test_sigkilled_consumer_loses_nothing(backend: Backend, qname: str) -> None:
    transport = backend.make()
    transport.publish_many([out(qname, f"k{i}") for i in range(30)])
    helper = backend.spawn("hold", qname, "--prefetch", "10")
    helper.wait_lines(lambda lines: sum(line.startswith("got ") for line in lines) >= 10)
    held = {line.split()[1].encode() for line in helper.lines if line.startswith("got ")}
    assert len(held) == 10
    helper.kill()

    # Both at once: the broker may give out what the dead consumer held after the other
    # 20 arrived, and a transport moves such a redelivery to the lane only while it
    # polls the subscription (STOMP does it as the frame is delivered).
    got = Inbox(transport, qname, prefetch=50, auto_ack=True).messages
    moved: list[Message] = []

    def both_arrived() -> bool:
        transport.poll(0.05)  # delivers to the inbox, moves redeliveries on
        message = transport.fetch(retry_name(qname))
        if message is not None:
            moved.append(message)
            transport.ack(message)
        return len(got) >= 20 and len(moved) >= 10

    wait_until(
        both_arrived,
        timeout=20,
        interval=0,
        what=lambda: f"20 in the queue and 10 in the lane, got {len(got)} and {len(moved)}",
    )
    assert sorted(bodies(got + moved)) == sorted(f"k{i}".encode() for i in range(30))
    # what the dead consumer held went to the lane, uncounted; nothing else moved
    assert set(bodies(moved)) == held
    assert all(m.delivery_count == 1 for m in got + moved)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_commit_killed_at_random_moment_loses_nothing(
    backend: Backend, qname: str, seed: int
) -> None:
    """Kill a committing consumer mid-stream: every input is still queued or has its output."""
    rng = random.Random(seed)
    total = 400
    out_queue = unique("zt.out")
    transport = backend.make()
    transport.declare_queue(out_queue)
    inputs = {f"c{i}".encode() for i in range(total)}
    transport.publish_many([out(qname, body) for body in sorted(inputs)])

    helper = backend.spawn(
        "commit", qname, "--out", out_queue, "--prefetch", "20", "--work", "0.002"
    )
    kill_after = rng.randint(20, total // 2)
    wait_until(
        lambda: transport.queue_depth(out_queue).ready >= kill_after,
        timeout=30,
        interval=0.005,  # kill at once: near kill_after, not up to 0.2 s later
        what=f"{kill_after} outputs",
    )
    helper.kill()

    outputs = Inbox(transport, out_queue, prefetch=100, auto_ack=True)
    remaining = Inbox(transport, qname, prefetch=100, auto_ack=True)
    lane = Lane(transport, retry_name(qname), auto_ack=True)

    def covered() -> bool:
        transport.poll(0.05)
        message = transport.fetch(lane.name)
        if message is not None:
            lane.messages.append(message)
            transport.ack(message)
        queued = bodies(remaining.messages) + bodies(lane.messages)
        return inputs <= set(bodies(outputs.messages) + queued)

    wait_until(covered, timeout=30, interval=0.005, what="every input either queued or processed")
    assert remaining.messages, "the kill came after all the work: nothing was tested"


# -- dead-lettering ----------------------------------------------------------------------------
def test_delivery_limit_dead_letters_with_reason_and_count(
    transport: Transport, qname: str
) -> None:
    transport.declare_queue(qname, delivery_limit=2)
    transport.publish(out(qname, "poison"))
    inbox = Inbox(transport, qname, prefetch=1)
    transport.nack(inbox.next(), requeue=True)  # the first return moves it to the lane
    lane = Lane(transport, retry_name(qname))
    counts = []
    for _ in range(2):
        message = lane.next()
        counts.append(message.delivery_count)
        transport.nack(message, requeue=True)
    assert counts == [1, 2]  # limit N: at most N+1 deliveries, the first from the queue

    dead = Inbox(transport, dlq_name(qname), auto_ack=True).next()
    assert dead.body == b"poison"
    record = death_record(dead)
    assert record is not None
    assert (record.reason, record.queue) == ("delivery_limit", qname)
    assert record.count >= 1
    assert dead.headers.get("x-first-death-reason") in ("delivery_limit", b"delivery_limit")
    transport.poll(0.2)
    assert inbox.messages == []
    assert transport.fetch(retry_name(qname)) is None


def test_dead_letter_records_reason(transport: Transport, qname: str) -> None:
    transport.publish(out(qname, b"\x00not json"))
    inbox = Inbox(transport, qname, prefetch=1)
    transport.dead_letter(inbox.next(), "malformed: body is not JSON")

    dead = Inbox(transport, dlq_name(qname), auto_ack=True).next()
    assert dead.body == b"\x00not json"
    record = death_record(dead)
    assert record is not None
    assert (record.reason, record.queue, record.count) == ("malformed", qname, 1)
    assert "not JSON" in record.detail
    wait_until(lambda: transport.queue_depth(qname).ready == 0, what="input gone")


def test_hand_back_does_not_count_toward_the_limit(transport: Transport, qname: str) -> None:
    transport.declare_queue(qname, delivery_limit=1)
    original = out(qname, "drain me")
    transport.publish(original)
    inbox = Inbox(transport, qname, prefetch=1)
    for _ in range(4):
        message = inbox.next()
        assert message.delivery_count == 1
        transport.hand_back(message)

    last = inbox.next()
    assert last.body == b"drain me"
    assert last.delivery_count == 1
    assert last.message_id == original.message_id
    assert int(last.headers[HANDBACK_HEADER]) == 4
    transport.ack(last)
    assert transport.queue_depth(dlq_name(qname)).ready == 0


# -- commit ------------------------------------------------------------------------------------
def test_commit_publishes_outputs_then_acks(transport: Transport, qname: str) -> None:
    out_queue = unique("zt.out")
    transport.publish(out(qname, "in"))
    inbox = Inbox(transport, qname, prefetch=1)
    future = transport.commit([out(out_queue, "o1"), out(out_queue, "o2")], ack=inbox.next())
    transport.flush(10)
    assert future.result(timeout=10) is None

    got = Inbox(transport, out_queue, auto_ack=True).wait(2)
    assert bodies(got) == [b"o1", b"o2"]
    wait_until(lambda: transport.queue_depth(qname).ready == 0, what="input acked")
    transport.poll(0.2)
    assert inbox.messages == []


def test_commit_with_unroutable_output_fails_and_returns_input(
    transport: Transport, qname: str
) -> None:
    """Refused at once (input unsettled, for the caller) or by the broker (input returned)."""
    transport.publish(out(qname, "in"))
    inbox = Inbox(transport, qname, prefetch=1)
    nowhere = Outgoing(
        destination="amq.direct", kind="exchange", routing_key=unique("nobody"), body=b"x"
    )
    message = inbox.next()
    try:
        future = transport.commit([nowhere], ack=message)
    except UnroutableError:  # found before anything was sent: the caller settles the input
        transport.nack(message, requeue=True)
    else:
        with pytest.raises(TransportError):
            transport.flush(10)
        assert isinstance(future.exception(timeout=10), TransportError)

    again = Lane(transport, retry_name(qname)).next()
    assert again.body == b"in" and again.delivery_count == 1
    inbox.close()
    assert inbox.messages == []


# -- routing -----------------------------------------------------------------------------------
def test_unroutable_exchange_publish_raises(transport: Transport) -> None:
    with pytest.raises(UnroutableError):
        transport.publish(
            Outgoing(
                destination="amq.direct", kind="exchange", routing_key=unique("nobody"), body=b"x"
            )
        )


def test_publish_to_new_queue_declares_it(transport: Transport, qname: str) -> None:
    transport.publish(out(qname, "early"))
    wait_until(lambda: transport.queue_depth(qname).ready == 1, what="message waiting")
    assert Inbox(transport, qname, auto_ack=True).next().body == b"early"


def test_delete_queue_drops_its_messages_and_a_missing_queue_is_fine(
    transport: Transport, qname: str
) -> None:
    transport.publish_many([out(qname, "a"), out(qname, "b")])
    transport.publish(out(dlq_name(qname), "dead"))
    wait_until(lambda: transport.queue_depth(qname).ready == 2, what="two messages queued")
    transport.delete_queue(qname)
    assert transport.queue_depth(qname).ready == 0
    wait_until(lambda: transport.queue_depth(dlq_name(qname)).ready == 1, what="DLQ kept")
    transport.delete_queue(qname)  # already gone: fine
    transport.publish(out(qname, "c"))  # declared again on use
    assert bodies(Inbox(transport, qname, auto_ack=True).wait(1)) == [b"c"]


def test_broadcast_reaches_every_subscriber(backend: Backend) -> None:
    topic = unique("zt.topic")
    publisher = backend.make()
    publisher.publish(out(topic, "nobody listens", kind="topic"))  # fine: no listener

    listeners = [backend.make() for _ in range(2)]
    inboxes = [Inbox(t, topic, broadcast=True) for t in listeners]
    helper = backend.spawn("broadcast", topic)
    helper.wait_lines(lambda lines: "ready" in lines)

    publisher.publish(out(topic, "hello", kind="topic"))
    for inbox in inboxes:
        assert bodies(inbox.wait(1)) == [b"hello"]
    helper.wait_lines(lambda lines: any(line.startswith("got hello") for line in lines))


# -- malformed bodies --------------------------------------------------------------------------
def test_malformed_bodies_are_delivered_flagged(transport: Transport, qname: str) -> None:
    payloads = [b"\xff\xfe\x00binary", b"{not json", b"", b'{"ok": true}']
    transport.publish_many([out(qname, body) for body in payloads])
    got = Inbox(transport, qname, auto_ack=True).wait(4)
    assert bodies(got) == payloads
    assert [m.malformed is not None for m in got] == [True, True, True, False]
    assert got[3].json() == {"ok": True}


# -- time --------------------------------------------------------------------------------------
def test_delayed_message_is_not_visible_before_its_time(transport: Transport, qname: str) -> None:
    transport.declare_queue(qname)
    start = time.monotonic()
    transport.publish(out(qname, "later", delay=1.0))
    transport.publish(out(qname, "now"))
    inbox = Inbox(transport, qname, auto_ack=True)

    assert inbox.next().body == b"now"
    later = inbox.next(timeout=15)
    assert later.body == b"later"
    assert time.monotonic() - start >= 0.9


def test_expired_message_is_never_delivered(transport: Transport, qname: str) -> None:
    transport.declare_queue(qname)
    start = time.monotonic()
    transport.publish(out(qname, "stale", expiration=0.2))
    wait_until(lambda: time.monotonic() - start > 0.4, what="expiry time to pass")
    transport.publish(out(qname, "fresh"))

    inbox = Inbox(transport, qname, auto_ack=True)
    assert inbox.next().body == b"fresh"
    transport.poll(0.2)
    assert inbox.messages == []


# -- inspection --------------------------------------------------------------------------------
def test_queue_depth_counts_ready_unacked_and_consumers(backend: Backend, qname: str) -> None:
    transport = backend.make()
    assert transport.queue_depth(unique("zt.none")) in (QueueDepth(0, 0, 0), QueueDepth(0, None, 0))
    transport.declare_queue(qname)
    transport.publish_many([out(qname, str(i)) for i in range(3)])
    wait_until(lambda: transport.queue_depth(qname).ready == 3, what="3 ready")
    assert transport.queue_depth(qname).consumers == 0

    consumer = backend.make()
    Inbox(consumer, qname, prefetch=1).wait(1)

    def depth_seen() -> bool:
        depth = transport.queue_depth(qname)
        return depth.ready == 2 and depth.unacked in (1, None) and depth.consumers == 1

    wait_until(
        depth_seen, what=lambda: f"2 ready, 1 unacked, 1 consumer: {transport.queue_depth(qname)}"
    )

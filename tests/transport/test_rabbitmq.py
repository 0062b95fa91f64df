"""RabbitMQ-specific behaviour of the pika transport, against the real broker on 127.0.0.1:5672.

The shared conformance suite (test_conformance.py beside this file) covers what both transports
must do; these tests cover what only RabbitMQ has: quorum-queue arguments,
returned messages, holding queues for delays, reconnection and broker restarts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pika
import pytest
from testsupport import port_open, unavailable, wait_until

from zhpc.errors import TransportError, UnroutableError
from zhpc.message import Message, Outgoing
from zhpc.transport import death_record
from zhpc.transport.accounting import retry_name
from zhpc.transport.rabbitmq import RabbitMQTransport

URL = os.environ.get("ZHPC_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
HOST, PORT = "127.0.0.1", 5672


def _require_broker() -> None:
    if not port_open(PORT, HOST, timeout=1):
        unavailable(f"no RabbitMQ broker listens on {HOST}:{PORT}")


pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(120)]


@pytest.fixture
def names() -> Iterator[Callable[[str], str]]:
    """Unique queue names; deleted (with their DLQs) afterwards."""
    _require_broker()
    made: list[str] = []

    def make(stem: str) -> str:
        name = f"test.{stem}.{uuid.uuid4().hex[:10]}"
        made.append(name)
        return name

    yield make
    conn = pika.BlockingConnection(pika.URLParameters(URL))
    try:
        for name in made:
            for queue in (name, f"retry.{name}", f"dlq.{name}"):
                ch = conn.channel()
                ch.queue_delete(queue)
                ch.close()
    finally:
        conn.close()


@pytest.fixture
def transport() -> Iterator[RabbitMQTransport]:
    _require_broker()
    t = RabbitMQTransport(URL, connection_attempts=3, retry_delay=0.1)
    t.connect()
    yield t
    t.close()


def collect(t: RabbitMQTransport, queue: str, *, prefetch: int = 10) -> list[Message]:
    got: list[Message] = []
    t.subscribe(queue, got.append, prefetch=prefetch)
    return got


def poll_until(t: RabbitMQTransport, condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``t`` (it delivers in poll) until ``condition`` holds."""

    def polled() -> bool:
        if not condition():
            t.poll(0.05)
        return condition()

    wait_until(polled, timeout, interval=0, what=repr(condition))


# -- topology and the wire ---------------------------------------------------------------------
def test_work_queues_have_a_retry_lane_then_a_dlq(transport, names):
    queue = names("limit")
    transport.declare_queue(queue, delivery_limit=2)
    # exactly these arguments: declaring them again is accepted, anything else is refused
    expected = {
        queue: {"x-delivery-limit": 0, "x-dead-letter-routing-key": f"retry.{queue}"},
        f"retry.{queue}": {"x-delivery-limit": 1, "x-dead-letter-routing-key": f"dlq.{queue}"},
    }
    conn = pika.BlockingConnection(pika.URLParameters(URL))
    try:
        for name, args in expected.items():
            conn.channel().queue_declare(
                name,
                durable=True,
                arguments={
                    "x-queue-type": "quorum",
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                    **args,
                },
            )
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            conn.channel().queue_declare(
                queue, durable=True, arguments={"x-queue-type": "quorum", "x-delivery-limit": 5}
            )
    finally:
        conn.close()

    transport.publish(Outgoing.json(queue, {"n": 1}))
    got = collect(transport, queue)
    poll_until(transport, lambda: len(got) == 1)
    assert got[0].delivery_count == 1 and not got[0].redelivered
    transport.nack(got[0], requeue=True)  # from the work queue: to the lane, uncounted
    lane = []
    for expected_count in (1, 2):  # limit 2: the first delivery, then two from the lane
        message = poll_fetch(transport, f"retry.{queue}")
        assert message.delivery_count == expected_count
        lane.append(message)
        transport.nack(message, requeue=True)

    dead = collect(transport, f"dlq.{queue}")
    poll_until(transport, lambda: len(dead) == 1)
    record = death_record(dead[0])
    assert record is not None and record.reason == "delivery_limit" and record.queue == queue
    assert dead[0].json() == {"n": 1}
    assert dead[0].message_id == got[0].message_id
    transport.ack(dead[0])
    assert len(got) == 1 and transport.fetch(f"retry.{queue}") is None


def poll_fetch(transport: RabbitMQTransport, queue: str, timeout: float = 10) -> Message:
    found: list[Message] = []
    wait_until(
        lambda: found.append(transport.fetch(queue)) or found[-1] is not None,
        timeout=timeout,
        what=f"a message on {queue}",
    )
    return found[-1]


def test_message_ids_headers_and_persistence_on_the_wire(transport, names):
    queue = names("wire")
    out = Outgoing.json(queue, {"a": 1}, headers={"workflows-recipe": True})
    transport.publish(out)
    conn = pika.BlockingConnection(pika.URLParameters(URL))
    try:
        method, props, body = conn.channel().basic_get(queue, auto_ack=True)
    finally:
        conn.close()
    assert method is not None and body == b'{"a":1}'
    assert props.delivery_mode == 2
    assert props.message_id == out.message_id
    assert props.headers["workflows-recipe"] is True


def test_message_from_a_zocalo_style_sender_is_received(transport, names):
    """A workflows-style send (default exchange, no zhpc headers) arrives with its AMQP id."""
    queue = names("zocalo")
    transport.declare_queue(queue)
    conn = pika.BlockingConnection(pika.URLParameters(URL))
    try:
        conn.channel().basic_publish(
            "",
            queue,
            b"not json \xff",
            pika.BasicProperties(delivery_mode=2, message_id="m-1", headers={"x": 1}),
        )
    finally:
        conn.close()
    got = collect(transport, queue)
    poll_until(transport, lambda: len(got) == 1)
    assert got[0].message_id == "m-1" and got[0].headers == {"x": 1}
    assert got[0].malformed is not None
    transport.ack(got[0])


def test_existing_classic_queue_is_used_as_it_is(transport, names, caplog):
    queue = names("classic")
    conn = pika.BlockingConnection(pika.URLParameters(URL))
    try:
        conn.channel().queue_declare(queue, durable=True)
    finally:
        conn.close()
    with caplog.at_level(logging.INFO, logger="zhpc.transport.rabbitmq"):
        transport.publish(Outgoing.json(queue, {"n": 1}))
        transport.publish(Outgoing.json(queue, {"n": 2}))
    assert sum("exists with other arguments" in r.getMessage() for r in caplog.records) == 1
    assert transport.queue_depth(queue).ready == 2
    got = collect(transport, queue)
    poll_until(transport, lambda: len(got) == 2)
    assert [m.json()["n"] for m in got] == [1, 2]


def test_queue_depth(transport, names):
    queue = names("depth")
    assert transport.queue_depth(queue).ready == 0  # missing queue: zeros
    transport.publish_many([Outgoing.json(queue, {"n": i}) for i in range(3)])
    depth = transport.queue_depth(queue)
    assert (depth.ready, depth.unacked, depth.consumers) == (3, None, 0)
    collect(transport, queue, prefetch=1)
    wait_until(lambda: transport.queue_depth(queue).consumers == 1, what="consumer count")


# -- unroutable, commit, dead letters, hand-back ------------------------------------------------
def test_unroutable_publish_raises(transport):
    with pytest.raises(UnroutableError):
        transport.publish(
            Outgoing(
                destination="amq.direct", kind="exchange", routing_key=uuid.uuid4().hex, body=b"{}"
            )
        )
    with pytest.raises(TransportError, match="does not exist"):
        transport.publish(
            Outgoing(destination=f"no.such.{uuid.uuid4().hex}", kind="exchange", body=b"{}")
        )
    # the work channel survived both
    transport.publish(Outgoing(destination="amq.fanout", kind="topic", body=b"{}"))


def test_commit_with_an_unroutable_output_fails_and_returns_the_input(transport, names):
    queue = names("commitfail")
    transport.publish(Outgoing.json(queue, {"n": 1}))
    got = collect(transport, queue)
    poll_until(transport, lambda: len(got) == 1)
    bad = Outgoing(
        destination="amq.direct", kind="exchange", routing_key=uuid.uuid4().hex, body=b"{}"
    )
    future = transport.commit([Outgoing.json(names("unused"), {}), bad], got[0])
    with pytest.raises(UnroutableError):
        future.result(10)
    again = poll_fetch(transport, f"retry.{queue}")  # the input came back, to the lane
    assert again.message_id == got[0].message_id and again.delivery_count == 1
    with pytest.raises(TransportError):
        transport.flush(5)


def test_commits_pipeline_and_ack_inputs_after_outputs_confirm(transport, names):
    inq, outq = names("in"), names("out")
    n = 300
    transport.publish_many([Outgoing.json(inq, {"n": i}) for i in range(n)])
    futures = []

    def work(message: Message) -> None:
        futures.append(transport.commit([Outgoing.json(outq, message.json())], message))

    transport.subscribe(inq, work, prefetch=50)
    poll_until(transport, lambda: len(futures) == n)
    transport.flush(30)
    assert all(f.done() and f.exception() is None for f in futures)
    wait_until(lambda: transport.queue_depth(outq).ready == n, what="outputs")
    # inputs acked: nothing ready, and nothing comes back after unsubscribing and reconnecting
    transport.close()
    transport.connect()
    assert transport.queue_depth(inq).ready == 0


def test_dead_letter_and_hand_back(transport, names):
    queue = names("dl")
    transport.publish_many([Outgoing.json(queue, {"n": 1}), Outgoing.json(queue, {"n": 2})])
    got = collect(transport, queue)
    poll_until(transport, lambda: len(got) == 2)
    transport.dead_letter(got[0], "malformed: bad recipe")
    transport.hand_back(got[1])
    poll_until(transport, lambda: len(got) == 3)
    back = got[2]
    assert back.json() == {"n": 2} and back.message_id == got[1].message_id
    assert back.headers["zhpc-handbacks"] == 1 and back.delivery_count == 1
    transport.ack(back)

    dead = collect(transport, f"dlq.{queue}")
    poll_until(transport, lambda: len(dead) == 1)
    record = death_record(dead[0])
    assert record is not None
    assert (record.reason, record.queue, record.detail) == (
        "malformed",
        queue,
        "malformed: bad recipe",
    )
    assert record.count == 1  # delivered once before it was moved
    assert dead[0].message_id == got[0].message_id
    transport.ack(dead[0])


def test_delay_and_expiry(transport, names):
    queue = names("delay")
    transport.declare_queue(queue)
    got = collect(transport, queue)
    sent = time.monotonic()
    transport.publish(Outgoing.json(queue, {"late": True}, delay=0.5))
    poll_until(transport, lambda: len(got) == 1)
    assert time.monotonic() - sent >= 0.45
    transport.ack(got[0])

    expiring = names("expiry")
    transport.publish(Outgoing.json(expiring, {}, expiration=0.05))
    wait_until(lambda: transport.queue_depth(expiring).ready == 0, what="expiry")
    with pytest.raises(TransportError, match="both"):
        transport.publish(Outgoing.json(queue, {}, delay=1, expiration=1))


def test_broadcast_reaches_every_subscriber_and_nobody_is_fine(transport):
    topic = f"test.topic.{uuid.uuid4().hex[:8]}"
    transport.publish(Outgoing.json(topic, {"before": True}, kind="topic"))  # no listener: fine
    a: list[Message] = []
    b: list[Message] = []
    transport.subscribe_broadcast(topic, a.append)
    transport.subscribe_broadcast(topic, b.append)
    transport.publish(Outgoing.json(topic, {"n": 1}, kind="topic"))
    poll_until(transport, lambda: len(a) == 1 and len(b) == 1)
    assert a[0].json() == {"n": 1}


# -- connecting and reconnecting ----------------------------------------------------------------
def test_gives_up_with_one_clear_line_and_no_password(caplog):
    sock = socket.socket()
    sock.bind((HOST, 0))  # bound, not listening: connections are refused
    port = sock.getsockname()[1]
    try:
        t = RabbitMQTransport(
            f"amqp://guest:s3cret@{HOST}:{port}/%2F", connection_attempts=2, retry_delay=0.01
        )
        with caplog.at_level(logging.WARNING), pytest.raises(TransportError) as info:
            t.connect()
    finally:
        sock.close()
    assert "after 2 attempt(s)" in str(info.value) and "\n" not in str(info.value)
    retries = [r for r in caplog.records if "attempt 1 of 2" in r.getMessage()]
    assert len(retries) == 1
    assert "s3cret" not in caplog.text and "s3cret" not in str(info.value)


class _LateProxy:
    """A TCP port that refuses connections until ``listen()``, then forwards to the broker."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, 0))
        self.port = self.sock.getsockname()[1]

    def listen(self) -> None:
        self.sock.listen(8)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection((HOST, PORT))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()


def test_first_connection_is_retried_until_the_broker_listens(caplog, names):
    queue = names("late")
    proxy = _LateProxy()
    t = RabbitMQTransport(
        f"amqp://guest:guest@{HOST}:{proxy.port}/%2F", connection_attempts=20, retry_delay=0.05
    )
    errors: list[BaseException] = []

    def connect() -> None:
        try:
            t.connect()
        except BaseException as exc:
            errors.append(exc)

    with caplog.at_level(logging.WARNING, logger="zhpc.transport.rabbitmq"):
        thread = threading.Thread(target=connect)
        thread.start()
        wait_until(
            lambda: "attempt 2 of 20" in caplog.text, interval=0.01, what="two failed attempts"
        )
        proxy.listen()
        thread.join(30)
    try:
        assert not errors and not thread.is_alive()
        t.publish(Outgoing.json(queue, {"ok": True}))
        assert t.queue_depth(queue).ready == 1
    finally:
        t.close()
        proxy.close()


def _rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", *args], check=True, capture_output=True, timeout=60, text=True
    )
    return done.stdout


def _dead_lettering_works() -> bool:
    """RabbitMQ 3.10's quorum dead-letter supervisor can die in a crash loop right after
    start_app while queues recover (seen here); every later at-least-once quorum queue
    then fails with INTERNAL_ERROR until the app restarts."""
    return "<" in _rabbitmqctl("eval", "whereis(rabbit_fifo_dlx_sup).")


def _restart_app() -> None:
    """stop_app/start_app, again while the broker came back without its dead-letter
    supervisor, so the tests after this one get a working broker."""
    for _attempt in range(3):
        _rabbitmqctl("stop_app")
        _rabbitmqctl("start_app")
        _rabbitmqctl("await_startup")
        if _dead_lettering_works():
            return
    raise AssertionError("RabbitMQ came back without its dead-letter supervisor 3 times")


@pytest.mark.timeout(240)
def test_broker_restart_mid_stream_loses_nothing(names, caplog):
    """stop_app/start_app while a publisher and a consumer run: both resume, nothing is lost."""
    caplog.set_level(logging.INFO, logger="zhpc.transport.rabbitmq")
    _require_broker()
    if shutil.which("rabbitmqctl") is None or os.geteuid() != 0:
        pytest.skip("needs rabbitmqctl as root to restart the broker")
    queue = names("restart")
    options = {"connection_attempts": 60, "retry_delay": 0.2}
    publisher = RabbitMQTransport(URL, **options)
    consumer = RabbitMQTransport(URL, **options)
    publisher.connect()
    consumer.connect()
    published: list[int] = []
    publish_errors: list[BaseException] = []
    received: set[int] = set()
    stop = threading.Event()
    publishing_done = threading.Event()

    def publish_loop() -> None:
        i = 0
        try:
            while not stop.is_set():
                try:
                    publisher.publish(Outgoing.json(queue, {"i": i}))
                    published.append(i)
                except TransportError as exc:  # reported, so not silently dropped
                    publish_errors.append(exc)
                i += 1
        finally:
            publishing_done.set()

    def on_message(message: Message) -> None:
        received.add(message.json()["i"])
        consumer.ack(message)

    def consume_loop() -> None:
        # Done only once the publisher has stopped: a publish in flight when ``stop`` is
        # set is confirmed and appended to ``published`` after the check would pass.
        # A message delivered but unacked when the connection dropped comes back as a
        # redelivery, which the failure accounting routes to the retry lane: read it too.
        consumer.subscribe(queue, on_message, prefetch=20)
        while not (publishing_done.is_set() and set(published) <= received):
            consumer.poll(0.1)
            with contextlib.suppress(TransportError):  # reconnecting: the next turn reads it
                while (returned := consumer.fetch(retry_name(queue))) is not None:
                    on_message(returned)
            if stop.is_set() and time.monotonic() > give_up:
                return

    give_up = float("inf")
    publisher.declare_queue(queue)
    threads = [threading.Thread(target=publish_loop), threading.Thread(target=consume_loop)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(received) >= 100, what="the stream to flow")
        _restart_app()
        before = len(received)
        wait_until(lambda: len(received) >= before + 100, timeout=90, what="the stream to resume")
    finally:
        give_up = time.monotonic() + 60
        stop.set()
        for thread in threads:
            thread.join(90)
        publisher.close()
        consumer.close()
    text = caplog.text
    assert text.count("lost (") >= 2 and "resubscribed to" in text  # both really reconnected
    missing = set(published) - received
    assert not missing, f"{len(missing)} confirmed messages never arrived: {sorted(missing)[:10]}"
    assert len(published) > 200
    # publishes that raised were reported to the caller; they may or may not have arrived
    assert len(publish_errors) <= 3


@pytest.mark.timeout(300)
def test_consumer_timeout_is_detected_and_the_message_redelivered(names, caplog):
    """Needs a broker whose consumer_timeout is short (3.10 has only the global setting).

    Run with ZHPC_TEST_CONSUMER_TIMEOUT_MS set to the broker's value, e.g. after
    ``rabbitmqctl eval 'application:set_env(rabbit, consumer_timeout, 2000).'``
    (3.10 checks it about once a minute, so this takes up to ~70 s).
    """
    _require_broker()
    timeout_ms = os.environ.get("ZHPC_TEST_CONSUMER_TIMEOUT_MS")
    if not timeout_ms:
        pytest.skip("set ZHPC_TEST_CONSUMER_TIMEOUT_MS on a broker with a short consumer_timeout")
    queue = names("ctimeout")
    t = RabbitMQTransport(URL, connection_attempts=3, retry_delay=0.1)
    t.connect()
    try:
        t.publish(Outgoing.json(queue, {"slow": True}))
        got = collect(t, queue)
        with caplog.at_level(logging.ERROR, logger="zhpc.transport.rabbitmq"):
            poll_until(t, lambda: len(got) == 1)
            # hold it unacked; the broker closes the channel and the transport resubscribes
            poll_until(t, lambda: len(got) == 2, timeout=180)
        assert "consumer_timeout" in caplog.text
        assert got[1].message_id == got[0].message_id and got[1].redelivered
        with pytest.raises(TransportError):
            t.commit([], got[0]).result(10)  # the first delivery's channel is gone
        t.ack(got[1])
    finally:
        t.close()


def test_a_consume_whose_channel_is_lost_before_the_answer_still_subscribes(transport, names):
    """A basic.consume the broker answers by closing the channel (here: its queue was
    deleted behind the transport's back; in CI once, a 541 INTERNAL_ERROR) must not leave
    subscribe waiting for an answer that never comes: it is tried again on the next
    channel, declaring the queue again, and the subscription works."""
    queue = names("lost-consume")
    transport.declare_queue(queue)
    conn = pika.BlockingConnection(pika.URLParameters(URL))
    try:
        conn.channel().queue_delete(queue)  # the transport still believes it declared
    finally:
        conn.close()
    done: list[BaseException | str] = []

    def subscribe() -> None:
        try:
            done.append(transport.subscribe(queue, got.append, prefetch=10))
        except BaseException as exc:
            done.append(exc)

    got: list[Message] = []
    thread = threading.Thread(target=subscribe, daemon=True)
    thread.start()
    thread.join(20)  # the answer it waited for before took 60 s, then it failed
    assert done and isinstance(done[0], str), done or "subscribe still waiting after 20 s"
    transport.publish(Outgoing(queue, b"after"))
    poll_until(transport, lambda: len(got) == 1)
    assert got[0].body == b"after"

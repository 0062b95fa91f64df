"""Loss windows of the RabbitMQ transport found by review (issue 12, items 2, 3 and 5).

All on the real broker. The connection of a transport under test is closed by the
broker itself (``rabbitmqctl close_connection``), never by faking pika.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pika
import pytest
from testsupport import port_open, unavailable, wait_until

from zhpc.errors import TransportError
from zhpc.message import Outgoing
from zhpc.transport.rabbitmq import RabbitMQTransport

URL = os.environ.get("ZHPC_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(180)]


def _rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", *args], check=True, capture_output=True, timeout=60, text=True
    )
    return done.stdout


def _own_connection_ports() -> set[int]:
    """Local ports of this process's connections to the broker."""
    out = subprocess.run(
        ["ss", "-tnpH", "dst", "127.0.0.1:5672"], capture_output=True, text=True, check=True
    ).stdout
    ports = set()
    for line in out.splitlines():
        if f"pid={os.getpid()}," in line:
            match = re.search(r"127\.0\.0\.1:(\d+)\s+127\.0\.0\.1:5672", line)
            if match:
                ports.add(int(match.group(1)))
    return ports


def _close_connection(port: int) -> None:
    """The broker closes the connection from local ``port`` (found by its name)."""
    for line in _rabbitmqctl("list_connections", "-q", "pid", "name").splitlines():
        pid, _, name = line.partition("\t")
        if name.strip() == f"127.0.0.1:{port} -> 127.0.0.1:5672":
            _rabbitmqctl("close_connection", pid.strip(), "zhpc test")
            return
    raise AssertionError(f"no broker connection from port {port}")


@pytest.fixture
def broker() -> None:
    if not port_open(5672, "127.0.0.1", timeout=1):
        unavailable("no RabbitMQ broker listens on 127.0.0.1:5672")


@pytest.fixture
def cleanup() -> Iterator[Callable[[str, str], None]]:
    """Register queues/exchanges to delete afterwards."""
    made: list[tuple[str, str]] = []
    yield lambda kind, name: made.append((kind, name))
    conn = pika.BlockingConnection(pika.URLParameters(URL))
    try:
        for kind, name in made:
            ch = conn.channel()
            if kind == "queue":
                ch.queue_delete(name)
            else:
                ch.exchange_delete(name)
            ch.close()
    finally:
        conn.close()


def test_a_lost_connection_surfaces_as_transport_error_from_every_call(broker, cleanup):
    """Item 2: close the connection while declares are in flight; only TransportError escapes.

    A heartbeat is a broadcast on a (declared) fanout exchange; a service declares its queues
    (quorum queues: slow to declare). Every round here declares new ones, so a topology call
    is nearly always in flight when the broker closes the connection.
    """
    before = _own_connection_ports()
    t = RabbitMQTransport(URL, connection_attempts=5, retry_delay=0.1)
    t.connect()
    stop = threading.Event()
    errors: list[BaseException] = []
    calls = 0
    topics: list[str] = []

    def heartbeats() -> None:
        nonlocal calls
        while not stop.is_set():
            topic = f"test.topic.{uuid.uuid4().hex[:10]}"
            topics.append(topic)
            try:
                t.declare_queue(topic)
                t.publish(Outgoing.json(topic, {"n": calls}, kind="topic"))
            except BaseException as exc:  # what a service's heartbeat would see
                errors.append(exc)
            calls += 1

    worker = threading.Thread(target=heartbeats, daemon=True)
    try:
        (port,) = _own_connection_ports() - before
        worker.start()
        for _kill in range(2):
            wait_until(lambda: calls > 3, 60)
            _close_connection(port)
            old = {port}
            wait_until(
                lambda: _own_connection_ports() - before - old,  # noqa: B023
                60,
                what="a new connection",
            )
            (port,) = _own_connection_ports() - before
        stop.set()
        worker.join(120)
    finally:
        stop.set()
        t.close()
        for topic in topics:
            cleanup("exchange", topic)
            for queue in (topic, f"retry.{topic}", f"dlq.{topic}"):
                cleanup("queue", queue)
    assert not worker.is_alive()
    foreign = [e for e in errors if not isinstance(e, TransportError)]
    assert not foreign, f"pika's own errors escaped: {foreign[:3]!r}"


@contextlib.contextmanager
def _disk_alarm() -> Iterator[None]:
    """A real disk alarm on the (shared) broker, for as short a time as possible.

    Every publisher on the broker is blocked meanwhile: keep the body short.
    """
    previous = int(_rabbitmqctl("eval", "rabbit_disk_monitor:get_disk_free_limit().").strip())
    try:
        _rabbitmqctl("set_disk_free_limit", str(10**18))
        wait_until(
            lambda: "disk" in _rabbitmqctl("eval", "rabbit_alarm:get_alarms()."),
            30,
            interval=0.2,
            what="the disk alarm",
        )
        yield
    finally:
        _rabbitmqctl("set_disk_free_limit", str(previous))


def test_zhpc_go_spools_instead_of_hanging_on_a_blocked_broker(broker, cleanup, tmp_path):
    """Item 3: under a memory/disk alarm RabbitMQ blocks publishers; ``zhpc go`` must spool."""
    import yaml

    queue = f"test.go.blocked.{uuid.uuid4().hex[:10]}"
    for name in (queue, f"retry.{queue}", f"dlq.{queue}"):
        cleanup("queue", name)
    home = tmp_path / "home"
    home.mkdir()
    config = home / "zhpc.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "broker": {
                    "url": URL,
                    "connection_attempts": 2,
                    "retry_delay": 0.1,
                    "confirm_timeout": 5,
                },
                "services": {"dispatcher": {"queue": queue}},
            }
        )
    )
    env = {**os.environ, "ZHPC_HOME": str(home)}
    env.pop("ZHPC_CONFIG", None)
    argv = [
        sys.executable,
        "-m",
        "zhpc",
        "--config",
        str(config),
        "go",
        "demo",
        "-s",
        "output_filename=out.jsonl",
    ]
    # Declared before the alarm, so the only thing left to block is the publish.
    with RabbitMQTransport(URL) as t:
        t.declare_queue(queue)
    with _disk_alarm():
        started = time.monotonic()
        try:
            done = subprocess.run(
                argv, env=env, capture_output=True, text=True, timeout=40, cwd=tmp_path
            )
        except subprocess.TimeoutExpired:
            pytest.fail("zhpc go hung on a blocked broker")
        took = time.monotonic() - started
    assert done.returncode == 3, done.stderr  # EXIT_SPOOLED
    assert "saved in the spool" in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert len(list((home / "spool").glob("*.json"))) == 1
    assert took < 35


def _queue_info(name: str) -> dict | None:
    """The management API's view of a queue (its arguments), None if there is none."""
    import base64
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:15672/api/queues/%2F/{urllib.parse.quote(name, safe='')}",
        headers={"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def test_a_delayed_message_survives_an_unroutable_target(broker, cleanup):
    """Item 5: the holding queue cannot expire with the message inside.

    On main it had ``x-expires`` (2 x delay + 60 s): unused that long (no publish to the
    same target and delay), RabbitMQ deleted it with the undeliverable message.
    """
    from zhpc.transport.rabbitmq.wire import delay_queue_name

    queue = f"test.delay.unroutable.{uuid.uuid4().hex[:10]}"
    holding = delay_queue_name("", queue, 1000)
    for name in (queue, f"retry.{queue}", f"dlq.{queue}", holding):
        cleanup("queue", name)
    with RabbitMQTransport(URL) as t:
        t.declare_queue(queue)
        t.publish(Outgoing.json(queue, {"late": True}, delay=1.0))
        info = _queue_info(holding)
        assert info is not None and info["durable"]
        assert "x-expires" not in info["arguments"], info["arguments"]
        t.delete_queue(queue)  # the target is unroutable when the delay ends
        # At-least-once dead-lettering keeps it (and resends it minutes later, when
        # RabbitMQ's dead-letter worker retries): it must stay, not expire with its queue.
        wait_until(
            lambda: (_queue_info(holding) or {}).get("messages") == 1,
            30,
            what="the message waiting in the holding queue",
        )


def test_a_service_outlives_a_broker_outage_longer_than_a_fetch_wait(
    broker, cleanup, monkeypatch, caplog
):
    """Chaos finding: a retry-lane fetch that waited out a broker outage ended the service
    with exit 2 (bad input) although the transport was still reconnecting. Now the lane waits
    for its next look; the service keeps running, processes what comes after the outage and
    drains with 0. The outage is a real one for this client only: its connection goes through
    a loopback forwarder that drops it and refuses new ones for a while."""
    import logging

    from testsupport import Forwarder, collect

    from zhpc.config import ServiceConfig
    from zhpc.recipe import RecipeWrapper
    from zhpc.service import Service, ServiceRunner
    from zhpc.transport.rabbitmq import transport as rabbit_transport

    class Double(Service):
        def process(self, rw: RecipeWrapper, payload: int) -> None:
            rw.send({"value": payload * 2})

    caplog.set_level(logging.WARNING)
    monkeypatch.setattr(rabbit_transport, "_FETCH_TIMEOUT_S", 1.0)
    queue, out = f"test.outage.{uuid.uuid4().hex[:10]}", f"test.outage-out.{uuid.uuid4().hex[:8]}"
    for name in (queue, f"retry.{queue}", f"dlq.{queue}", out, f"retry.{out}", f"dlq.{out}"):
        cleanup("queue", name)
    forwarder = Forwarder("127.0.0.1", 5672)
    direct = RabbitMQTransport(URL)
    direct.connect()
    through = RabbitMQTransport(
        f"amqp://guest:guest@127.0.0.1:{forwarder.port}/%2F",
        connection_attempts=60,
        retry_delay=0.2,
    )
    through.connect()
    runner = ServiceRunner(
        Double("double", ServiceConfig(queue=queue, idle_timeout=120, retry_interval=0.2)), through
    )
    results: list[object] = []
    # The cut must find the runner in its loop: a cut during its start-up publishes (status,
    # first heartbeat) holds it in that publish for up to a minute, not in a lane fetch.
    fetches: list[str] = []
    fetch = through.fetch

    def counted_fetch(name, *args, **kwargs):
        fetches.append(name)
        return fetch(name, *args, **kwargs)

    monkeypatch.setattr(through, "fetch", counted_fetch)

    def outage_then_work() -> None:
        """Beside the runner (which needs the main thread for its signals)."""
        try:
            wait_until(
                lambda: direct.queue_depth(queue).consumers == 1,
                timeout=60,
                what="the service to consume",
            )
            # Two lane reads: the first heartbeat (sent between them) is behind the runner.
            wait_until(
                lambda: len(fetches) >= 2,
                timeout=60,
                what="the runner to read its retry lane twice",
            )
            forwarder.refusing = True
            forwarder.cut()
            wait_until(
                lambda: "cannot read retry." in caplog.text,
                timeout=60,
                what="a fetch to wait out the outage",
            )
            forwarder.refusing = False
            recipe = {
                "1": {"service": "double", "queue": queue, "output": 2},
                "2": {"service": "sink", "queue": out},
                "start": [[1, 21]],
            }
            direct.publish_many(RecipeWrapper.from_recipe(recipe).start())
            results.extend(m.json()["payload"] for m in collect(direct, out, 1, timeout=90))
        except BaseException as exc:
            results.append(exc)
        finally:
            runner.drain.request("test over")

    direct.declare_queue(out)
    helper = threading.Thread(target=outage_then_work, daemon=True)
    helper.start()
    try:
        code = runner.run()  # on the old code: TransportError "did not answer within 1.0 s"
    finally:
        forwarder.refusing = False
        runner.drain.request("test over")
        helper.join(120)
        forwarder.close()
        through.close()
        direct.close()
    assert results == [{"value": 42}]
    assert code == 0

"""STOMP-only behaviour on the real ActiveMQ: a connection cut mid-stream.

The transport connects through a small TCP forwarder on loopback that the test
can cut, as a network failure would; ActiveMQ itself keeps running.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conformance_support import unique
from testsupport import STOMP_URL, Forwarder, wait_until

from zhpc.config import BrokerConfig, TLSConfig
from zhpc.errors import TransportError
from zhpc.message import Message, Outgoing
from zhpc.transport import get_transport
from zhpc.transport.accounting import retry_name

pytestmark = pytest.mark.activemq

#: The STOMP+SSL connector of scripts/setup-activemq and the certificate it made.
SSL_URL = os.environ.get("ZHPC_TEST_STOMP_SSL_URL", "stomp+ssl://127.0.0.1:61614")
SSL_CA = Path(
    os.environ.get("ZHPC_TEST_STOMP_SSL_CA", "/var/lib/activemq/zhpc-test-cluster/tls/broker.pem")
)


@pytest.fixture
def forwarder(activemq_up: None) -> Iterator[Forwarder]:
    parts = urlsplit(STOMP_URL)
    found = Forwarder(parts.hostname or "127.0.0.1", parts.port or 61613)
    yield found
    found.close()


def test_a_cut_connection_is_restored_and_nothing_is_lost(forwarder: Forwarder) -> None:
    direct = get_transport(BrokerConfig(url=STOMP_URL))
    direct.connect()
    through = get_transport(
        BrokerConfig(url=f"stomp://127.0.0.1:{forwarder.port}", heartbeat=2, retry_delay=0.2)
    )
    through.connect()
    work, out = unique("zt.cut"), unique("zt.cut.out")
    total = 200
    inputs = {f"c{i}".encode() for i in range(total)}
    try:
        direct.publish_many([Outgoing(destination=work, body=b) for b in sorted(inputs)])
        done = [0]

        def step(message: Message) -> None:
            try:
                through.commit([Outgoing(destination=out, body=message.body)], ack=message)
            except Exception:  # the connection is gone: the broker gives the input out again
                return
            done[0] += 1

        through.subscribe(work, step, prefetch=20)
        wait_until(
            lambda: through.poll(0.05) is not None and done[0] >= 50,
            60,
            what="50 steps before the cut",
        )
        forwarder.cut()

        outputs: set[bytes] = set()
        got: list[Message] = []
        direct.subscribe(out, lambda m: (got.append(m), direct.ack(m)), prefetch=100)

        def all_done() -> bool:
            through.poll(0.05)
            direct.poll(0.05)
            outputs.update(m.body for m in got)
            message = through.fetch(retry_name(work))  # what came back after the cut
            if message is not None:
                step(message)
            return inputs <= outputs

        wait_until(all_done, 90, what=lambda: f"all inputs processed: {len(outputs)} of {total}")
    finally:
        for transport in (through, direct):
            for name in (work, out):
                with contextlib.suppress(Exception):
                    transport.delete_queue(name)
            transport.close()


def test_a_header_stomp_cannot_frame_arrives_intact_or_is_refused() -> None:
    """A NUL byte in a header value used to reach the wire as it was:
    ActiveMQ kept the NUL, stomp.py cut the delivered frame there, and the message came in
    without its id and body (the fuzz case fz-14-36 was dead-lettered as such a stump, its
    original acked). Such values now travel as JSON; keys that cannot be framed are refused."""
    transport = get_transport(BrokerConfig(url=STOMP_URL))
    transport.connect()
    queue = unique("zt.nul")
    hostile = {"nul": "a\x00b", "after": "z", "ctl": "\x1b\x7f\x01", "l": ["\x00"]}
    try:
        transport.publish(Outgoing(queue, b'{"value": 1}', headers=hostile, message_id="m-nul"))
        got: list[Message] = []
        wait_until(
            lambda: bool(got.extend(filter(None, [transport.fetch(queue)])) or got),
            30,
            what="the message back",
        )
        message = got[0]
        transport.ack(message)
        assert message.body == b'{"value": 1}'
        assert message.message_id == "m-nul"
        assert {k: message.headers.get(k) for k in hostile} == hostile
        for key in ("a\x00b", "a:b", "a\nb", "a\\b"):
            with pytest.raises(TransportError, match="cannot be sent over STOMP"):
                transport.publish(Outgoing(queue, b"1", headers={key: "v"}))
        assert transport.fetch(queue) is None  # the refused ones were never sent
    finally:
        with contextlib.suppress(Exception):
            transport.delete_queue(queue)
        transport.close()


def test_a_frame_cut_by_another_clients_nul_header_is_not_settled() -> None:
    """Another client's NUL in a header makes stomp.py cut the delivered frame: the stump
    is not delivered (settling it would lose the message), the message stays on the broker."""
    import stomp

    parts = urlsplit(STOMP_URL)
    raw = stomp.Connection12([(parts.hostname or "127.0.0.1", parts.port or 61613)])
    raw.connect(wait=True)
    transport = get_transport(BrokerConfig(url=STOMP_URL))
    transport.connect()
    queue = unique("zt.cutframe")
    try:
        raw.send(
            f"/queue/{queue}",
            b"payload",
            headers={"zzz": "x\x00y", "persistent": "true"},
            receipt="sent",
        )
        wait_until(lambda: transport.queue_depth(queue).ready == 1, 30, what="the message queued")
        got: list[Message] = []
        transport.subscribe(queue, got.append, prefetch=1)
        wait_until(
            lambda: transport.queue_depth(queue).unacked == 1, 30, what="the broker handing it out"
        )
        transport.poll(0.5)
        assert got == []
    finally:
        transport.close()
        raw.disconnect()
    check = get_transport(BrokerConfig(url=STOMP_URL))
    check.connect()
    try:
        wait_until(lambda: check.queue_depth(queue).ready == 1, 30, what="the message kept")
    finally:
        with contextlib.suppress(Exception):
            check.delete_queue(queue)
        check.close()


def test_stomp_over_tls_verifies_the_broker_against_its_ca(activemq_up: None) -> None:
    transport = get_transport(BrokerConfig(url=SSL_URL, tls=TLSConfig(ca_file=SSL_CA)))
    transport.connect()
    queue = unique("zt.tls")
    try:
        transport.publish(Outgoing(queue, b"over tls", message_id="m-tls"))
        got: list[Message] = []
        wait_until(
            lambda: bool(got.extend(filter(None, [transport.fetch(queue)])) or got),
            30,
            what="the message back over TLS",
        )
        transport.ack(got[0])
        assert (got[0].body, got[0].message_id) == (b"over tls", "m-tls")
    finally:
        with contextlib.suppress(Exception):
            transport.delete_queue(queue)
        transport.close()


def test_a_broker_certificate_the_ca_does_not_verify_is_one_clear_error(
    activemq_up: None, tmp_path: Path
) -> None:
    other = tmp_path / "other.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(tmp_path / "other.key"),
            "-out",
            str(other),
        ],
        check=True,
        capture_output=True,
    )
    transport = get_transport(BrokerConfig(url=SSL_URL, tls=TLSConfig(ca_file=other)))
    with pytest.raises(TransportError) as caught:
        transport.connect()
    message = str(caught.value)
    assert "\n" not in message
    assert f"is not verified by the CA in {other}" in message
    assert "self-signed certificate" in message

"""STOMP-only behaviour on the real ActiveMQ: a connection cut mid-stream.

The transport connects through a small TCP forwarder on loopback that the test
can cut, as a network failure would; ActiveMQ itself keeps running.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from conformance_support import unique
from testsupport import STOMP_URL, Forwarder, wait_until

from zhpc.config import BrokerConfig
from zhpc.message import Message, Outgoing
from zhpc.transport import get_transport
from zhpc.transport.accounting import retry_name

pytestmark = pytest.mark.activemq


@pytest.fixture
def forwarder(activemq_up: None) -> Iterator[Forwarder]:
    parts = urlsplit(STOMP_URL)
    found = Forwarder(parts.hostname or "127.0.0.1", parts.port or 61613)
    yield found
    found.close()


def test_a_cut_connection_is_restored_and_nothing_is_lost(forwarder: Forwarder) -> None:
    direct = get_transport(BrokerConfig(url=STOMP_URL))
    direct.connect()
    through = get_transport(BrokerConfig(url=f"stomp://127.0.0.1:{forwarder.port}",
                                         heartbeat=2, retry_delay=0.2))
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
        wait_until(lambda: through.poll(0.05) is not None and done[0] >= 50, 60,
                   what="50 steps before the cut")
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

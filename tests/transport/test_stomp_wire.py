"""The STOMP transport's wire form, without a broker: names and header encoding."""

from __future__ import annotations

import pytest

from zhpc.errors import ConfigError, TransportError
from zhpc.message import Outgoing
from zhpc.transport.stomp.wire import (
    decode_headers,
    encode_headers,
    queue_destination,
    send_headers,
    server,
    zhpc_queue_name,
)


def test_destinations_are_workflows_and_activemq_names() -> None:
    assert queue_destination("per-image-analysis") == "/queue/per-image-analysis"
    assert queue_destination("retry.q") == "/queue/retry.q"
    assert queue_destination("dlq.q") == "/queue/ActiveMQ.DLQ.Queue.q"
    assert zhpc_queue_name("/queue/ActiveMQ.DLQ.Queue.q") == "dlq.q"
    assert zhpc_queue_name("/queue/q") == "q"


def test_headers_round_trip_with_their_types() -> None:
    headers = {
        "s": "text: with\ncolon",
        "i": 7,
        "b": True,
        "n": None,
        "raw": b"\x00\x01\xff",
        "l": [1, {"k": "v"}],
        "d": {"x": [True, None]},
    }
    wire = encode_headers(headers)
    assert all(isinstance(v, str) for v in wire.values())
    assert wire["s"] == headers["s"] and wire["i"] == "7"
    assert decode_headers(wire) == headers


def test_text_from_workflows_stays_text() -> None:
    assert decode_headers(
        {
            "workflows-recipe": "True",
            "destination": "/queue/q",
            "message-id": "ID:1",
            "redelivered": "false",
        }
    ) == {"workflows-recipe": "True"}


@pytest.mark.parametrize("key", ["destination", "a,b", "zhpc-json"])
def test_headers_that_would_not_arrive_intact_are_refused(key: str) -> None:
    with pytest.raises(TransportError):
        encode_headers({key: "x"})


def test_send_headers_carry_persistence_delay_and_id() -> None:
    out = Outgoing(destination="q", body=b"{}", delay=1.5)
    wire = send_headers(out)
    assert wire["persistent"] == "true" and wire["AMQ_SCHEDULED_DELAY"] == "1500"
    assert wire["zhpc-message-id"] == out.message_id
    assert "expires" in send_headers(Outgoing(destination="q", body=b"", expiration=2))


def test_urls() -> None:
    assert server("stomp://u:p%40ss@mq.example.org:61614") == (
        "mq.example.org",
        61614,
        "u",
        "p@ss",
        False,
    )
    assert server("stomp+ssl://mq")[1:] == (61613, None, None, True)
    with pytest.raises(ConfigError):
        server("amqp://mq")

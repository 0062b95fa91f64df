"""Messages as built and as received: non-finite numbers and absurd delays are refused."""

from __future__ import annotations

import math

import pytest

from zhpc import strictjson
from zhpc.message import MAX_DELAY, InvalidMessage, Message, Outgoing


@pytest.mark.parametrize("body", [b'{"a": NaN}', b"[Infinity]", b'{"a": -Infinity}', b"1e400"])
def test_a_received_body_with_a_non_finite_number_is_malformed(body: bytes) -> None:
    message = Message(body, {}, "q")
    assert message.malformed is not None and "not JSON" in message.malformed


def test_large_finite_numbers_are_still_json() -> None:
    assert Message(b'{"a": 1e300}', {}, "q").json() == {"a": 1e300}


@pytest.mark.parametrize("seconds", [math.inf, -math.inf, math.nan, 1e300, -1, MAX_DELAY + 1])
@pytest.mark.parametrize("name", ["delay", "expiration"])
def test_non_finite_or_absurd_delays_are_refused(name: str, seconds: float) -> None:
    with pytest.raises(InvalidMessage, match=name):
        Outgoing("q", b"{}", **{name: seconds})  # type: ignore[arg-type]


def test_a_payload_with_nan_is_not_sent_as_json() -> None:
    with pytest.raises(InvalidMessage, match="JSON"):
        Outgoing.json("q", {"score": math.nan})


def test_strict_json_round_trip_and_refusals() -> None:
    assert strictjson.loads(strictjson.dumps({"a": [1, 2.5, None]})) == {"a": [1, 2.5, None]}
    with pytest.raises(ValueError):
        strictjson.dumps(math.inf)
    with pytest.raises(strictjson.NonFiniteNumber):
        strictjson.loads("NaN")

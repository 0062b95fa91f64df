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


@pytest.mark.parametrize(
    ("text", "refusal"),
    [
        ("[NaN]", strictjson.NonFiniteNumber),
        ("-Infinity", strictjson.NonFiniteNumber),
        ('{"a": 1e400}', strictjson.NonFiniteNumber),
        ("1" * (strictjson.MAX_INT_DIGITS + 1), strictjson.NonFiniteNumber),
        ('{"a": 1,}', ValueError),
        ('{"a": 1} x', ValueError),
    ],
)
@pytest.mark.parametrize("as_bytes", [False, True])
def test_the_fast_decoder_refuses_what_json_refuses(
    text: str, refusal: type[Exception], as_bytes: bool
) -> None:
    """msgspec decodes valid documents; everything else still gets json's strict answer."""
    with pytest.raises(refusal):
        strictjson.loads(text.encode() if as_bytes else text)
    if as_bytes:
        with pytest.raises(refusal):
            strictjson.loads_utf8(text.encode())


@pytest.mark.parametrize(
    "text",
    [
        '{"a": [1, -0, 2.5e-3, 1E2, null, true, "\\u00e9", "\\ud800"]}',
        "9" * strictjson.MAX_INT_DIGITS,
        '{"a": 1, "a": 2}',
        "[" * 500 + "]" * 500,
    ],
)
def test_the_fast_decoder_reads_what_json_reads(text: str) -> None:
    """The same values as json (a lone surrogate escape and long integers go through json)."""
    import json

    assert strictjson.loads(text) == json.loads(text)
    assert strictjson.loads_utf8(text.encode()) == json.loads(text)


def test_a_body_that_is_not_utf8_says_so() -> None:
    message = Message(b'{"a": "\xff"}', {}, "q")
    assert message.malformed is not None and "not UTF-8" in message.malformed

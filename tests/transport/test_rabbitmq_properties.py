"""zhpc's decoder of AMQP properties gives exactly pika's objects.

Properties are generated with every field and every header type pika can send
(the rare ones go through pika's own code inside zhpc's), encoded by pika and
decoded both ways.
"""

from __future__ import annotations

import datetime
import struct
from typing import Any

import pika
import pika.data
from hypothesis import given, settings
from hypothesis import strategies as st

from zhpc.transport.rabbitmq.properties import decode_properties

short_text = st.text(max_size=20)
key = st.one_of(short_text, st.binary(max_size=8))
plain = st.one_of(
    st.text(max_size=30),
    st.booleans(),
    st.integers(min_value=-(2**31), max_value=2**31 - 1),  # 'I' on the wire
    st.integers(min_value=-(2**63), max_value=2**63 - 1),  # 'l' once it does not fit
    st.none(),
)
rare = st.one_of(
    st.binary(max_size=10),
    st.decimals(min_value=-1000, max_value=1000, places=2, allow_nan=False),
    st.datetimes(
        min_value=datetime.datetime(1971, 1, 1), max_value=datetime.datetime(2100, 1, 1)
    ).map(lambda d: d.replace(microsecond=0, tzinfo=datetime.UTC)),
)
values = st.recursive(
    st.one_of(plain, rare),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(short_text, inner, max_size=3)
    ),
    max_leaves=12,
)
#: What zhpc's own messages carry: the path that does not fall back to pika.
zhpc_values = st.recursive(
    plain, lambda inner: st.dictionaries(short_text, inner, max_size=3), max_leaves=8
)
octet = st.integers(min_value=0, max_value=255)
maybe = st.none() | short_text


@st.composite
def properties(draw: Any) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type=draw(maybe),
        content_encoding=draw(maybe),
        headers=draw(
            st.none()
            | st.dictionaries(short_text, zhpc_values, max_size=6)
            | st.dictionaries(key, values, max_size=6)
        ),
        delivery_mode=draw(st.none() | octet),
        priority=draw(st.none() | octet),
        correlation_id=draw(maybe),
        reply_to=draw(maybe),
        expiration=draw(maybe),
        message_id=draw(maybe),
        timestamp=draw(st.none() | st.integers(min_value=0, max_value=2**64 - 1)),
        type=draw(maybe),
        user_id=draw(maybe),
        app_id=draw(maybe),
        cluster_id=draw(maybe),
    )


@settings(max_examples=400, deadline=None)
@given(properties())
def test_decoding_gives_pikas_object(props: Any) -> None:
    encoded = b"".join(props.encode())
    frame = b"\x00" * 7 + encoded + b"\xce"  # decoded at an offset inside a frame
    ours = decode_properties(frame, 7)
    theirs = pika.BasicProperties().decode(frame, 7)
    assert vars(ours) == vars(theirs)
    assert type(ours) is type(theirs)


def test_zhpcs_own_headers_take_the_short_path() -> None:
    """A guard that the common case does not fall back to pika (which would hide a slowdown)."""
    props = pika.BasicProperties(
        headers={"zhpc-message-id": "ab12", "workflows-recipe": True, "n": 3, "d": {"x": None}},
        delivery_mode=2,
        message_id="ab12",
    )
    encoded = b"".join(props.encode())
    original = pika.data.decode_value
    try:
        pika.data.decode_value = None  # type: ignore[assignment]
        ours = decode_properties(encoded, 0)
    finally:
        pika.data.decode_value = original
    assert vars(ours) == vars(props)


def test_decoding_keeps_what_is_not_utf8_as_bytes() -> None:
    props = pika.BasicProperties(headers={b"\xff": b"raw", "s": "x"}, message_id="m")
    encoded = b"".join(props.encode()).replace(b"S\x00\x00\x00\x01x", b"S\x00\x00\x00\x01\xfe")
    ours = decode_properties(encoded, 0)
    assert vars(ours) == vars(pika.BasicProperties().decode(encoded))
    assert ours.headers == {b"\xff": b"raw", "s": b"\xfe"}


def test_values_from_other_clients_are_decoded_as_pika_decodes_them() -> None:
    # A float ('d') and a short int ('s'): pika cannot send them, other clients do.
    table = b"\x01d" + b"d" + struct.pack(">d", 1.5) + b"\x01s" + b"s" + struct.pack(">h", -2)
    encoded = (
        struct.pack(">H", pika.spec.BasicProperties.FLAG_HEADERS)
        + struct.pack(">I", len(table))
        + table
    )
    ours = decode_properties(encoded, 0)
    assert vars(ours) == vars(pika.BasicProperties().decode(encoded))
    assert ours.headers == {"d": 1, "s": -2}  # pika truncates doubles (pika's behaviour)

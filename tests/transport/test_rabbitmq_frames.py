"""zhpc's pika connection reads and writes exactly what pika does.

:class:`zhpc.transport.rabbitmq.connection.Connection` parses deliveries and
confirms in place and marshals publishes itself. These tests put it beside a
stock ``pika.SelectConnection`` (neither connected: bytes are fed in and taken
out where the socket would be) and compare what each hands to its channel's
callbacks and what each would write, for byte streams split at every point.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pika
import pika.channel
import pika.exceptions
import pika.frame
import pika.spec
import pytest
from pika.adapters.select_connection import IOLoop

from zhpc.transport.rabbitmq.connection import Connection

BODY_MAX = 100  # a small frame size keeps the stream short: it is split at every byte
CONSUMER = "zhpc.sub.1"


class _StockConnection(pika.SelectConnection):
    """pika as it is, except that what it would write is kept instead."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.written: list[bytes] = []
        super().__init__(*args, **kwargs)

    def _adapter_emit_data(self, data: bytes) -> None:
        self.written.append(data)


class _Side:
    """One connection, open, with channel 1 consuming (and confirming) and channel 2 open."""

    def __init__(self, kind: type[pika.SelectConnection], fast: bool) -> None:
        self.loop = IOLoop()
        self.conn = kind(pika.ConnectionParameters("127.0.0.1", 1), custom_ioloop=self.loop)
        self.conn._set_connection_state(self.conn.CONNECTION_OPEN)
        self.conn._body_max_length = BODY_MAX
        self.seen: list[Any] = []
        self.channels = {}
        for number in (1, 2):
            channel = pika.channel.Channel(self.conn, number, lambda _ch: None)
            channel._set_state(channel.OPEN)
            channel._consumers[CONSUMER] = self._delivered(number)
            self.conn._channels[number] = channel
            self.channels[number] = channel
        self.conn.callbacks.add(1, pika.spec.Basic.Ack, self._confirmed, False)
        if fast:
            self.conn.fast_channel(self.channels[1], self._confirmed)

    def _delivered(self, number: int) -> Any:
        def on_message(_ch: Any, method: Any, props: Any, body: bytes) -> None:
            self.seen.append(("deliver", number, vars(method), vars(props), body))

        return on_message

    def _confirmed(self, frame: Any) -> None:
        self.seen.append(("confirm", frame.channel_number, vars(frame.method)))

    def feed(self, chunks: list[bytes]) -> list[Any]:
        for chunk in chunks:
            self.conn._on_data_available(chunk)
        return self.seen

    def counters(self) -> tuple[int, int]:
        return self.conn.bytes_received, self.conn.frames_received

    def close(self) -> None:
        self.loop.close()


def _method(channel: int, method: Any) -> bytes:
    return pika.frame.Method(channel, method).marshal()


def _delivery(channel: int, tag: int, body: bytes, *, headers: Any = None, split: Any = None):
    """The frames of one basic.deliver, each as its own bytes."""
    props = pika.BasicProperties(headers=headers, delivery_mode=2, message_id=f"m{tag}")
    frames = [
        _method(channel, pika.spec.Basic.Deliver(CONSUMER, tag, tag % 2 == 0, "", "q.in")),
        pika.frame.Header(channel, len(body), props).marshal(),
    ]
    parts = split or [body[i : i + BODY_MAX] for i in range(0, len(body), BODY_MAX)]
    frames += [pika.frame.Body(channel, part).marshal() for part in parts]
    return frames


def _stream() -> list[bytes]:
    """Deliveries of every shape, confirms, a heartbeat and another channel's frames."""
    headers = {"zhpc-message-id": "abc", "n": 7, "nested": {"list": [1, "two", True]}, "no": None}
    frames = []
    frames += _delivery(1, 1, b'{"value": 21}', headers=headers)
    frames += _delivery(1, 2, b"")  # no body frame at all
    frames += _delivery(1, 3, bytes(range(250)))  # three body frames
    frames.append(_method(1, pika.spec.Basic.Ack(1, False)))
    frames.append(pika.frame.Heartbeat().marshal())
    frames += _delivery(2, 4, b"not on the short path")
    frames.append(_method(1, pika.spec.Basic.Ack(3, True)))
    # another channel's frame between a delivery's header and its body
    first, header, body = _delivery(1, 5, b"interleaved")
    frames += [first, header, _method(1, pika.spec.Basic.Ack(4, False)), body]
    first, header, body = _delivery(1, 8, b"a heartbeat in between")
    frames += [first, header, pika.frame.Heartbeat().marshal(), body]
    first, header, *bodies = _delivery(1, 9, b"another channel in between " * 9)
    frames += [first, header, *_delivery(2, 10, b""), *bodies]
    # another channel's frame exactly as long as the body still due: not a body frame
    other = _delivery(2, 11, b"")
    length = struct.unpack_from(">I", other[0], 3)[0]
    first, header, body = _delivery(1, 12, b"=" * length)
    frames += [first, header, *other, body]
    frames += _delivery(1, 6, b"a body in two frames", split=[b"a body ", b"in two frames"])
    frames += _delivery(1, 7, "ünïcode".encode(), headers={"x": "é"})
    return frames


def _splits(data: bytes) -> Iterator[list[bytes]]:
    yield [data]
    for cut in range(1, len(data)):
        yield [data[:cut], data[cut:]]
    yield [data[i : i + 1] for i in range(len(data))]


@contextmanager
def _both() -> Iterator[tuple[_Side, _Side]]:
    """Stock pika and zhpc's connection, each set up alike; their ioloops closed after."""
    stock, ours = _Side(_StockConnection, fast=False), _Side(Connection, fast=True)
    try:
        yield stock, ours
    finally:
        stock.close()
        ours.close()


def test_every_split_of_a_stream_is_read_as_pika_reads_it() -> None:
    data = b"".join(_stream())
    count = 0
    for chunks in _splits(data):
        with _both() as (stock, ours):
            expected = stock.feed(chunks)
            assert ours.feed(chunks) == expected, f"split into {[len(c) for c in chunks]}"
            assert ours.counters() == stock.counters()
            assert ours.conn._frame_buffer == stock.conn._frame_buffer == b""
            count += 1
    assert count == len(data) + 1
    kinds = [entry[0] for entry in expected]
    assert kinds.count("deliver") == 12 and kinds.count("confirm") == 3


def test_a_read_that_ends_inside_a_delivery_keeps_the_rest_for_the_next() -> None:
    frames = _delivery(1, 1, b"x" * 5000)
    data = b"".join(frames)
    with _both() as (stock, ours):
        for side in (stock, ours):
            assert side.feed([data[:-3]]) == []
            assert len(side.conn._frame_buffer) > 0
        assert ours.feed([data[-3:]]) == stock.feed([data[-3:]])
        assert len(ours.seen) == 1 and ours.seen[0][4] == b"x" * 5000


def test_a_channel_pika_no_longer_holds_leaves_the_short_path() -> None:
    with _both() as (_stock, ours):
        replacement = pika.channel.Channel(ours.conn, 1, lambda _ch: None)
        replacement._set_state(replacement.OPEN)
        ours.conn._channels[1] = replacement  # channel 1 closed and was opened again
        data = b"".join(_delivery(1, 1, b"body"))
        ours.feed([data])
        assert ours.seen == []  # the new channel has no consumer: pika logs and drops it
        assert ours.counters() == (len(data), 3)


def test_a_broken_frame_end_is_refused_as_pika_refuses_it() -> None:
    data = bytearray(b"".join(_delivery(1, 1, b"body")))
    data[-1] = 0
    with _both() as (stock, ours):
        for side in (stock, ours):
            with pytest.raises(pika.exceptions.InvalidFrameError):
                side.feed([bytes(data)])


@pytest.mark.parametrize("size", [0, 1, BODY_MAX, BODY_MAX + 1, 3 * BODY_MAX + 5])
def test_a_publish_writes_what_pika_writes(size: int) -> None:
    with _both() as (stock, ours):
        body = bytes(i % 251 for i in range(size))
        props = pika.BasicProperties(
            headers={"zhpc-message-id": "m1", "n": 3, "d": {"a": [1, None]}},
            delivery_mode=2,
            message_id="m1",
            expiration="1000",
        )
        for mandatory in (True, False, True):  # the second True comes from the kept frame
            stock.channels[1].basic_publish("", "q.out", body, props, mandatory)
            ours.conn.publish(ours.channels[1], "", "q.out", body, props, mandatory)
        assert b"".join(ours.conn._outbox) == b"".join(stock.conn.written)
        assert (ours.conn.bytes_sent, ours.conn.frames_sent) == (
            stock.conn.bytes_sent,
            stock.conn.frames_sent,
        )


def test_a_publish_that_cannot_be_encoded_writes_nothing() -> None:
    with _both() as (_stock, ours):
        props = pika.BasicProperties(headers={"float": 1.5})
        with pytest.raises(pika.exceptions.UnsupportedAMQPFieldException):
            ours.conn.publish(ours.channels[1], "", "q.out", b"body", props, True)
        with pytest.raises(pika.exceptions.ShortStringTooLong):
            ours.conn.publish(
                ours.channels[1], "", "q" * 300, b"body", pika.BasicProperties(), True
            )
        assert ours.conn._outbox == [] and ours.conn.frames_sent == 0
        ours.channels[1]._set_state(ours.channels[1].CLOSED)
        with pytest.raises(pika.exceptions.ChannelWrongStateError):
            ours.conn.publish(ours.channels[1], "", "q.out", b"body", pika.BasicProperties(), True)


def test_the_frames_used_here_are_amqp_frames() -> None:
    """A guard on the test itself: the stream really holds what it claims."""
    frames = _stream()
    kinds = [struct.unpack_from(">B", frame)[0] for frame in frames]
    assert kinds.count(pika.spec.FRAME_BODY) >= 8 and pika.spec.FRAME_HEARTBEAT in kinds

"""A delivery's AMQP properties from the wire, as pika decodes them, in fewer steps.

pika decodes ``BasicProperties`` one value at a time through its generic
field-table code (a function call, a ``struct`` call and a type-test chain per
value), and the I/O thread does this for every message it receives.
:func:`decode_properties` gives the same object in half the time (4.5 against
8.8 µs for a zhpc message's properties here) for what zhpc's messages hold
(strings, booleans, integers, None and nested tables in the headers), and hands
every other value (arrays, decimals, times, bytes, another client's floats) to
pika's own decoder. Encoding stays pika's: a codec of its own saved 0.7 µs.
"""

from __future__ import annotations

import struct
from typing import Any

import pika.data
import pika.spec

_P = pika.spec.BasicProperties
_OCTET = struct.Struct(">B")
_SHORT = struct.Struct(">H")
_LONG = struct.Struct(">I")
_SIGNED_LONG = struct.Struct(">i")
_SIGNED_LONGLONG = struct.Struct(">q")
_LONGLONG = struct.Struct(">Q")
_S, _T, _I, _L, _F, _V = b"S"[0], b"t"[0], b"I"[0], b"l"[0], b"F"[0], b"V"[0]

_SHORT_STRING, _TABLE, _OCTET_FIELD, _TIMESTAMP = range(4)
#: The properties in wire order, with their flag and kind (AMQP 0-9-1, class basic).
_FIELDS = (
    ("content_type", _P.FLAG_CONTENT_TYPE, _SHORT_STRING),
    ("content_encoding", _P.FLAG_CONTENT_ENCODING, _SHORT_STRING),
    ("headers", _P.FLAG_HEADERS, _TABLE),
    ("delivery_mode", _P.FLAG_DELIVERY_MODE, _OCTET_FIELD),
    ("priority", _P.FLAG_PRIORITY, _OCTET_FIELD),
    ("correlation_id", _P.FLAG_CORRELATION_ID, _SHORT_STRING),
    ("reply_to", _P.FLAG_REPLY_TO, _SHORT_STRING),
    ("expiration", _P.FLAG_EXPIRATION, _SHORT_STRING),
    ("message_id", _P.FLAG_MESSAGE_ID, _SHORT_STRING),
    ("timestamp", _P.FLAG_TIMESTAMP, _TIMESTAMP),
    ("type", _P.FLAG_TYPE, _SHORT_STRING),
    ("user_id", _P.FLAG_USER_ID, _SHORT_STRING),
    ("app_id", _P.FLAG_APP_ID, _SHORT_STRING),
    ("cluster_id", _P.FLAG_CLUSTER_ID, _SHORT_STRING),
)


# -- decoding -------------------------------------------------------------------------------------
def decode_properties(data: bytes, offset: int) -> pika.spec.BasicProperties:
    """``BasicProperties().decode(data, offset)``."""
    flags = _SHORT.unpack_from(data, offset)[0]
    if flags & 1:  # a second flag word: no such property in AMQP 0-9-1, pika's to read
        return _P().decode(data, offset)
    offset += 2
    properties = _P.__new__(_P)
    values = vars(properties)
    for name, flag, kind in _FIELDS:
        if not flags & flag:
            values[name] = None
        elif kind == _SHORT_STRING:
            length = data[offset]
            offset += 1 + length
            values[name] = _text(data[offset - length : offset])
        elif kind == _TABLE:
            values[name], offset = _decode_table(data, offset)
        elif kind == _OCTET_FIELD:
            values[name] = data[offset]
            offset += 1
        else:
            values[name] = _LONGLONG.unpack_from(data, offset)[0]
            offset += 8
    return properties


def _text(raw: bytes) -> str | bytes:
    try:
        return raw.decode()
    except UnicodeDecodeError:  # pika keeps what is not UTF-8 as bytes
        return raw


def _decode_table(data: bytes, offset: int) -> tuple[dict[Any, Any], int]:
    limit = offset + 4 + _LONG.unpack_from(data, offset)[0]
    offset += 4
    table: dict[Any, Any] = {}
    while offset < limit:
        length = data[offset]
        offset += 1 + length
        key = _text(data[offset - length : offset])
        kind = data[offset]
        if kind == _S:
            length = _LONG.unpack_from(data, offset + 1)[0]
            offset += 5 + length
            table[key] = _text(data[offset - length : offset])
        elif kind == _T:
            table[key] = bool(data[offset + 1])
            offset += 2
        elif kind == _I:
            table[key] = _SIGNED_LONG.unpack_from(data, offset + 1)[0]
            offset += 5
        elif kind == _L:
            table[key] = _SIGNED_LONGLONG.unpack_from(data, offset + 1)[0]
            offset += 9
        elif kind == _V:
            table[key] = None
            offset += 1
        elif kind == _F:
            table[key], offset = _decode_table(data, offset + 1)
        else:
            table[key], offset = pika.data.decode_value(data, offset)
    return table, offset

"""JSON as every consumer can read it: no NaN, no Infinity, in or out.

Python's json module accepts and writes ``NaN``, ``Infinity`` and numbers such
as ``1e400`` (which become ``inf``); other JSON parsers refuse them, and a
non-finite delay or timestamp silently breaks scheduling (a start message with
``ready_at=inf`` is never delivered). zhpc parses and writes messages, recipes
and files through these two functions instead.

Valid documents are decoded by msgspec, three times faster than json (a service
decodes every message it receives). msgspec is as strict as these rules: it
refuses ``NaN`` and ``Infinity``, and a number out of a float's range. Anything it
refuses goes again through json with the hooks below, so an error reads the same
either way and nothing msgspec refuses for its own reasons (a lone surrogate
escape, nesting past its limit) is refused here.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import msgspec


class NonFiniteNumber(ValueError):
    """A JSON document holds NaN, Infinity, or a number too large to carry."""


class DuplicateKey(ValueError):
    """A JSON object names the same key twice (json keeps the last one silently)."""


def _constant(name: str) -> Any:
    raise NonFiniteNumber(f"{name} is not a number JSON allows")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NonFiniteNumber(f"{text[:40]} is too large for a number")
    return value


#: Longest integer accepted, in digits: far beyond any real value, and below
#: Python's own limit (4300), which would otherwise fail with an unhelpful message.
MAX_INT_DIGITS = 1000


def _int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise NonFiniteNumber(
            f"an integer with {digits} digits is too large (at most {MAX_INT_DIGITS})"
        )
    return int(text)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKey(f"key {key[:60]!r} appears twice in one object")
        result[key] = value
    return result


#: One decoder for every message: ``json.loads`` with hooks builds a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_constant, parse_float=_float, parse_int=_int)
#: Without the integer hook (a Python call per integer) for text that cannot hold a long one.
_FAST_DECODER = json.JSONDecoder(parse_constant=_constant, parse_float=_float)
_LONG_DIGITS = re.compile(f"[0-9]{{{MAX_INT_DIGITS + 1}}}")
_LONG_DIGITS_BYTES = re.compile(_LONG_DIGITS.pattern.encode("ascii"))
_msgspec_decode = msgspec.json.Decoder().decode
#: What msgspec raises for a document it does not accept (json then says why, or accepts it).
_MSGSPEC_REFUSED = (msgspec.DecodeError, RecursionError)
_UNDECIDED = object()


def _quick(text: str | bytes) -> Any:
    """``text`` decoded by msgspec, or ``_UNDECIDED`` for json to decide (and word the error)."""
    long_digits = _LONG_DIGITS if isinstance(text, str) else _LONG_DIGITS_BYTES
    # A run of more digits than allowed anywhere (in a string or not): maybe such an
    # integer, which msgspec would accept; json's hook counts the digits instead.
    if long_digits.search(text):
        return _UNDECIDED
    try:
        return _msgspec_decode(text)
    except _MSGSPEC_REFUSED:  # msgspec.ValidationError (out of range) is a DecodeError
        return _UNDECIDED


def _decided_by_json(text: str) -> Any:
    """``text`` that msgspec refused or could not judge, decoded (or refused) by json."""
    decoder = _DECODER if _LONG_DIGITS.search(text) else _FAST_DECODER
    return decoder.decode(text)


def loads(text: str | bytes, *, unique_keys: bool = False, **kwargs: Any) -> Any:
    """``json.loads`` refusing non-finite numbers and huge integers (NonFiniteNumber,
    a ValueError); with ``unique_keys``, also an object with a key twice (DuplicateKey).

    Bytes must be UTF-8 for the fast path; json reads other encodings (a BOM) as before.
    """
    if not kwargs and not unique_keys:
        value = _quick(text)
        if value is not _UNDECIDED:
            return value
        if isinstance(text, str):
            return _decided_by_json(text)
    if unique_keys:
        kwargs.setdefault("object_pairs_hook", _no_duplicates)
    return json.loads(text, parse_constant=_constant, parse_float=_float, parse_int=_int, **kwargs)


def loads_utf8(data: bytes) -> Any:
    """:func:`loads` of UTF-8 bytes: UnicodeDecodeError if they are not UTF-8 (no other
    encoding is guessed, as ``json.loads`` would for bytes), ValueError if not JSON."""
    value = _quick(data)
    if value is not _UNDECIDED:
        return value
    return _decided_by_json(data.decode("utf-8"))


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` refusing non-finite floats (raises ValueError)."""
    return json.dumps(value, allow_nan=False, **kwargs)

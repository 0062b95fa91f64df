"""JSON as every consumer can read it: no NaN, no Infinity, in or out.

Python's json module accepts and writes ``NaN``, ``Infinity`` and numbers such
as ``1e400`` (which become ``inf``); other JSON parsers refuse them, and a
non-finite delay or timestamp silently breaks scheduling (a start message with
``ready_at=inf`` is never delivered). zhpc parses and writes messages, recipes
and files through these two functions instead.
"""

from __future__ import annotations

import json
import math
from typing import Any


class NonFiniteNumber(ValueError):
    """A JSON document holds NaN, Infinity, or a number too large for a float."""


def _constant(name: str) -> Any:
    raise NonFiniteNumber(f"{name} is not a number JSON allows")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NonFiniteNumber(f"{text[:40]} is too large for a number")
    return value


#: One decoder for every message: ``json.loads`` with hooks builds a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_constant, parse_float=_float)


def loads(text: str | bytes, **kwargs: Any) -> Any:
    """``json.loads`` refusing non-finite numbers (raises NonFiniteNumber, a ValueError)."""
    if isinstance(text, str) and not kwargs:
        return _DECODER.decode(text)
    return json.loads(text, parse_constant=_constant, parse_float=_float, **kwargs)


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` refusing non-finite floats (raises ValueError)."""
    return json.dumps(value, allow_nan=False, **kwargs)

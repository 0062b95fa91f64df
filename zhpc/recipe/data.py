"""JSON-like recipe data: bounded deep copies, node numbers, one-line reprs.

The bottom of :mod:`zhpc.recipe`; every other module there builds on these.
"""

from __future__ import annotations

import decimal
import math
import re
from collections.abc import Mapping
from typing import Any

from zhpc.errors import RecipeError

#: Deepest nesting accepted in a recipe (workflows recipes rarely exceed 6).
MAX_DEPTH = 64
#: Most values (strings, numbers, lists, mappings) in one recipe.
MAX_ITEMS = 1_000_000
#: A node number written as a string (JSON keys, ``recipe-pointer``).
DIGITS = re.compile(r"[0-9]+\Z")


def short(value: Any, limit: int = 60) -> str:
    """repr() cut to ``limit`` characters, so errors stay one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_node_number(value: Any) -> bool:
    """An int that is not a bool: what workflows accepts as a node."""
    return type(value) is int or (isinstance(value, int) and not isinstance(value, bool))


def plain(value: Any, where: str) -> Any:
    """Deep copy of JSON-like data; refuse anything JSON cannot carry.

    Tuples become lists (JSON has no tuples); keys must be strings or node numbers.
    Depth and size are bounded, so YAML aliases cannot blow up a copy.
    """
    budget = [MAX_ITEMS]

    def copy_of(value: Any, depth: int) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise RecipeError(f"{where}: more than {MAX_ITEMS} values")
        if depth > MAX_DEPTH:
            raise RecipeError(f"{where}: nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, float) and not math.isfinite(value):
            raise RecipeError(f"{where}: {value!r} is not a number JSON allows")
        if value is None or isinstance(value, str | bool | int | float):
            return value
        if isinstance(value, list | tuple):
            return [copy_of(item, depth + 1) for item in value]
        if isinstance(value, Mapping):
            out = {}
            for key, item in value.items():
                if not (isinstance(key, str) or is_node_number(key)):
                    raise RecipeError(f"{where}: key {short(key)} is not a string")
                out[key] = copy_of(item, depth + 1)
            return out
        raise RecipeError(
            f"{where}: {type(value).__name__} value {short(value)} cannot be sent as JSON"
        )

    return copy_of(value, 0)


def json_default(obj: Any) -> Any:
    """Encode what workflows' serializer accepts beyond plain JSON (Decimal)."""
    if isinstance(obj, decimal.Decimal):
        return float(obj)
    raise TypeError(f"{type(obj).__name__} value {short(obj)} is not JSON serialisable")

"""A demonstration service: doubles ``payload["value"]`` and sends it on."""

from __future__ import annotations

from typing import Any

from zhpc.recipe import RecipeWrapper
from zhpc.service import Service


class Double(Service):
    """Doubles payload["value"] (the zhpc demo's first step)."""

    queue = "double"

    def process(self, rw: RecipeWrapper, payload: Any) -> None:
        value = payload["value"]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"value must be a number, not {type(value).__name__}")
        rw.send({"value": value * 2})

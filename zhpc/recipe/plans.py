"""Steps already checked, by the bytes of their recipe: what a step sends, without rechecking.

Every message of a recipe carries the whole recipe, and a fan-out sends thousands
with the same one. Checking a step's links and destinations and normalising the
recipe is most of what a service does per message, and the answer depends only
on the recipe's bytes and the step. So the first message of a recipe and step is
checked in full, and what sending needs is kept as a :class:`StepPlan`, keyed by
the exact bytes (same bytes, same decoded recipe, whichever decoder read them).

A plan is private: built from copies, never handed to a service, so nothing a
service does to its message's recipe changes what the next message is sent with.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec

__all__ = ["StepPlan", "plan_for", "private_copy", "recipe_bytes", "remember"]

#: Recipes larger than this (encoded) are not kept: checking one is dwarfed by its size.
MAX_RECIPE_BYTES = 64 * 1024
#: Plans kept at once (the oldest goes first): a service sees few recipes at a time.
MAX_PLANS = 32

_TOP_LEVEL = msgspec.json.Decoder(dict[str, msgspec.Raw])


class StepPlan(NamedTuple):
    """What a step of one recipe sends with (all copies, read-only)."""

    #: The step's own mapping (a copy).
    step: dict[str, Any]
    #: Its checked links by kind, then by channel (as ``steps.checked_links`` gives them).
    links: dict[str, dict[Any, list[int]]]
    #: The nodes those links reach, checked (copies).
    destinations: dict[int, dict[str, Any]]
    #: The recipe's top-level ``error`` (the fallback error route), copied.
    error: Any
    #: The normalised recipe as JSON, exactly as an outgoing body carries it.
    recipe_json: bytes


_plans: dict[tuple[bytes, int], StepPlan] = {}


def recipe_bytes(body: bytes) -> bytes | None:
    """The ``recipe`` of a message body, as the bytes it was sent as (None if not found,
    too large, or the body is not a JSON object: the caller then checks it in full)."""
    if len(body) > 2 * MAX_RECIPE_BYTES:
        return None
    try:
        raw = _TOP_LEVEL.decode(body).get("recipe")
    except (msgspec.DecodeError, RecursionError):
        return None
    if raw is None or len(raw) > MAX_RECIPE_BYTES:
        return None
    return bytes(raw)


def plan_for(recipe: bytes, pointer: int) -> StepPlan | None:
    return _plans.get((recipe, pointer))


def remember(recipe: bytes, pointer: int, plan: StepPlan) -> None:
    """Keep ``plan``; the oldest goes if too many are kept (safe from any thread: only
    single dict operations, and a lost race only drops a plan, which is rebuilt)."""
    while len(_plans) >= MAX_PLANS:
        try:
            del _plans[next(iter(_plans))]
        except (KeyError, StopIteration, RuntimeError):
            break
    _plans[(recipe, pointer)] = plan


def private_copy(value: Any) -> Any:
    """A deep copy of JSON data (a checked recipe holds nothing else)."""
    if isinstance(value, dict):
        return {key: private_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [private_copy(item) for item in value]
    return value

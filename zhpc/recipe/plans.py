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

from zhpc.errors import RecipeError
from zhpc.recipe.data import plain
from zhpc.recipe.encoding import encode_recipe

__all__ = ["StepPlan", "plan_for", "recipe_bytes", "remember"]

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


def remember(
    recipe: bytes,
    pointer: int,
    data: dict[Any, Any],
    step: dict[str, Any],
    links: dict[str, dict[Any, list[int]]],
    destinations: dict[int, dict[str, Any]],
) -> None:
    """Keep the plan of a step just checked (``data``: its normalised recipe), as copies
    made before any service saw it; the oldest goes if too many are kept.

    Safe from any thread: only single dict operations, and a lost race only drops
    a plan, which is made again. A recipe the copies or the encoder refuse gets no
    plan: it is sent from the recipe itself, which says what is wrong.
    """
    where = "recipe message"
    try:
        plan = StepPlan(
            step=plain(step, where),
            # kind -> channel (None when unnamed, which plain refuses) -> node numbers
            links={
                kind: {name: list(nodes) for name, nodes in by.items()}
                for kind, by in links.items()
            },
            destinations={number: plain(node, where) for number, node in destinations.items()},
            error=plain(data.get("error"), where),
            recipe_json=encode_recipe(data),
        )
    except (RecipeError, TypeError, ValueError, RecursionError):
        return
    while len(_plans) >= MAX_PLANS:
        try:
            del _plans[next(iter(_plans))]
        except (KeyError, StopIteration, RuntimeError):
            break
    _plans[(recipe, pointer)] = plan

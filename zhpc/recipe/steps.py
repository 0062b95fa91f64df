"""What a step links to, checked before it sends: its links, the nodes they reach, its plan.

A step is checked once per message (or once per recipe and step, with a plan):
a link workflows would choke on, or a node that cannot receive a message, is a
RecipeError before anything is sent.
"""

from __future__ import annotations

from typing import Any

from zhpc.errors import RecipeError
from zhpc.recipe import plans
from zhpc.recipe.data import short
from zhpc.recipe.encoding import encode_recipe
from zhpc.recipe.links import parse_links
from zhpc.recipe.plans import StepPlan, private_copy
from zhpc.recipe.recipe import Recipe

__all__ = ["checked_links", "destination_problem", "remember_plan"]


def remember_plan(
    recipe_bytes: bytes,
    pointer: int,
    recipe: Recipe,
    step: dict[str, Any],
    links: dict[str, dict[Any, list[int]]],
    destinations: dict[int, dict[str, Any]],
) -> None:
    """Keep what a checked step sends with, as private copies (before any service saw it)."""
    try:
        recipe_json = encode_recipe(recipe.data)
    except (TypeError, ValueError, RecursionError):
        return  # sent from the recipe itself, which says what is wrong
    plans.remember(
        recipe_bytes,
        pointer,
        StepPlan(
            step=private_copy(step),
            links=private_copy(links),
            destinations={number: private_copy(node) for number, node in destinations.items()},
            error=private_copy(recipe.data.get("error")),
            recipe_json=recipe_json,
        ),
    )


def checked_links(pointer: Any, step: dict[str, Any], kind: str) -> dict[Any, list[int]]:
    """A step's links by channel, refusing values workflows would choke on."""
    value = step.get(kind)
    if value is None and kind not in step:
        return {}
    where = f"step {pointer} {kind}"
    links = parse_links(value)
    if not links.shaped or (links.named and kind != "output"):
        raise RecipeError(f"{where}: {short(value)} is not a valid link")
    for channel in links.channels:
        if not channel.node_numbers:
            named = f" {channel.name!r}" if links.named else ""
            raise RecipeError(f"{where}{named}: {short(channel.raw)} is not a list of node numbers")
    return links.by_channel()


def destination_problem(recipe: Recipe, target: Any, where: str) -> dict[str, Any]:
    """The node a message goes to; RecipeError if it cannot receive one."""
    node = recipe.node(target)
    if not isinstance(node, dict):
        raise RecipeError(f"{where}: link to node {short(target)}, which does not exist")
    if not (isinstance(node.get("queue"), str) and node["queue"]) and not (
        isinstance(node.get("topic"), str) and node["topic"]
    ):
        raise RecipeError(f"{where}: node {target} has no queue or topic to send to")
    if node.get("exchange") is not None and not isinstance(node["exchange"], str):
        raise RecipeError(f"{where}: node {target} exchange must be a string")
    delay = node.get("transport-delay")
    if delay is not None and (
        isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0
    ):
        raise RecipeError(f"{where}: node {target} transport-delay must be seconds >= 0")
    return node

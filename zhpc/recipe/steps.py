"""What a step links to, checked before it sends: its links and the nodes they reach.

A step is checked once per message (or once per recipe and step: :mod:`.plans`):
a link workflows would choke on, or a node that cannot receive a message, is a
RecipeError before anything is sent.
"""

from __future__ import annotations

from typing import Any

from zhpc.errors import RecipeError
from zhpc.recipe.data import short
from zhpc.recipe.links import parse_links
from zhpc.recipe.recipe import Recipe

__all__ = ["checked_links", "destination_problem"]


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

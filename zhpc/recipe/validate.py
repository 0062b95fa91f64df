"""Recipe validation: every problem, one line each, naming the node and key.

Works on a recipe's normalised data (see :class:`~zhpc.recipe.Recipe`), so it
needs nothing above :mod:`zhpc.recipe.parameters` and :mod:`zhpc.recipe.links`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from zhpc.errors import RecipeError
from zhpc.recipe.data import is_node_number, short
from zhpc.recipe.links import parse_links
from zhpc.recipe.parameters import template_problems

__all__ = ["RecipeInvalid", "recipe_problems"]


class RecipeInvalid(RecipeError):
    """A recipe failed validation; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = list(problems)
        shown = "; ".join(self.problems[:3])
        more = len(self.problems) - 3
        if more > 0:
            shown += f" (and {more} more)"
        prefix = f"{source}: " if source else ""
        super().__init__(f"{prefix}invalid recipe: {shown}")


def recipe_problems(
    data: dict[Any, Any], duplicates: list[int], *, templates: bool = True
) -> list[str]:
    """Everything wrong with normalised recipe ``data``; ``duplicates`` are node numbers
    the source defined more than once (normalising merged them). ``templates=False``
    after substitution: braces then come from parameter values, inserted literally."""
    if not data:
        return ["recipe is empty"]
    problems = [f"node {n}: defined more than once" for n in duplicates]
    nodes: dict[int, dict[str, Any]] = {}
    for key, value in data.items():
        if key in ("start", "error"):
            continue
        if not is_node_number(key):
            problems.append(
                f"top-level key {short(key)}: not a node number "
                "(python-workflows cannot parse other keys here)"
            )
        elif key < 1:
            problems.append(f"node {key}: node numbers start at 1")
        elif not isinstance(value, dict):
            problems.append(f"node {key}: must be a mapping, not {type(value).__name__}")
        else:
            nodes[key] = value
    graph = _Graph(data, nodes, problems)
    # start
    if "start" not in data:
        problems.append("start: missing (nothing would ever run)")
    elif not isinstance(data["start"], list) or not data["start"]:
        problems.append("start: must be a non-empty list of [node, payload] pairs")
    else:
        for i, entry in enumerate(data["start"]):
            if not (isinstance(entry, list) and len(entry) == 2):
                problems.append(f"start[{i}]: must be a [node, payload] pair, not {short(entry)}")
            else:
                graph.link(f"start[{i}]", [entry[0]], None)
    # top-level error
    if "error" in data:
        value = data["error"]
        if isinstance(value, list):
            graph.link("error", value, None)
        else:
            problems.append(f"error: must be a node number or a list of them, not {short(value)}")
    # nodes
    for number, node in nodes.items():
        problems.extend(_node_problems(number, node))
        for kind in ("output", "error"):
            if kind in node:
                _link_problems(graph, number, kind, node[kind])
    # cycles and reachability (only over links that made sense)
    cycle = _find_cycle(graph.edges)
    if cycle:
        problems.append(
            "cycle: " + " -> ".join(str(n) for n in cycle) + " (use checkpoint() to revisit a step)"
        )
    reached = graph.reached()
    for number in nodes:
        if number not in reached:
            problems.append(f"node {number}: unreachable from start or error")
    # templates that can never be applied
    if templates:
        problems.extend(template_problems(data))
    return problems


class _Graph:
    """The links that make sense, gathered while the others become problems."""

    def __init__(
        self, data: dict[Any, Any], nodes: dict[int, dict[str, Any]], problems: list[str]
    ) -> None:
        self.data = data
        self.nodes = nodes
        self.problems = problems
        self.edges: dict[int, list[int]] = {n: [] for n in nodes}
        self.roots: list[int] = []

    def link(self, where: str, targets: list[Any], source: int | None) -> None:
        """Links from ``source`` (None: from start or the top-level error)."""
        for target in targets:
            if not is_node_number(target):
                self.problems.append(f"{where}: {short(target)} is not a node number")
            elif target not in self.data:
                self.problems.append(f"{where}: node {target} does not exist")
            elif target in self.nodes:
                if source is None:
                    self.roots.append(target)
                else:
                    self.edges[source].append(target)

    def reached(self) -> set[int]:
        """Every node a message can get to from the roots."""
        reached = set(self.roots)
        frontier = list(self.roots)
        while frontier:
            for target in self.edges.get(frontier.pop(), []):
                if target not in reached:
                    reached.add(target)
                    frontier.append(target)
        return reached


def _link_problems(graph: _Graph, number: int, kind: str, value: Any) -> None:
    where = f"node {number}: {kind}"
    links = parse_links(value)
    if links.named and kind == "error":
        graph.problems.append(
            f"{where}: must be a node number or a list of them "
            "(named outputs are only for 'output')"
        )
        return
    if not links.shaped:
        graph.problems.append(
            f"{where}: must be a node number, a list of them, or named outputs, not {short(value)}"
        )
    for channel in links.channels:
        at = where
        if links.named:
            at = f"{where}.{channel.name}"
            if not isinstance(channel.name, str) or not channel.name:
                graph.problems.append(
                    f"{where}: output name {short(channel.name)} must be a non-empty string"
                )
            if channel.targets is None:
                graph.problems.append(
                    f"{at}: must be a node number or a list of them, not {short(channel.raw)}"
                )
                continue
        graph.link(at, channel.targets or [], number)


def _node_problems(number: int, node: dict[str, Any]) -> Iterator[str]:
    where = f"node {number}"
    for key in ("queue", "topic", "exchange", "service"):
        if key in node and not (isinstance(node[key], str) and node[key]):
            yield f"{where}: {key} must be a non-empty string, not {short(node[key])}"
    queue, topic = node.get("queue"), node.get("topic")
    if not queue and not topic:
        yield f"{where}: no destination: needs 'queue' or 'topic'"
    if node.get("exchange") and not queue:
        yield f"{where}: exchange needs a 'queue' (it is the routing key)"
    if "transport-delay" in node:
        delay = node["transport-delay"]
        if not isinstance(delay, int | float) or isinstance(delay, bool) or delay < 0:
            yield f"{where}: transport-delay must be a number of seconds >= 0"
        elif topic and delay:
            yield f"{where}: transport-delay cannot apply to a topic (broadcasts are not delayed)"
    if "parameters" in node and not isinstance(node["parameters"], dict):
        yield f"{where}: parameters must be a mapping, not {type(node['parameters']).__name__}"


def _find_cycle(edges: dict[int, list[int]]) -> list[int] | None:
    """One cycle as a node list ending where it began, or None (iterative DFS)."""
    state: dict[int, int] = {}  # 1 on the stack, 2 done
    for root in edges:
        if state.get(root):
            continue
        stack: list[tuple[int, Iterator[int]]] = [(root, iter(edges[root]))]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            for child in children:
                if state.get(child) == 1:
                    path = [n for n, _ in stack]
                    return [*path[path.index(child) :], child]
                if not state.get(child):
                    state[child] = 1
                    stack.append((child, iter(edges.get(child, []))))
                    break
            else:
                state[node] = 2
                stack.pop()
    return None

"""``zhpc recipe validate|show``: check recipes and look at them as graphs.

A FILE argument that is not an existing path is looked up by name among the
recipes shipped with zhpc (``zhpc recipe show demo``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.recipe import Recipe


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("recipe", help="validate or show processing recipes")
    actions = parser.add_subparsers(dest="recipe_action", metavar="ACTION", required=True)
    validate = actions.add_parser("validate", help="check recipe files; one line per problem")
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.set_defaults(handler=_validate)
    show = actions.add_parser("show", help="print a recipe graph after parameter substitution")
    show.add_argument("file", metavar="FILE")
    show.add_argument("--format", choices=("text", "mermaid", "dot"), default="text")
    show.add_argument(
        "-s",
        "--set",
        dest="parameters",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="parameter to substitute (repeatable)",
    )
    show.set_defaults(handler=_show)


def _load(name: str) -> Recipe:
    from pathlib import Path

    from zhpc.recipe import find_recipe, load_recipe_file

    path = Path(name)
    if path.exists() or "/" in name or path.suffix in (".json", ".yaml", ".yml"):
        return load_recipe_file(path)
    return load_recipe_file(find_recipe(name))


def _validate(args: argparse.Namespace) -> int:
    from zhpc.errors import RecipeError

    failed = False
    for name in args.files:
        try:
            problems = _load(name).problems()
        except RecipeError as exc:
            problems = [str(exc).removeprefix(f"{name}: ")]
        for problem in problems:
            print(f"{name}: {problem}")
        if not problems:
            print(f"{name}: OK")
        failed = failed or bool(problems)
    return 1 if failed else 0


def _show(args: argparse.Namespace) -> int:
    from zhpc.errors import RecipeError

    parameters: dict[str, str] = {}
    for item in args.parameters:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"-s {item!r}: expected KEY=VALUE")
        parameters[key] = value
    recipe = _load(args.file)
    if parameters:
        recipe.apply_parameters(parameters)
    render = {"text": render_text, "mermaid": render_mermaid, "dot": render_dot}[args.format]
    print(render(recipe))
    problems = recipe.problems()
    for problem in problems:
        print(f"{args.file}: {problem}", file=sys.stderr)
    return 1 if problems else 0


# ------------------------------------------------------------------ rendering


def _edges(recipe: Recipe) -> list[tuple[str, int, str, bool]]:
    """(source, target, label, is_error) for every link, including start and error."""
    edges: list[tuple[str, int, str, bool]] = []
    for entry in recipe.start:
        if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], int):
            edges.append(("start", entry[0], "", False))
    error = recipe.data.get("error")
    for target in error if isinstance(error, list) else []:
        if isinstance(target, int):
            edges.append(("error", target, "", True))
    for number in recipe.nodes:
        for kind in ("output", "error"):
            for name, targets in recipe.links(number, kind).items():
                for target in targets:
                    if isinstance(target, int) and not isinstance(target, bool):
                        label = "error" if kind == "error" else (name or "")
                        edges.append((str(number), target, label, kind == "error"))
    return edges


def _describe(node: Any) -> list[str]:
    if not isinstance(node, dict):
        return [f"(not a mapping: {node!r})"]
    lines = []
    if node.get("service"):
        lines.append(str(node["service"]))
    for key in ("queue", "topic", "exchange", "transport-delay", "wrapper"):
        if key in node:
            lines.append(f"{key}: {node[key]}")
    cluster = node.get("cluster")
    if isinstance(cluster, dict):
        command = cluster.get("command")
        if isinstance(command, list):
            lines.append(
                "runs: " + " ".join(json.dumps(a) if " " in str(a) else str(a) for a in command)
            )
        extras = [
            f"{k}={cluster[k]}" for k in ("partition", "time", "cpus", "memory") if k in cluster
        ]
        if extras:
            lines.append("cluster: " + " ".join(extras))
    return lines


def render_text(recipe: Recipe) -> str:
    lines = []
    for entry in recipe.start:
        if isinstance(entry, list) and len(entry) == 2:
            lines.append(f"start -> {entry[0]}  payload {json.dumps(entry[1])}")
    error = recipe.data.get("error")
    if error is not None:
        lines.append(f"error -> {error}")
    for number, node in recipe.nodes.items():
        described = _describe(node)
        lines.append(f"{number}: " + (described[0] if described else ""))
        lines.extend(f"    {line}" for line in described[1:])
        if isinstance(node, dict):
            if isinstance(node.get("parameters"), dict):
                for key, value in node["parameters"].items():
                    lines.append(f"    parameter {key} = {json.dumps(value)}")
            for name, targets in recipe.links(number, "output").items():
                lines.append(f"    {name or 'output'} -> {', '.join(map(str, targets))}")
            for targets in recipe.links(number, "error").values():
                lines.append(f"    error -> {', '.join(map(str, targets))}")
    return "\n".join(lines)


#: Characters a Mermaid label may hold as they are; everything else becomes an entity code.
_MERMAID_PLAIN = frozenset(" _-.,:/=+@")
_MERMAID_NAMED = {'"': "#quot;", "<": "#lt;", ">": "#gt;"}


def _mermaid_text(text: str) -> str:
    """``text`` as Mermaid entity codes wherever it could end a label or start a comment.

    Recipe names, services and output names come from users: ``|`` ends an edge label,
    ``]`` and ``)`` end a node, ``%%`` starts a comment and a newline starts a new
    statement. ``#`` is encoded too, so text that looks like an entity code stays text.
    """
    return "".join(
        c if c.isalnum() or c in _MERMAID_PLAIN else _MERMAID_NAMED.get(c, f"#{ord(c)};")
        for c in text
    )


def render_mermaid(recipe: Recipe) -> str:
    lines = ["flowchart TD", '    start(["start"])']
    if "error" in recipe.data:
        lines.append('    error(["error"])')
    for number, node in recipe.nodes.items():
        label = "<br/>".join(_mermaid_text(line) for line in [f"{number}", *_describe(node)])
        shape = ('{{"', '"}}') if isinstance(node, dict) and "topic" in node else ('["', '"]')
        lines.append(f"    n{number}{shape[0]}{label}{shape[1]}")
    for source, target, label, is_error in _edges(recipe):
        left = source if source in ("start", "error") else f"n{source}"
        arrow = "-.->" if is_error else "-->"
        text = f"|{_mermaid_text(label)}|" if label else ""
        lines.append(f"    {left} {arrow}{text} n{target}")
    return "\n".join(lines)


def _dot_text(text: str) -> str:
    """``text`` inside a DOT double-quoted string: backslashes and quotes escaped, and no raw
    control characters (a newline is shown as a line break, others as U+FFFD)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return "".join(c if c.isprintable() else "\ufffd" for c in escaped)


def render_dot(recipe: Recipe) -> str:
    lines = ["digraph recipe {", "    rankdir=TB;", '    start [shape=oval, label="start"];']
    if "error" in recipe.data:
        lines.append('    error [shape=oval, label="error"];')
    for number, node in recipe.nodes.items():
        label = "\\n".join(_dot_text(line) for line in [f"{number}", *_describe(node)])
        shape = "hexagon" if isinstance(node, dict) and "topic" in node else "box"
        lines.append(f'    n{number} [shape={shape}, label="{label}"];')
    for source, target, label, is_error in _edges(recipe):
        left = source if source in ("start", "error") else f"n{source}"
        attributes = []
        if label:
            attributes.append(f'label="{_dot_text(label)}"')
        if is_error:
            attributes.append("style=dashed")
        suffix = f" [{', '.join(attributes)}]" if attributes else ""
        lines.append(f"    {left} -> n{target}{suffix};")
    lines.append("}")
    return "\n".join(lines)

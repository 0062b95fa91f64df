"""Recipes and recipe messages, wire-compatible with python-workflows (Zocalo).

A :class:`Recipe` is the graph of a processing pipeline: integer-numbered steps
plus ``start`` and an optional top-level ``error``. A :class:`RecipeWrapper` is
one step of a running recipe: it turns payloads into
:class:`~zhpc.message.Outgoing` messages for the next steps. Nothing here does
I/O: a transport publishes what the wrapper produces, a service decides when.

The message body carries exactly the keys python-workflows uses (``recipe``,
``recipe-pointer``, ``recipe-path``, ``environment``, ``payload``), encoded the
same way, so Zocalo services and zhpc services can pass messages to each other.
"""

from __future__ import annotations

import _string  # the field-name splitter str.format itself uses
import copy
import decimal
import functools
import json
import re
import string
import uuid
from collections.abc import Callable, Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from zhpc.errors import RecipeError
from zhpc.message import MESSAGE_ID_HEADER, RECIPE_HEADER, Message, Outgoing

__all__ = [
    "MAX_DEPTH",
    "Recipe",
    "RecipeInvalid",
    "RecipeWrapper",
    "find_recipe",
    "load_recipe",
    "load_recipe_file",
]

#: Deepest nesting accepted in a recipe (workflows recipes rarely exceed 6).
MAX_DEPTH = 64
#: Most values (strings, numbers, lists, mappings) in one recipe.
MAX_ITEMS = 1_000_000
#: Largest recipe file read from disk, in bytes.
MAX_FILE_BYTES = 4 * 1024 * 1024
#: Keys of a workflows recipe message body.
BODY_KEYS = ("environment", "payload", "recipe", "recipe-path", "recipe-pointer")

_DIGITS = re.compile(r"[0-9]+\Z")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*\Z")
_ID_NAMESPACE = uuid.UUID("6b1f3c52-4a8e-4a43-9d55-0c6f7d1e2a90")
_SUFFIXES = (".json", ".yaml", ".yml")


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


def _short(value: Any, limit: int = 60) -> str:
    """repr() cut to ``limit`` characters, so errors stay one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_node_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _plain(value: Any, where: str) -> Any:
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
        if value is None or isinstance(value, str | bool | int | float):
            return value
        if isinstance(value, list | tuple):
            return [copy_of(item, depth + 1) for item in value]
        if isinstance(value, Mapping):
            out = {}
            for key, item in value.items():
                if not (isinstance(key, str) or _is_node_number(key)):
                    raise RecipeError(f"{where}: key {_short(key)} is not a string")
                out[key] = copy_of(item, depth + 1)
            return out
        raise RecipeError(
            f"{where}: {type(value).__name__} value {_short(value)} cannot be sent as JSON"
        )

    return copy_of(value, 0)


def _json_default(obj: Any) -> Any:
    """Encode what workflows' serializer accepts beyond plain JSON (Decimal)."""
    if isinstance(obj, decimal.Decimal):
        return float(obj)
    raise TypeError(f"{type(obj).__name__} value {_short(obj)} is not JSON serialisable")


# --------------------------------------------------------------------------
# Parameter substitution


class _Malformed(Exception):
    """A template that cannot be applied; the caller adds where it is."""


class _Unknown:
    """Stands for a name missing from the parameters, as workflows' placeholder does.

    It formats back to ``{name}`` (and ``{name[key]}`` after item lookups), so
    the result equals python-workflows' wherever workflows succeeds.
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return "{" + self.text + "}"

    __repr__ = __str__

    def __getitem__(self, key: Any) -> _Unknown:
        if not isinstance(key, str):
            raise TypeError("numeric index on an unknown name")
        return _Unknown(f"{self.text}[{key}]")

    def __format__(self, spec: str) -> str:
        if spec:
            raise TypeError("format specification on an unknown name")
        return str(self)


_NOTHING = object()
_FORMATTER = string.Formatter()
_CONVERSIONS: dict[str, Callable[[Any], str]] = {"r": repr, "s": str, "a": ascii}


def _parse(text: str) -> list[tuple[str, str | None, str | None, str | None]]:
    try:
        return list(_FORMATTER.parse(text))
    except ValueError as exc:
        raise _Malformed(f"{exc} (write '{{{{' and '}}}}' for literal braces)") from None


def _parse_field(field: str) -> tuple[str, list[str | int]]:
    """Split ``name[key][0]`` into the name and item keys; refuse what workflows mishandles."""
    if field == "":
        raise _Malformed("'{}' names no parameter (write '{{}}' for literal braces)")
    try:
        first, rest = _string.formatter_field_name_split(field)
        parts = list(rest)
    except ValueError as exc:
        raise _Malformed(f"{exc} in '{{{field}}}'") from None
    if not isinstance(first, str):
        raise _Malformed(f"'{{{field}}}' is positional; parameters are looked up by name")
    if first == "":
        raise _Malformed(f"'{{{field}}}' names no parameter")
    keys: list[str | int] = []
    for is_attribute, key in parts:
        if is_attribute:
            raise _Malformed(f"attribute access '.{key}' in '{{{field}}}' is not allowed")
        keys.append(key)
    return first, keys


def _check_conversion(conversion: str | None) -> None:
    if conversion is not None and conversion not in _CONVERSIONS:
        raise _Malformed(f"unknown conversion '!{conversion}' (use !r, !s or !a)")


def _convert(value: Any, conversion: str | None) -> Any:
    return value if conversion is None else _CONVERSIONS[conversion](value)


class _Substitution:
    """Applies parameters the way python-workflows' ``Recipe.apply_parameters`` does.

    Where workflows crashes, this raises :class:`_Malformed` instead; where the
    crash comes only from an unknown name (``{x:>5}``, ``{x[0]}``), the field is
    left exactly as written, so parameters can be applied in stages.
    """

    def __init__(self, parameters: Mapping[str, Any], problems: list[str] | None = None):
        self.parameters = parameters
        self.problems = problems

    def apply(self, item: Any, path: tuple[Any, ...]) -> Any:
        if isinstance(item, str):
            try:
                return self.string(item)
            except _Malformed as exc:
                return self._fail(path, item, str(exc))
        if isinstance(item, dict):
            out = {}
            for key, value in item.items():
                new_key = self.apply(key, (*path, "<key>")) if isinstance(key, str) else key
                if isinstance(key, str) and not isinstance(new_key, str):
                    # JSON keys are strings; workflows would build an unsendable recipe
                    self._fail((*path, key), key, "a key must stay a string, but "
                               f"$REPLACE made it {_short(new_key, 30)}")
                    new_key = key
                out[new_key] = self.apply(value, (*path, key))
            return out
        if isinstance(item, list):
            return [self.apply(value, (*path, index)) for index, value in enumerate(item)]
        if isinstance(item, tuple):
            return tuple(self.apply(list(item), path))
        return item

    def _fail(self, path: tuple[Any, ...], item: Any, reason: str) -> Any:
        shown = _short(item)
        message = f"{_where(path)}: {reason}"
        if str(item) not in reason:
            message += f" (in {shown})"
        if self.problems is None:
            raise RecipeError(message)
        self.problems.append(message)
        return item

    def string(self, text: str) -> Any:
        if text.startswith("{$REPLACE") and text.endswith("}"):
            # Same slicing as workflows, so "{$REPLACE:x}" names "x".
            try:
                value = self._replace_walk("{" + text[10:-1] + "}", 2)
            except KeyError:
                return None  # workflows: an unknown name replaces the string by None
            if value is _NOTHING:
                raise _Malformed("'{$REPLACE:...}' names no parameter")
            return copy.deepcopy(value)
        return self._format(text, 2)[0]

    def _replace_walk(self, text: str, depth: int) -> Any:
        """Value of the last field in ``text``; KeyError when a name or item is missing."""
        if depth < 0:
            raise _Malformed("format specifications nested too deeply")
        last: Any = _NOTHING
        for _literal, field, spec, conversion in _parse(text):
            if field is None:
                continue
            name, keys = _parse_field(field)
            _check_conversion(conversion)
            value = self.parameters[name]
            for key in keys:
                value = self._index(value, key, missing_raises=True)
            value = _convert(value, conversion)
            self._replace_walk(spec or "", depth - 1)
            last = value
        return last

    @staticmethod
    def _index(value: Any, key: str | int, *, missing_raises: bool) -> Any:
        try:
            return value[key]
        except KeyError:
            if missing_raises:
                raise
            raise _Malformed(f"no item [{key}] in {_short(value, 40)}") from None
        except IndexError:
            raise _Malformed(f"index [{key}] out of range for {_short(value, 40)}") from None
        except TypeError:
            if isinstance(value, _Unknown):
                raise
            raise _Malformed(
                f"cannot look up [{key}] in {type(value).__name__} {_short(value, 40)}"
            ) from None

    def _format(self, text: str, depth: int) -> tuple[str, bool]:
        """Format ``text``; the flag says whether an unknown name took part."""
        if depth < 0:
            raise _Malformed("format specifications nested too deeply")
        out: list[str] = []
        unknown = False
        for literal, field, spec, conversion in _parse(text):
            out.append(literal)
            if field is None:
                continue
            name, keys = _parse_field(field)
            _check_conversion(conversion)
            spec_text, spec_unknown = self._format(spec or "", depth - 1)
            if name in self.parameters:
                value, field_unknown = self.parameters[name], False
            else:
                value, field_unknown = _Unknown(name), True
            try:
                for key in keys:
                    value = self._index(value, key, missing_raises=False)
                value = _convert(value, conversion)
                out.append(format(value, spec_text))
            except (TypeError, ValueError, _Malformed) as exc:
                if isinstance(exc, _Malformed) and not (field_unknown or spec_unknown):
                    raise
                if not (field_unknown or spec_unknown):
                    raise _Malformed(f"cannot format {_short(value, 40)}: {exc}") from None
                # Only an unknown name stands in the way: keep the field as written.
                out.append(_verbatim(field, spec, conversion))
            unknown = unknown or field_unknown or spec_unknown
        return "".join(out), unknown


def _verbatim(field: str, spec: str | None, conversion: str | None) -> str:
    text = "{" + field
    if conversion:
        text += "!" + conversion
    if spec:
        text += ":" + spec
    return text + "}"


def _where(path: tuple[Any, ...]) -> str:
    """Human location of a value: ``node 2: parameters.files[0]``."""
    if not path:
        return "recipe"
    head, rest = path[0], path[1:]
    node = _is_node_number(head)
    tail = "" if node else str(head)
    for part in rest:
        if isinstance(part, int):
            tail += f"[{part}]"
        elif part == "<key>":
            tail += " (a key)"
        else:
            tail += f".{part}" if tail else str(part)
    if not node:
        return tail
    return f"node {head}: {tail}" if tail else f"node {head}"


# --------------------------------------------------------------------------
# The recipe graph


class Recipe:
    """A processing recipe: numbered steps, ``start`` and an optional ``error``.

    The constructor normalises exactly as python-workflows does (node keys to
    integers, a single ``output`` to a list), so messages are identical on the
    wire; it also turns a top-level ``error: N`` into ``[N]``, which workflows
    needs but does not do itself. Unknown keys are kept; :meth:`problems` says
    what is wrong, :meth:`validate` raises.
    """

    def __init__(self, data: Mapping[Any, Any] | None = None, *, source: str | None = None,
                 _decoded: bool = False):
        self.source = source
        self._duplicates: list[int] = []
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise RecipeError(f"{source or 'recipe'}: a recipe must be a mapping, not "
                              f"{type(data).__name__}")
        if not _decoded:  # fresh json.loads output is plain already: no copy (3x faster)
            data = _plain(data, source or "recipe")
        self.data: dict[Any, Any] = self._normalise(data)

    def _normalise(self, data: dict[Any, Any]) -> dict[Any, Any]:
        kept: dict[Any, Any] = {}
        converted: dict[int, Any] = {}
        for key, value in data.items():
            if isinstance(key, str) and _DIGITS.match(key):
                number = int(key)
                if number in converted or number in kept:
                    self._duplicates.append(number)
                converted[number] = value
            else:
                if _is_node_number(key) and key in converted:
                    self._duplicates.append(key)
                kept[key] = value
        # Same key order as workflows: converted keys move to the end.
        result = {**kept, **converted}
        for key, node in result.items():
            if (_is_node_number(key) and isinstance(node, dict) and "output" in node
                    and not isinstance(node["output"], list | dict)):
                result[key] = {**node, "output": [node["output"]]}  # never edit the input
        if _is_node_number(result.get("error")):
            result["error"] = [result["error"]]
        return result

    # construction -----------------------------------------------------------

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str | None = None) -> Recipe:
        where = source or "recipe"
        try:
            if isinstance(text, bytes):
                text = text.decode("utf-8")
            data = json.loads(text)
        except UnicodeDecodeError as exc:
            raise RecipeError(f"{where}: not UTF-8: {exc.reason} at byte {exc.start}") from None
        except json.JSONDecodeError as exc:
            raise RecipeError(f"{where}: not valid JSON: {exc}") from None
        except RecursionError:
            raise RecipeError(f"{where}: nested too deeply") from None
        return cls(data, source=source)

    @classmethod
    def from_yaml(cls, text: str | bytes, *, source: str | None = None) -> Recipe:
        import yaml

        where = source or "recipe"
        try:
            data = yaml.load(text, Loader=_yaml_loader())
        except yaml.YAMLError as exc:
            reason = " ".join(str(exc).split())
            raise RecipeError(f"{where}: not valid YAML: {reason}") from None
        except RecursionError:
            raise RecipeError(f"{where}: nested too deeply") from None
        return cls(data, source=source)

    def copy(self) -> Recipe:
        return Recipe(self.data, source=self.source)

    # access -----------------------------------------------------------------

    @property
    def nodes(self) -> dict[int, Any]:
        """The numbered steps (values are mappings in a valid recipe)."""
        return {k: v for k, v in self.data.items() if _is_node_number(k)}

    @property
    def start(self) -> list[Any]:
        start = self.data.get("start")
        return start if isinstance(start, list) else []

    def __getitem__(self, key: Any) -> Any:
        return self.data[key]

    def __contains__(self, key: Any) -> bool:
        return key in self.data

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Recipe):
            return self.data == other.data
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"<Recipe {self.source or ''} nodes={sorted(self.nodes)}>"

    def to_dict(self) -> dict[Any, Any]:
        """A deep copy of the recipe as JSON-ready data (node keys are ints)."""
        return copy.deepcopy(self.data)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.data, indent=indent, default=_json_default)

    # links ------------------------------------------------------------------

    def links(self, node: int, kind: str = "output") -> dict[str | None, list[int]]:
        """Targets of a node's ``output`` or ``error``: ``{None: [...]}`` or by name."""
        step = self.nodes.get(node)
        return _links(step.get(kind)) if isinstance(step, dict) else {}

    # validation -------------------------------------------------------------

    def problems(self) -> list[str]:
        """Everything wrong with the recipe, one line each, naming node and key."""
        data = self.data
        if not data:
            return ["recipe is empty"]
        problems = [f"node {n}: defined more than once" for n in self._duplicates]
        nodes: dict[int, dict[str, Any]] = {}
        for key, value in data.items():
            if key in ("start", "error"):
                continue
            if not _is_node_number(key):
                problems.append(f"top-level key {_short(key)}: not a node number "
                                "(python-workflows cannot parse other keys here)")
            elif key < 1:
                problems.append(f"node {key}: node numbers start at 1")
            elif not isinstance(value, dict):
                problems.append(f"node {key}: must be a mapping, not {type(value).__name__}")
            else:
                nodes[key] = value
        edges: dict[int, list[int]] = {n: [] for n in nodes}
        roots: list[int] = []

        def check_targets(where: str, targets: list[Any], source: int | None) -> None:
            for target in targets:
                if not _is_node_number(target):
                    problems.append(f"{where}: {_short(target)} is not a node number")
                elif target not in data:
                    problems.append(f"{where}: node {target} does not exist")
                elif target in nodes:
                    if source is None:
                        roots.append(target)
                    else:
                        edges[source].append(target)

        # start
        if "start" not in data:
            problems.append("start: missing (nothing would ever run)")
        elif not isinstance(data["start"], list) or not data["start"]:
            problems.append("start: must be a non-empty list of [node, payload] pairs")
        else:
            for i, entry in enumerate(data["start"]):
                if not (isinstance(entry, list) and len(entry) == 2):
                    problems.append(f"start[{i}]: must be a [node, payload] pair, "
                                    f"not {_short(entry)}")
                else:
                    check_targets(f"start[{i}]", [entry[0]], None)
        # top-level error
        if "error" in data:
            value = data["error"]
            if isinstance(value, list):
                check_targets("error", value, None)
            else:
                problems.append(f"error: must be a node number or a list of them, "
                                f"not {_short(value)}")
        # nodes
        for number, node in nodes.items():
            problems.extend(_node_problems(number, node))
            for kind in ("output", "error"):
                if kind not in node:
                    continue
                where = f"node {number}: {kind}"
                value = node[kind]
                if isinstance(value, dict):
                    if kind == "error":
                        problems.append(f"{where}: must be a node number or a list of them "
                                        "(named outputs are only for 'output')")
                        continue
                    for name, targets in value.items():
                        if not isinstance(name, str) or not name:
                            problems.append(f"{where}: output name {_short(name)} "
                                            "must be a non-empty string")
                        if _is_node_number(targets):
                            targets = [targets]
                        if not isinstance(targets, list):
                            problems.append(f"{where}.{name}: must be a node number or a list "
                                            f"of them, not {_short(targets)}")
                            continue
                        check_targets(f"{where}.{name}", targets, number)
                elif _is_node_number(value):  # workflows keeps a single error link as is
                    check_targets(where, [value], number)
                elif isinstance(value, list):
                    check_targets(where, value, number)
                else:
                    problems.append(f"{where}: must be a node number, a list of them, or "
                                    f"named outputs, not {_short(value)}")
        # cycles and reachability (only over links that made sense)
        cycle = _find_cycle(edges)
        if cycle:
            problems.append("cycle: " + " -> ".join(str(n) for n in cycle)
                            + " (use checkpoint() to revisit a step)")
        reached = set(roots)
        frontier = list(roots)
        while frontier:
            for target in edges.get(frontier.pop(), []):
                if target not in reached:
                    reached.add(target)
                    frontier.append(target)
        for number in nodes:
            if number not in reached:
                problems.append(f"node {number}: unreachable from start or error")
        # templates that can never be applied
        _Substitution({}, problems).apply(data, ())
        return problems

    def validate(self) -> None:
        """Raise :class:`RecipeInvalid` listing every problem, if there are any."""
        problems = self.problems()
        if problems:
            raise RecipeInvalid(problems, self.source)

    # transformation ---------------------------------------------------------

    def apply_parameters(self, parameters: Mapping[str, Any]) -> None:
        """Substitute ``{name}`` and ``{$REPLACE:name}`` in place, like python-workflows.

        On a malformed template the recipe is left unchanged and a
        :class:`~zhpc.errors.RecipeError` names the node and key.
        """
        if not isinstance(parameters, Mapping):
            raise RecipeError(f"parameters must be a mapping, not {type(parameters).__name__}")
        try:
            result = _Substitution(parameters).apply(self.data, ())
        except RecursionError:
            raise RecipeError("parameters are nested too deeply") from None
        self.data = _plain(result, "recipe after substitution")

    def merge(self, other: Recipe | Mapping[Any, Any] | str | None) -> Recipe:
        """A new recipe running both, other's nodes renumbered after ours (as workflows).

        Both recipes must be valid; neither is modified.
        """
        if other is None:
            return self.copy()
        if isinstance(other, str):
            other = Recipe.from_json(other)
        elif not isinstance(other, Recipe):
            other = Recipe(other)
        if not other.data:
            return self.copy()
        if not self.data:
            return other.copy()
        self.validate()
        other.validate()
        merged = copy.deepcopy(self.data)
        next_number = max([1, *self.nodes]) + 1
        translation = {}
        for number in other.nodes:
            translation[number] = next_number
            next_number += 1

        def translate(value: Any) -> Any:
            if isinstance(value, list):
                return [translate(v) for v in value]
            if isinstance(value, dict):
                return {k: translate(v) for k, v in value.items()}
            return translation[value]

        for number, node in other.nodes.items():
            node = copy.deepcopy(node)
            for kind in ("output", "error"):
                if kind in node:
                    node[kind] = translate(node[kind])
            merged[translation[number]] = node
        merged["start"] = merged["start"] + [
            [translation[n], copy.deepcopy(p)] for n, p in other.data["start"]
        ]
        if "error" in other.data:
            merged["error"] = list(merged.get("error", [])) + translate(other.data["error"])
        return Recipe(merged, source=self.source)


def _links(value: Any) -> dict[str | None, list[int]]:
    if value is None:
        return {}
    if _is_node_number(value):
        return {None: [value]}
    if isinstance(value, list):
        return {None: list(value)}
    if isinstance(value, dict):
        return {name: [t] if _is_node_number(t) else list(t) for name, t in value.items()}
    return {}


def _node_problems(number: int, node: dict[str, Any]) -> Iterator[str]:
    where = f"node {number}"
    for key in ("queue", "topic", "exchange", "service"):
        if key in node and not (isinstance(node[key], str) and node[key]):
            yield f"{where}: {key} must be a non-empty string, not {_short(node[key])}"
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
                    return [*path[path.index(child):], child]
                if not state.get(child):
                    state[child] = 1
                    stack.append((child, iter(edges.get(child, []))))
                    break
            else:
                state[node] = 2
                stack.pop()
    return None


@functools.cache
def _yaml_loader() -> type:
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader that keeps dates as strings: recipes must survive JSON."""

    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    return Loader



# --------------------------------------------------------------------------
# Recipe files


def load_recipe_file(path: str | Path) -> Recipe:
    """Read a JSON or YAML recipe (by suffix; other suffixes are tried as JSON then YAML)."""
    path = Path(path)
    where = str(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise RecipeError(f"{where}: no such recipe file") from None
    except IsADirectoryError:
        raise RecipeError(f"{where}: is a directory, not a recipe file") from None
    except OSError as exc:
        raise RecipeError(f"{where}: cannot read: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise RecipeError(f"{where}: larger than {MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{where}: not UTF-8: {exc.reason} at byte {exc.start}") from None
    suffix = path.suffix.lower()
    if suffix == ".json":
        return Recipe.from_json(text, source=where)
    if suffix in (".yaml", ".yml"):
        return Recipe.from_yaml(text, source=where)
    try:
        return Recipe.from_json(text, source=where)
    except RecipeError:
        return Recipe.from_yaml(text, source=where)


def find_recipe(name: str, directory: str | Path | None = None) -> Path:
    """The file of recipe ``name`` (no suffix) in ``directory``, or among zhpc's examples.

    Names are plain file names: anything with a path separator or ``..`` is refused,
    so a message can never make zhpc read a file outside the recipe directory.
    """
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise RecipeError(f"invalid recipe name {_short(name)}: use letters, digits, "
                          "'_', '-', '.' and no path")
    if directory is None:
        base = Path(str(resources.files("zhpc.recipes")))
    else:
        base = Path(directory)
        if not base.is_dir():
            raise RecipeError(f"recipe directory {base} does not exist")
    found = [base / (name + suffix) for suffix in _SUFFIXES if (base / (name + suffix)).is_file()]
    if not found:
        raise RecipeError(f"no recipe {name!r} in {base} (looked for .json, .yaml, .yml)")
    if len(found) > 1:
        raise RecipeError(f"recipe {name!r} is ambiguous in {base}: "
                          + ", ".join(p.name for p in found))
    return found[0]


def load_recipe(name: str, directory: str | Path | None = None) -> Recipe:
    """:func:`find_recipe` then :func:`load_recipe_file`."""
    return load_recipe_file(find_recipe(name, directory))


# --------------------------------------------------------------------------
# One step of a running recipe


class RecipeWrapper:
    """A recipe positioned at one step, producing the messages that step sends.

    Every produced :class:`~zhpc.message.Outgoing` goes to ``emit`` (by default
    appended to :attr:`outbox`) and is also returned, so a service can buffer a
    step's outputs and publish them before it acknowledges its input. Message
    ids are derived from the input's id and a counter: a service that redoes
    the same work after a crash produces the same ids, so duplicates can be
    recognised downstream.
    """

    def __init__(
        self,
        recipe: Recipe | Mapping[Any, Any],
        *,
        pointer: int | None = None,
        path: list[int] | None = None,
        environment: dict[str, Any] | None = None,
        payload: Any = None,
        emit: Callable[[Outgoing], None] | None = None,
        message_id: str | None = None,
    ) -> None:
        self.recipe = recipe if isinstance(recipe, Recipe) else Recipe(recipe)
        if pointer is not None and not isinstance(self.recipe.nodes.get(pointer), dict):
            raise RecipeError(f"recipe-pointer {pointer} names no step of the recipe")
        self.recipe_pointer = pointer
        self.recipe_path: list[int] = list(path or [])
        self.environment: dict[str, Any] = environment if environment is not None else {}
        self.payload = payload
        self.default_channel: str | None = None
        self.outbox: list[Outgoing] = []
        self.emit: Callable[[Outgoing], None] = emit or self.outbox.append
        self._id_base = message_id or uuid.uuid4().hex
        self._sequence = 0

    # construction -----------------------------------------------------------

    @classmethod
    def from_recipe(
        cls,
        recipe: Recipe | Mapping[Any, Any],
        parameters: Mapping[str, Any] | None = None,
        *,
        environment: dict[str, Any] | None = None,
        emit: Callable[[Outgoing], None] | None = None,
    ) -> RecipeWrapper:
        """A new recipe instance, ready for :meth:`start`: parameters applied, validated,
        and a fresh ``environment["ID"]`` (as Zocalo's dispatcher assigns)."""
        recipe = recipe.copy() if isinstance(recipe, Recipe) else Recipe(recipe)
        if parameters:
            recipe.apply_parameters(parameters)
        recipe.validate()
        environment = dict(environment or {})
        environment.setdefault("ID", str(uuid.uuid4()))
        return cls(recipe, environment=environment, emit=emit)

    @classmethod
    def from_message(
        cls, message: Message, emit: Callable[[Outgoing], None] | None = None
    ) -> RecipeWrapper:
        """The step a received message points at; RecipeError says why it cannot be one."""
        if not message.is_recipe:
            raise RecipeError(f"message on {message.queue!r} is not a recipe message "
                              f"(no '{RECIPE_HEADER}' header)")
        if message.malformed:
            raise RecipeError(f"message on {message.queue!r}: {message.malformed}")
        message_id = message.headers.get(MESSAGE_ID_HEADER) or message.message_id
        return cls.from_body(message.json(), emit=emit, decoded=True,
                             message_id=str(message_id) if message_id else None)

    @classmethod
    def from_body(
        cls,
        body: Any,
        headers: Mapping[str, Any] | None = None,
        *,
        emit: Callable[[Outgoing], None] | None = None,
        message_id: str | None = None,
        decoded: bool = False,
    ) -> RecipeWrapper:
        """From a decoded message body (and its headers, if any are to be checked).

        ``decoded`` says the body came straight from ``json.loads`` and is not
        shared, so the recipe need not be copied and checked for non-JSON values.
        """
        if headers is not None:
            if not Message(b"", dict(headers), "").is_recipe:
                raise RecipeError(f"not a recipe message (no '{RECIPE_HEADER}' header)")
            message_id = message_id or headers.get(MESSAGE_ID_HEADER)
        if not isinstance(body, dict):
            raise RecipeError(f"recipe message body must be a JSON object, "
                              f"not {type(body).__name__}")
        if not isinstance(body.get("recipe"), dict) or not body["recipe"]:
            raise RecipeError("recipe message has no 'recipe' object")
        pointer = body.get("recipe-pointer")
        if isinstance(pointer, str) and _DIGITS.match(pointer):
            pointer = int(pointer)
        if not _is_node_number(pointer) or pointer < 1:
            raise RecipeError(f"recipe message: recipe-pointer {_short(pointer)} "
                              "is not a node number")
        path = body.get("recipe-path", [])
        if not isinstance(path, list) or not all(_is_node_number(p) for p in path):
            raise RecipeError(f"recipe message: recipe-path {_short(path)} "
                              "is not a list of node numbers")
        environment = body.get("environment", {})
        if not isinstance(environment, dict):
            raise RecipeError(f"recipe message: environment must be an object, "
                              f"not {type(environment).__name__}")
        recipe = Recipe(body["recipe"], source="recipe message", _decoded=decoded)
        step = recipe.nodes.get(pointer)
        if not isinstance(step, dict):
            raise RecipeError(f"recipe message: recipe-pointer {pointer} names no step "
                              f"(steps: {sorted(recipe.nodes)})")
        for kind in ("output", "error"):
            for name, targets in _checked_links(pointer, step, kind).items():
                for target in targets:
                    _destination_problem(recipe, target, f"step {pointer} {kind}"
                                         + (f" {name!r}" if name else ""))
        return cls(recipe, pointer=pointer, path=path, environment=environment,
                   payload=body.get("payload"), emit=emit, message_id=message_id)

    # state ------------------------------------------------------------------

    @property
    def recipe_step(self) -> dict[str, Any] | None:
        """The current step's mapping (None before :meth:`start`)."""
        if self.recipe_pointer is None:
            return None
        return self.recipe.nodes[self.recipe_pointer]

    @property
    def recipe_id(self) -> str | None:
        value = self.environment.get("ID")
        return None if value is None else str(value)

    @property
    def parameters(self) -> dict[str, Any]:
        step = self.recipe_step or {}
        parameters = step.get("parameters")
        return parameters if isinstance(parameters, dict) else {}

    def set_default_channel(self, channel: str | None) -> None:
        """Make one named output what :meth:`send` uses (as in workflows)."""
        self.default_channel = channel

    # producing messages -----------------------------------------------------

    def start(self, *, headers: Mapping[str, Any] | None = None,
              delay: float | None = None, expiration: float | None = None) -> list[Outgoing]:
        """The messages that start a new recipe instance, one per ``start`` entry."""
        if self.recipe_pointer is not None:
            raise RecipeError("this recipe has already been started")
        if not self.recipe.start:
            raise RecipeError("recipe has no start entries")
        planned = []
        for entry in self.recipe.start:
            if not (isinstance(entry, list) and len(entry) == 2):
                raise RecipeError(f"start entry {_short(entry)} is not a [node, payload] pair")
            planned.append((entry[0], entry[1]))
        return self._emit_all(planned, headers, delay, expiration, add_path_step=True)

    def send(self, payload: Any, *, headers: Mapping[str, Any] | None = None,
             delay: float | None = None, expiration: float | None = None) -> list[Outgoing]:
        """Send ``payload`` to the step's unnamed outputs (or the default channel).

        A step without outputs is an end point: nothing is sent. A step with
        named outputs and no default channel raises: the payload would be lost.
        """
        step = self._step()
        if "output" not in step:
            return []
        output = step["output"]
        if isinstance(output, dict):
            if self.default_channel is None:
                names = ", ".join(map(str, output)) or "none"
                raise RecipeError(
                    f"step {self.recipe_pointer} has named outputs ({names}) and no default "
                    "channel: use send_to(name, ...) or set_default_channel(name)")
            return self.send_to(self.default_channel, payload, headers=headers,
                                delay=delay, expiration=expiration)
        targets = _checked_links(self.recipe_pointer, step, "output").get(None, [])
        return self._emit_all([(t, payload) for t in targets], headers, delay, expiration)

    def send_to(self, channel: str, payload: Any, *, headers: Mapping[str, Any] | None = None,
                delay: float | None = None, expiration: float | None = None) -> list[Outgoing]:
        """Send ``payload`` to the named output ``channel``.

        As in workflows, a channel the recipe does not connect is dropped on
        purpose (outputs such as ``failure`` are optional); the empty list says so.
        """
        step = self._step()
        if "output" not in step:
            return []
        output = step["output"]
        if not isinstance(output, dict):
            if self.default_channel == channel:
                return self.send(payload, headers=headers, delay=delay, expiration=expiration)
            return []
        if channel not in output:
            return []
        targets = _checked_links(self.recipe_pointer, step, "output").get(channel, [])
        return self._emit_all([(t, payload) for t in targets], headers, delay, expiration)

    def checkpoint(self, payload: Any, *, delay: float = 0,
                   headers: Mapping[str, Any] | None = None,
                   expiration: float | None = None) -> list[Outgoing]:
        """Send ``payload`` back to this same step, optionally after ``delay`` seconds.

        The recipe path is not extended and the step's own ``transport-delay``
        does not apply (as in workflows).
        """
        self._step()
        return self._emit_all([(self.recipe_pointer, payload)], headers, delay, expiration,
                              add_path_step=False)

    def error_targets(self) -> list[int]:
        """Where :meth:`send_error` goes: the step's ``error`` nodes, else the recipe's."""
        step = self._step()
        if "error" in step:
            return _checked_links(self.recipe_pointer, step, "error").get(None, [])
        targets = self.recipe.data.get("error", [])
        return list(targets) if isinstance(targets, list) else []

    def send_error(self, details: Any, *, headers: Mapping[str, Any] | None = None,
                   expiration: float | None = None) -> list[Outgoing]:
        """Route ``details`` to the error steps; an empty list means no error route
        exists, and the caller must keep the input (dead-letter it), not drop it."""
        targets = self.error_targets()
        return self._emit_all([(t, details) for t in targets], headers, None, expiration)

    # internals --------------------------------------------------------------

    def _step(self) -> dict[str, Any]:
        step = self.recipe_step
        if step is None:
            raise RecipeError("this recipe wrapper has no current step (call start() first)")
        return step

    def body(self, destination: int, payload: Any, add_path_step: bool = True) -> dict[str, Any]:
        """The message body for ``destination``, with workflows' keys in workflows' order."""
        if add_path_step and self.recipe_pointer:
            path = [*self.recipe_path, self.recipe_pointer]
        else:
            path = list(self.recipe_path)
        return {
            "environment": self.environment,
            "payload": payload,
            "recipe": self.recipe.data,
            "recipe-path": path,
            "recipe-pointer": destination,
        }

    def _emit_all(self, planned: list[tuple[Any, Any]], headers: Mapping[str, Any] | None,
                  delay: float | None, expiration: float | None,
                  add_path_step: bool = True) -> list[Outgoing]:
        """Build every message first, then emit: one bad destination sends nothing."""
        built: list[Outgoing] = []
        for destination, payload in planned:
            built.extend(self._build(destination, payload, headers, delay, expiration,
                                     add_path_step))
        for outgoing in built:
            self.emit(outgoing)
        return built

    def _build(self, destination: Any, payload: Any, headers: Mapping[str, Any] | None,
               delay: float | None, expiration: float | None,
               add_path_step: bool) -> list[Outgoing]:
        node = _destination_problem(self.recipe, destination, f"step {self.recipe_pointer}")
        if delay is None:
            delay = node.get("transport-delay")
        try:
            body = json.dumps(self.body(destination, payload, add_path_step),
                              default=_json_default).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise RecipeError(f"message for node {destination} cannot be encoded: {exc}") from None
        except RecursionError:
            raise RecipeError(f"payload for node {destination} is nested too deeply") from None
        extra = dict(headers or {})
        delay = delay or None
        out: list[Outgoing] = []
        queue, topic, exchange = node.get("queue"), node.get("topic"), node.get("exchange")
        if topic and delay:
            raise RecipeError(f"node {destination}: a broadcast to topic {topic!r} "
                              "cannot be delayed")
        if queue:
            if exchange and not delay:
                # workflows publishes to the node's exchange with the queue as routing key;
                # a delayed message goes through the delay mechanism, exchange ignored.
                out.append(self._outgoing(exchange, "exchange", body, extra, delay,
                                          expiration, routing_key=queue))
            else:
                out.append(self._outgoing(queue, "queue", body, extra, delay, expiration))
        if topic:
            out.append(self._outgoing(topic, "topic", body, extra, None, expiration))
        return out

    def _outgoing(self, destination: str, kind: Any, body: bytes, extra: dict[str, Any],
                  delay: float | None, expiration: float | None,
                  routing_key: str = "") -> Outgoing:
        message_id = uuid.uuid5(_ID_NAMESPACE, f"{self._id_base}/{self._sequence}").hex
        self._sequence += 1
        headers = {**extra, RECIPE_HEADER: True, MESSAGE_ID_HEADER: message_id}
        return Outgoing(destination=destination, body=body, kind=kind, headers=headers,
                        routing_key=routing_key, delay=delay, expiration=expiration,
                        message_id=message_id)


def _checked_links(pointer: Any, step: dict[str, Any], kind: str) -> dict[str | None, list[int]]:
    """A step's links by channel, refusing values workflows would choke on."""
    value = step.get(kind)
    if value is None and kind not in step:
        return {}
    where = f"step {pointer} {kind}"
    if _is_node_number(value):
        return {None: [value]}
    if isinstance(value, list):
        if not all(_is_node_number(t) for t in value):
            raise RecipeError(f"{where}: {_short(value)} is not a list of node numbers")
        return {None: list(value)}
    if isinstance(value, dict) and kind == "output":
        out: dict[str | None, list[int]] = {}
        for name, targets in value.items():
            if _is_node_number(targets):
                targets = [targets]
            if not isinstance(targets, list) or not all(_is_node_number(t) for t in targets):
                raise RecipeError(f"{where} {name!r}: {_short(targets)} "
                                  "is not a list of node numbers")
            out[name] = list(targets)
        return out
    raise RecipeError(f"{where}: {_short(value)} is not a valid link")


def _destination_problem(recipe: Recipe, target: Any, where: str) -> dict[str, Any]:
    """The node a message goes to; RecipeError if it cannot receive one."""
    node = recipe.nodes.get(target) if _is_node_number(target) else None
    if not isinstance(node, dict):
        raise RecipeError(f"{where}: link to node {_short(target)}, which does not exist")
    if not (isinstance(node.get("queue"), str) and node["queue"]) and not (
            isinstance(node.get("topic"), str) and node["topic"]):
        raise RecipeError(f"{where}: node {target} has no queue or topic to send to")
    if node.get("exchange") is not None and not isinstance(node["exchange"], str):
        raise RecipeError(f"{where}: node {target} exchange must be a string")
    delay = node.get("transport-delay")
    if delay is not None and (isinstance(delay, bool) or not isinstance(delay, int | float)
                              or delay < 0):
        raise RecipeError(f"{where}: node {target} transport-delay must be seconds >= 0")
    return node

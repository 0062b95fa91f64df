"""The recipe graph: numbered steps plus ``start`` and an optional top-level ``error``.

A :class:`Recipe` holds its data normalised exactly as python-workflows does, so
messages built from it are identical on the wire.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from collections.abc import Mapping
from typing import Any

from zhpc import strictjson
from zhpc.errors import RecipeError
from zhpc.recipe.data import is_node_number, json_default, plain
from zhpc.recipe.links import parse_links
from zhpc.recipe.parameters import substitute_recipe
from zhpc.recipe.validate import RecipeInvalid, recipe_problems

__all__ = ["Recipe"]


class Recipe:
    """A processing recipe: numbered steps, ``start`` and an optional ``error``.

    The constructor normalises exactly as python-workflows does (node keys to
    integers, a single ``output`` to a list), so messages are identical on the
    wire; it also turns a top-level ``error: N`` into ``[N]``, which workflows
    needs but does not do itself. Unknown keys are kept; :meth:`problems` says
    what is wrong, :meth:`validate` raises.
    """

    def __init__(
        self,
        data: Mapping[Any, Any] | None = None,
        *,
        source: str | None = None,
        _decoded: bool = False,
    ):
        self.source = source
        self._duplicates: list[int] = []
        #: ``{name}`` templates left after :meth:`apply_parameters` (no such parameter).
        self.unfilled: list[str] = []
        #: Set by :meth:`apply_parameters`: braces in the text now come from values,
        #: which are inserted literally, so they are no longer checked as templates.
        self.substituted = False
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise RecipeError(
                f"{source or 'recipe'}: a recipe must be a mapping, not {type(data).__name__}"
            )
        if not _decoded:  # fresh json.loads output is plain already: no copy (3x faster)
            data = plain(data, source or "recipe")
        self.data: dict[Any, Any] = self._normalise(data)

    def _normalise(self, data: dict[Any, Any]) -> dict[Any, Any]:
        # Runs for every received message: the cheap tests first (``key.isascii() and
        # key.isdigit()`` is DIGITS.match without the regex; a str is never a node number).
        kept: dict[Any, Any] = {}
        converted: dict[int, Any] = {}
        for key, value in data.items():
            if isinstance(key, str):
                if key.isascii() and key.isdigit():
                    number = int(key)
                    if number in converted or number in kept:
                        self._duplicates.append(number)
                    converted[number] = value
                    continue
            elif is_node_number(key) and key in converted:
                self._duplicates.append(key)
            kept[key] = value
        # Same key order as workflows: converted keys move to the end.
        result = {**kept, **converted}
        for key, node in result.items():
            if (
                isinstance(node, dict)
                and "output" in node
                and not isinstance(node["output"], list | dict)
                and is_node_number(key)
            ):
                result[key] = {**node, "output": [node["output"]]}  # never edit the input
        if is_node_number(result.get("error")):
            result["error"] = [result["error"]]
        return result

    # construction -----------------------------------------------------------

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str | None = None) -> Recipe:
        where = source or "recipe"
        try:
            if isinstance(text, bytes):
                text = text.decode("utf-8")
            data = strictjson.loads(text, unique_keys=True)
        except UnicodeDecodeError as exc:
            raise RecipeError(f"{where}: not UTF-8: {exc.reason} at byte {exc.start}") from None
        except json.JSONDecodeError as exc:
            raise RecipeError(f"{where}: not valid JSON: {exc}") from None
        except (strictjson.NonFiniteNumber, strictjson.DuplicateKey) as exc:
            raise RecipeError(f"{where}: {exc}") from None
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
        twin = Recipe(self.data, source=self.source)
        twin.unfilled, twin.substituted = list(self.unfilled), self.substituted
        return twin

    # access -----------------------------------------------------------------

    @property
    def nodes(self) -> dict[int, Any]:
        """The numbered steps (values are mappings in a valid recipe)."""
        return {k: v for k, v in self.data.items() if is_node_number(k)}

    def node(self, number: Any) -> Any:
        """Step ``number`` (None if there is none): ``nodes.get`` without building ``nodes``,
        which a running step asks for several times per message."""
        # Keys are strings or node numbers (``plain`` refuses a bool, which would equal 1).
        return self.data.get(number) if is_node_number(number) else None

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
        try:
            return strictjson.dumps(self.data, indent=indent, default=json_default)
        except ValueError as exc:
            raise RecipeError(
                f"{self.source or 'recipe'}: cannot be written as JSON: {exc}"
            ) from None

    # links ------------------------------------------------------------------

    def links(self, node: int, kind: str = "output") -> dict[str | None, list[int]]:
        """Targets of a node's ``output`` or ``error``: ``{None: [...]}`` or by name.

        Shows whatever makes sense, even in an invalid recipe: a channel whose
        targets are neither a node number nor a list is left out.
        """
        step = self.node(node)
        return parse_links(step.get(kind)).by_channel() if isinstance(step, dict) else {}

    # validation -------------------------------------------------------------

    def problems(self) -> list[str]:
        """Everything wrong with the recipe, one line each, naming node and key."""
        return recipe_problems(self.data, self._duplicates, templates=not self.substituted)

    def validate(self) -> None:
        """Raise :class:`RecipeInvalid` listing every problem, if there are any."""
        problems = self.problems()
        if problems:
            raise RecipeInvalid(problems, self.source)

    # transformation ---------------------------------------------------------

    def apply_parameters(
        self, parameters: Mapping[str, Any], *, max_chars: int | None = None
    ) -> None:
        """Substitute ``{name}`` and ``{$REPLACE:name}`` in place, like python-workflows.

        Values are inserted literally (braces in a value are not templates); the
        names no parameter filled are listed in :attr:`unfilled`. A string longer
        than ``max_chars`` after substitution (default
        :data:`~zhpc.recipe.parameters.MAX_SUBSTITUTED_CHARS`) is an error. On a
        malformed template the recipe is left unchanged and a
        :class:`~zhpc.errors.RecipeError` names the node and key.
        """
        unfilled: list[str] = []
        self.data = substitute_recipe(self.data, parameters, unfilled=unfilled, max_chars=max_chars)
        self.unfilled = sorted(set(self.unfilled) | set(unfilled))
        self.substituted = True

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


@functools.cache
def _yaml_loader() -> type:
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader that keeps dates as strings (recipes must survive JSON) and refuses
        what JSON cannot carry or a reader would get wrong: ``.inf``/``.nan``, huge
        integers, a key twice in one mapping."""

        def construct_yaml_float(self, node: Any) -> float:
            value = super().construct_yaml_float(node)
            if not math.isfinite(value):
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"{str(node.value)[:40]} is not a number JSON allows",
                    node.start_mark,
                )
            return value

        def construct_yaml_int(self, node: Any) -> int:
            digits = len(str(node.value).lstrip("+-"))
            if digits > strictjson.MAX_INT_DIGITS:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"an integer with {digits} digits is too large "
                    f"(at most {strictjson.MAX_INT_DIGITS})",
                    node.start_mark,
                )
            return super().construct_yaml_int(node)

        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _value in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # '<<' merges may be overridden: that is what they are for
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, list | dict):
                    continue  # SafeLoader reports unhashable keys itself
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"key {str(key)[:60]!r} appears twice in one mapping",
                        key_node.start_mark,
                    )
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    Loader.add_constructor("tag:yaml.org,2002:float", Loader.construct_yaml_float)
    Loader.add_constructor("tag:yaml.org,2002:int", Loader.construct_yaml_int)

    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    return Loader

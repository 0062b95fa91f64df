"""The recipe graph: numbered steps plus ``start`` and an optional top-level ``error``.

A :class:`Recipe` holds its data normalised exactly as python-workflows does, so
messages built from it are identical on the wire.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping
from typing import Any

from zhpc.errors import RecipeError
from zhpc.recipe.data import DIGITS, is_node_number, json_default, plain
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
            data = plain(data, source or "recipe")
        self.data: dict[Any, Any] = self._normalise(data)

    def _normalise(self, data: dict[Any, Any]) -> dict[Any, Any]:
        kept: dict[Any, Any] = {}
        converted: dict[int, Any] = {}
        for key, value in data.items():
            if isinstance(key, str) and DIGITS.match(key):
                number = int(key)
                if number in converted or number in kept:
                    self._duplicates.append(number)
                converted[number] = value
            else:
                if is_node_number(key) and key in converted:
                    self._duplicates.append(key)
                kept[key] = value
        # Same key order as workflows: converted keys move to the end.
        result = {**kept, **converted}
        for key, node in result.items():
            if (is_node_number(key) and isinstance(node, dict) and "output" in node
                    and not isinstance(node["output"], list | dict)):
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
        return {k: v for k, v in self.data.items() if is_node_number(k)}

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
        return json.dumps(self.data, indent=indent, default=json_default)

    # links ------------------------------------------------------------------

    def links(self, node: int, kind: str = "output") -> dict[str | None, list[int]]:
        """Targets of a node's ``output`` or ``error``: ``{None: [...]}`` or by name.

        Shows whatever makes sense, even in an invalid recipe: a channel whose
        targets are neither a node number nor a list is left out.
        """
        step = self.nodes.get(node)
        return parse_links(step.get(kind)).by_channel() if isinstance(step, dict) else {}

    # validation -------------------------------------------------------------

    def problems(self) -> list[str]:
        """Everything wrong with the recipe, one line each, naming node and key."""
        return recipe_problems(self.data, self._duplicates)

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
        self.data = substitute_recipe(self.data, parameters)

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
        """SafeLoader that keeps dates as strings: recipes must survive JSON."""

    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    return Loader

"""Processing requests: the ``zocalo.go`` message format and turning one into a recipe.

Shared by ``zhpc go`` (which validates a request before sending it) and the
Dispatcher service (which starts it), so both agree on what a valid request is.
"""

from __future__ import annotations

import copy
import getpass
import re
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from zhpc import strictjson
from zhpc.errors import RecipeError, Rejected
from zhpc.message import Outgoing
from zhpc.recipe import Recipe, RecipeWrapper, find_recipe, load_recipe_file

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.config import LimitsConfig

#: The queue Zocalo's ``zocalo.go`` sends requests to.
DISPATCHER_QUEUE = "processing_recipe"
#: Headers ``zocalo.go`` sets on a request; ``zhpc go`` sets the same ones.
USER_HEADER = "zocalo.go.user"
HOST_HEADER = "zocalo.go.host"

_GUID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
# Namespace for recipe ids derived from a request's message id: a request that
# is delivered twice (the Dispatcher died before its ack) starts the same recipe id.
GUID_NAMESPACE = uuid.UUID("0b8f6c1e-3d7a-4f0e-9a51-6c2d8e4b7f13")


class Lookup(Protocol):
    """Adds parameters to a request (called once per request)."""

    def __call__(self, parameters: Mapping[str, Any]) -> Mapping[str, Any] | None: ...


# --------------------------------------------------------------------------
# Requests


@dataclass
class DispatchRequest:
    """One processing request, in ``zocalo.go``'s format."""

    recipes: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    custom_recipe: dict[str, Any] | None = None

    @classmethod
    def from_body(cls, body: Any) -> DispatchRequest:
        """Check a decoded request body; RecipeError says what is wrong with it."""
        if not isinstance(body, dict):
            raise RecipeError(f"request must be a JSON object, not {type(body).__name__}")
        # Other keys are ignored, as Zocalo's Dispatcher ignores them (site senders add some).
        recipes = body.get("recipes") or []
        if not isinstance(recipes, list) or not all(isinstance(r, str) for r in recipes):
            raise RecipeError("request 'recipes' must be a list of recipe names")
        parameters = body.get("parameters")
        if parameters is None:
            parameters = {}
        if not isinstance(parameters, dict):
            raise RecipeError(
                f"request 'parameters' must be a JSON object, not {type(parameters).__name__}"
            )
        custom = body.get("custom_recipe") or None
        if custom is not None and not isinstance(custom, dict):
            raise RecipeError(
                f"request 'custom_recipe' must be a JSON object, not {type(custom).__name__}"
            )
        if not recipes and custom is None:
            raise RecipeError("request names no recipe (give 'recipes' or 'custom_recipe')")
        guid = parameters.get("guid")
        if guid is not None and not (isinstance(guid, str) and _GUID.match(guid)):
            # Recipes put the guid into paths ("/scratch/{guid}/"): no separators, no "..".
            raise RecipeError(
                f"request parameter 'guid' {guid!r:.60} must be 1-128 letters, "
                "digits, '.', '_' or '-', starting with a letter or digit"
            )
        return cls(list(recipes), dict(parameters), custom)

    def to_body(self) -> dict[str, Any]:
        """The request as ``zocalo.go`` sends it."""
        body: dict[str, Any] = {"recipes": list(self.recipes), "parameters": dict(self.parameters)}
        if self.custom_recipe:
            body["custom_recipe"] = self.custom_recipe
        return body

    @property
    def guid(self) -> str | None:
        return self.parameters.get("guid")

    def describe(self) -> str:
        names = list(self.recipes) + (["(custom recipe)"] if self.custom_recipe else [])
        return ", ".join(names)


def request_headers() -> dict[str, str]:
    """Who sent a request, in the headers ``zocalo.go`` uses."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return {USER_HEADER: user, HOST_HEADER: socket.gethostname()}


def request_message(request: DispatchRequest, queue: str = DISPATCHER_QUEUE) -> Outgoing:
    """The broker message carrying ``request`` to the Dispatcher."""
    return Outgoing.json(queue, request.to_body(), headers=request_headers())


# --------------------------------------------------------------------------
# Recipes


class RecipeCache:
    """Named recipes from one directory, re-read only when a file changes.

    A cached recipe is kept with the file's mtime and size; each use checks
    them (one ``stat``), so an edited recipe takes effect with the next request
    while an unchanged one is not parsed again.
    """

    def __init__(self, directory: str | Path | None, max_entries: int = 256) -> None:
        self.directory = directory
        self.max_entries = max_entries
        self._entries: dict[str, tuple[Path, int, int, Recipe]] = {}

    def get(self, name: str) -> Recipe:
        """A fresh, validated copy of recipe ``name``; RecipeError if it cannot be had."""
        path = find_recipe(name, self.directory)
        try:
            info = path.stat()
        except OSError as exc:
            raise RecipeError(f"recipe {name!r}: cannot read {path}: {exc.strerror}") from None
        cached = self._entries.get(name)
        if cached and cached[0] == path and cached[1:3] == (info.st_mtime_ns, info.st_size):
            return cached[3].copy()
        recipe = load_recipe_file(path)
        recipe.validate()
        if len(self._entries) >= self.max_entries:
            self._entries.pop(next(iter(self._entries)))
        self._entries[name] = (path, info.st_mtime_ns, info.st_size, recipe)
        return recipe.copy()


def run_lookups(parameters: dict[str, Any], lookups: list[tuple[str, Lookup]]) -> dict[str, Any]:
    """Parameters plus what each lookup adds; the request's own values always win."""
    result = dict(parameters)
    for name, lookup in lookups:
        try:
            extra = lookup(copy.deepcopy(result))
        except Rejected:
            raise
        except Exception as exc:
            raise Rejected(f"lookup {name!r} failed: {exc or type(exc).__name__}") from None
        if extra is None:
            continue
        if not isinstance(extra, Mapping):
            raise Rejected(f"lookup {name!r} returned {type(extra).__name__}, not a mapping")
        for key, value in extra.items():
            result.setdefault(key, value)
    return result


def prepare(
    request: DispatchRequest,
    recipes: Callable[[str], Recipe],
    *,
    lookups: list[tuple[str, Lookup]] | None = None,
    message_id: str | None = None,
    emit: Callable[[Outgoing], None] | None = None,
    limits: LimitsConfig | None = None,
) -> RecipeWrapper:
    """The recipe instance a request asks for, ready for ``start()``.

    Shared by the Dispatcher and ``zhpc go`` (which calls it without lookups to
    report a bad request before it is sent). Raises RecipeError (or Rejected
    from a lookup) naming the problem. ``request.parameters["guid"]`` must be
    set; it becomes the recipe id. ``limits`` (default: the configuration's
    defaults) bound what the start messages may add up to, before any is built.
    """
    if limits is None:
        from zhpc.config import LimitsConfig

        limits = LimitsConfig()
    guid = request.guid
    if not guid:
        raise RecipeError("request has no guid")
    parameters = run_lookups(request.parameters, lookups or [])
    merged = Recipe()
    if request.custom_recipe:
        custom = Recipe(request.custom_recipe, source="custom_recipe")
        custom.validate()
        merged = merged.merge(custom)
    for name in request.recipes:
        merged = merged.merge(recipes(name))
    merged.apply_parameters(parameters, max_chars=limits.max_substituted_chars)
    merged.validate()
    check_fan_out(merged, limits)
    wrapper_id = message_id or guid
    return RecipeWrapper(merged, environment={"ID": guid}, emit=emit, message_id=wrapper_id)


def check_fan_out(recipe: Recipe, limits: LimitsConfig) -> None:
    """Refuse a recipe whose start messages would exceed ``limits``, before building any.

    Every start message carries the whole recipe, so the total grows with the
    number of start entries times the recipe's size.
    """
    starts = recipe.start
    if len(starts) > limits.max_start_messages:
        raise RecipeError(
            f"recipe has {len(starts)} start entries; at most "
            f"{limits.max_start_messages} are allowed (limits.max_start_messages)"
        )
    recipe_bytes = len(recipe.to_json().encode("utf-8"))
    total = 0
    for index, entry in enumerate(starts):
        try:
            payload = len(strictjson.dumps(entry[1] if isinstance(entry, list) else entry))
        except (TypeError, ValueError) as exc:
            raise RecipeError(f"start[{index}]: payload cannot be sent as JSON: {exc}") from None
        size = recipe_bytes + payload
        if size > limits.max_message_bytes:
            raise RecipeError(
                f"start[{index}]: the start message would be about {size} bytes; "
                f"at most {limits.max_message_bytes} are allowed "
                "(limits.max_message_bytes)"
            )
        total += size
        if total > limits.max_dispatch_bytes:
            raise RecipeError(
                f"the start messages would be more than {total} bytes in all; "
                f"at most {limits.max_dispatch_bytes} are allowed "
                "(limits.max_dispatch_bytes)"
            )

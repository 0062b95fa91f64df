"""The Dispatcher: turns processing requests into running recipes.

A request is what Zocalo's ``zocalo.go`` sends to the ``processing_recipe``
queue, unchanged, so both tools can feed the same Dispatcher::

    {"recipes": ["name", ...], "parameters": {...}, "custom_recipe": {...}}

For each request the Dispatcher, as Zocalo's does:

1. takes ``parameters["guid"]`` as the recipe instance id, or makes one;
2. runs the metadata lookups (entry point group ``zhpc.dispatcher.lookups``),
   which add parameters (a parameter in the request always wins);
3. merges ``custom_recipe`` and then the named recipes (from
   ``recipes.directory``, or the examples shipped with zhpc);
4. applies the parameters, validates, and starts the recipe with
   ``environment["ID"] = guid``.

The start messages are the service's outputs: the runner publishes them,
waits for the broker's confirms, and only then acks the request. A request
that can never succeed (not JSON, wrong shape, unknown recipe, bad template,
failed lookup) raises :class:`~zhpc.service.Rejected`, which the runner turns
into a copy in ``dlq.processing_recipe`` carrying the reason in the
``zhpc-dead-letter-reason`` header: nothing is lost, nothing is retried in a loop.

A lookup is front-loaded: the entry point names a factory that is called once
per process, in :meth:`Dispatcher.setup`, with the whole configuration (open
database connections there, as the ISPyB lookups at Diamond do); the object
it returns is called once per request with the parameters so far and returns
a mapping of parameters to add. If it has a ``close()`` method, teardown calls it.
"""

from __future__ import annotations

import copy
import datetime
import getpass
import re
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from zhpc import plugins
from zhpc.config import Config
from zhpc.errors import RecipeError, ZhpcError
from zhpc.message import Message, Outgoing
from zhpc.recipe import Recipe, RecipeWrapper, find_recipe, load_recipe_file
from zhpc.service import Rejected, Service

#: The queue Zocalo's ``zocalo.go`` sends requests to.
DISPATCHER_QUEUE = "processing_recipe"
#: Headers ``zocalo.go`` sets on a request; ``zhpc go`` sets the same ones.
USER_HEADER = "zocalo.go.user"
HOST_HEADER = "zocalo.go.host"

_GUID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
# Namespace for recipe ids derived from a request's message id: a request that
# is delivered twice (the Dispatcher died before its ack) starts the same recipe id.
_GUID_NAMESPACE = uuid.UUID("0b8f6c1e-3d7a-4f0e-9a51-6c2d8e4b7f13")


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
            raise RecipeError("request 'parameters' must be a JSON object, "
                              f"not {type(parameters).__name__}")
        custom = body.get("custom_recipe") or None
        if custom is not None and not isinstance(custom, dict):
            raise RecipeError("request 'custom_recipe' must be a JSON object, "
                              f"not {type(custom).__name__}")
        if not recipes and custom is None:
            raise RecipeError("request names no recipe (give 'recipes' or 'custom_recipe')")
        guid = parameters.get("guid")
        if guid is not None and not (isinstance(guid, str) and _GUID.match(guid)):
            # Recipes put the guid into paths ("/scratch/{guid}/"): no separators, no "..".
            raise RecipeError(f"request parameter 'guid' {guid!r:.60} must be 1-128 letters, "
                              "digits, '.', '_' or '-', starting with a letter or digit")
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


def run_lookups(parameters: dict[str, Any],
                lookups: list[tuple[str, Lookup]]) -> dict[str, Any]:
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
) -> RecipeWrapper:
    """The recipe instance a request asks for, ready for ``start()``.

    Shared by the Dispatcher and ``zhpc go`` (which calls it without lookups to
    report a bad request before it is sent). Raises RecipeError (or Rejected
    from a lookup) naming the problem. ``request.parameters["guid"]`` must be
    set; it becomes the recipe id.
    """
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
    merged.apply_parameters(parameters)
    merged.validate()
    wrapper_id = message_id or guid
    return RecipeWrapper(merged, environment={"ID": guid}, emit=emit, message_id=wrapper_id)


# --------------------------------------------------------------------------
# The built-in lookup


class DispatchInfo:
    """Adds ``dispatch_time`` (UTC, ISO 8601) and ``dispatch_host``.

    The host name is resolved once, when the Dispatcher starts: the pattern a
    database lookup follows (connect once per job, query once per request).
    """

    def __init__(self, config: Config | None = None) -> None:
        self.host = socket.gethostname()

    def __call__(self, parameters: Mapping[str, Any]) -> dict[str, Any]:
        now = datetime.datetime.now(datetime.UTC)
        return {"dispatch_time": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "dispatch_host": self.host}


# --------------------------------------------------------------------------
# The service


class Dispatcher(Service):
    """Starts recipes from zocalo.go-style requests on processing_recipe."""

    queue = DISPATCHER_QUEUE

    def setup(self) -> None:
        self.recipes = RecipeCache(self.config.recipes.directory)
        self.lookups: list[tuple[str, Lookup]] = []
        wanted = self.parameters.get("lookups")
        if wanted is not None and not (isinstance(wanted, list)
                                       and all(isinstance(n, str) for n in wanted)):
            raise ZhpcError("services.dispatcher.parameters.lookups must be a list of names")
        installed = plugins.available(plugins.LOOKUPS)
        names = list(installed) if wanted is None else list(wanted)
        for name in names:
            factory = plugins.load(plugins.LOOKUPS, name)
            try:
                lookup = factory(self.config)
            except ZhpcError:
                raise
            except Exception as exc:
                raise ZhpcError(f"lookup {name!r} could not start: {exc}") from exc
            self.lookups.append((name, lookup))
        self.log.info("dispatcher: recipes from %s; lookups: %s",
                      self.config.recipes.directory or "zhpc's examples",
                      ", ".join(n for n, _ in self.lookups) or "none")

    def teardown(self) -> None:
        for name, lookup in getattr(self, "lookups", []):
            close = getattr(lookup, "close", None)
            if callable(close):
                try:
                    close()
                except Exception as exc:
                    self.log.warning("lookup %r did not close cleanly: %s", name, exc)

    def receive(self, message: Message, outputs: list[Outgoing]) -> None:
        """Start the requested recipe; its start messages go into ``outputs``.

        Raises Rejected for a request that can never be started (see module doc).
        """
        if message.malformed:
            raise Rejected(f"request is not JSON: {message.malformed}")
        try:
            request = DispatchRequest.from_body(message.json())
            if not request.guid:
                seed = message.message_id or uuid.uuid4().hex
                request.parameters["guid"] = str(uuid.uuid5(_GUID_NAMESPACE, seed))
            started: list[Outgoing] = []
            rw = prepare(request, self.recipes.get, lookups=self.lookups,
                         message_id=message.message_id, emit=started.append)
            rw.start()
        except RecipeError as exc:
            raise Rejected(str(exc)) from None
        outputs.extend(started)
        sender = _text(message.headers.get(USER_HEADER)), _text(message.headers.get(HOST_HEADER))
        self.log.info("dispatched recipe %s (%s) with %d start message(s)%s", rw.recipe_id,
                      request.describe(), len(started),
                      f" for {sender[0]}@{sender[1]}" if all(sender) else "")


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)

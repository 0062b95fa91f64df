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

import datetime
import socket
import uuid
from collections.abc import Mapping
from typing import Any

from zhpc import plugins
from zhpc.config import Config
from zhpc.dispatch import (
    DISPATCHER_QUEUE,
    GUID_NAMESPACE,
    HOST_HEADER,
    USER_HEADER,
    DispatchRequest,
    Lookup,
    RecipeCache,
    prepare,
)
from zhpc.errors import RecipeError, Rejected, ZhpcError
from zhpc.message import Message, Outgoing
from zhpc.service import Service

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
        return {
            "dispatch_time": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "dispatch_host": self.host,
        }


# --------------------------------------------------------------------------
# The service


class Dispatcher(Service):
    """Starts recipes from zocalo.go-style requests on processing_recipe."""

    queue = DISPATCHER_QUEUE

    def setup(self) -> None:
        self.recipes = RecipeCache(self.config.recipes.directory)
        self.lookups: list[tuple[str, Lookup]] = []
        wanted = self.parameters.get("lookups")
        if wanted is not None and not (
            isinstance(wanted, list) and all(isinstance(n, str) for n in wanted)
        ):
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
        self.log.info(
            "dispatcher: recipes from %s; lookups: %s",
            self.config.recipes.directory or "zhpc's examples",
            ", ".join(n for n, _ in self.lookups) or "none",
        )

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
        limits = self.config.limits
        if len(message.body) > limits.max_message_bytes:
            raise Rejected(
                f"request is {len(message.body)} bytes; at most "
                f"{limits.max_message_bytes} are allowed (limits.max_message_bytes)"
            )
        if message.malformed:
            raise Rejected(f"request is not JSON: {message.malformed}")
        try:
            request = DispatchRequest.from_body(message.json())
            if not request.guid:
                seed = message.message_id or uuid.uuid4().hex
                request.parameters["guid"] = str(uuid.uuid5(GUID_NAMESPACE, seed))
            started: list[Outgoing] = []
            rw = prepare(
                request,
                self.recipes.get,
                lookups=self.lookups,
                message_id=message.message_id,
                emit=started.append,
                limits=limits,
            )
            rw.start()
        except RecipeError as exc:
            raise Rejected(str(exc)) from None
        outputs.extend(started)
        if rw.recipe.unfilled:
            self.log.warning(
                "recipe %s still has unfilled templates: %s",
                rw.recipe_id,
                ", ".join(rw.recipe.unfilled[:10]),
            )
        sender = _text(message.headers.get(USER_HEADER)), _text(message.headers.get(HOST_HEADER))
        self.log.info(
            "dispatched recipe %s (%s) with %d start message(s)%s",
            rw.recipe_id,
            request.describe(),
            len(started),
            f" for {sender[0]}@{sender[1]}" if all(sender) else "",
        )


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)

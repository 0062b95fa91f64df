"""One step of a running recipe, producing the messages that step sends.

Nothing here does I/O: a transport publishes what the wrapper produces, a
service decides when.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from zhpc.errors import RecipeError
from zhpc.message import MESSAGE_ID_HEADER, RECIPE_HEADER, Message, Outgoing
from zhpc.recipe import plans
from zhpc.recipe.data import DIGITS, is_node_number, short
from zhpc.recipe.encoding import encode_body
from zhpc.recipe.plans import StepPlan
from zhpc.recipe.recipe import Recipe
from zhpc.recipe.steps import checked_links, destination_problem

__all__ = ["BODY_KEYS", "RecipeWrapper"]

#: Keys of a workflows recipe message body.
BODY_KEYS = ("environment", "payload", "recipe", "recipe-path", "recipe-pointer")

_ID_NAMESPACE = uuid.UUID("6b1f3c52-4a8e-4a43-9d55-0c6f7d1e2a90")
_ID_NAMESPACE_BYTES = _ID_NAMESPACE.bytes


def derived_id(name: str) -> str:
    """``uuid.uuid5(_ID_NAMESPACE, name).hex`` without the UUID objects (one per output)."""
    digest = bytearray(hashlib.sha1(_ID_NAMESPACE_BYTES + name.encode("utf-8")).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    return digest.hex()


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
        self._recipe: Recipe | None = recipe if isinstance(recipe, Recipe) else Recipe(recipe)
        if pointer is not None and not isinstance(self._recipe.node(pointer), dict):
            raise RecipeError(f"recipe-pointer {pointer} names no step of the recipe")
        self._setup(pointer, path, environment, payload, emit, message_id)

    def _setup(
        self,
        pointer: int | None,
        path: list[int] | None,
        environment: dict[str, Any] | None,
        payload: Any,
        emit: Callable[[Outgoing], None] | None,
        message_id: str | None,
    ) -> None:
        #: The decoded recipe of a step sent by its plan, made a Recipe on first use.
        self._unread: Mapping[Any, Any] | None = None
        #: How the step sends when its recipe and step were checked before (plans).
        self._plan: StepPlan | None = None
        self.recipe_pointer = pointer
        self.recipe_path: list[int] = list(path or [])
        self.environment: dict[str, Any] = environment if environment is not None else {}
        self.payload = payload
        self.default_channel: str | None = None
        self.outbox: list[Outgoing] = []
        self.emit: Callable[[Outgoing], None] = emit or self.outbox.append
        self._id_base = message_id or uuid.uuid4().hex
        self._sequence = 0
        #: The current step's checked links by kind, read once (``from_body`` checks them).
        self._links: dict[str, dict[Any, list[int]]] = {}
        #: Nodes the current step links to, checked by ``from_body`` (not again per send).
        self._destinations: dict[int, dict[str, Any]] = {}

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
            raise RecipeError(
                f"message on {message.queue!r} is not a recipe message "
                f"(no '{RECIPE_HEADER}' header)"
            )
        if message.malformed:
            raise RecipeError(f"message on {message.queue!r}: {message.malformed}")
        message_id = message.headers.get(MESSAGE_ID_HEADER) or message.message_id
        return cls.from_body(
            message.json(),
            emit=emit,
            decoded=True,
            message_id=str(message_id) if message_id else None,
            _recipe_bytes=plans.recipe_bytes(message.body),
        )

    @classmethod
    def from_body(
        cls,
        body: Any,
        headers: Mapping[str, Any] | None = None,
        *,
        emit: Callable[[Outgoing], None] | None = None,
        message_id: str | None = None,
        decoded: bool = False,
        _recipe_bytes: bytes | None = None,
    ) -> RecipeWrapper:
        """From a decoded message body (and its headers, if any are to be checked).

        ``decoded`` says the body came straight from ``json.loads`` and is not
        shared, so the recipe need not be copied and checked for non-JSON values.
        ``_recipe_bytes`` (from :meth:`from_message`): the recipe as received, so that a
        step checked before is not checked again (:mod:`zhpc.recipe.plans`).
        """
        if headers is not None:
            if not Message(b"", dict(headers), "").is_recipe:
                raise RecipeError(f"not a recipe message (no '{RECIPE_HEADER}' header)")
            message_id = message_id or headers.get(MESSAGE_ID_HEADER)
        if not isinstance(body, dict):
            raise RecipeError(
                f"recipe message body must be a JSON object, not {type(body).__name__}"
            )
        if not isinstance(body.get("recipe"), dict) or not body["recipe"]:
            raise RecipeError("recipe message has no 'recipe' object")
        pointer = body.get("recipe-pointer")
        if isinstance(pointer, str) and DIGITS.match(pointer):
            pointer = int(pointer)
        if not is_node_number(pointer) or pointer < 1:
            raise RecipeError(
                f"recipe message: recipe-pointer {short(pointer)} is not a node number"
            )
        path = body.get("recipe-path", [])
        if not isinstance(path, list) or not all(is_node_number(p) for p in path):
            raise RecipeError(
                f"recipe message: recipe-path {short(path)} is not a list of node numbers"
            )
        environment = body.get("environment", {})
        if not isinstance(environment, dict):
            raise RecipeError(
                f"recipe message: environment must be an object, not {type(environment).__name__}"
            )
        plan = None if _recipe_bytes is None else plans.plan_for(_recipe_bytes, pointer)
        if plan is not None and decoded:
            wrapper = cls.__new__(cls)
            wrapper._recipe = None
            wrapper._setup(pointer, path, environment, body.get("payload"), emit, message_id)
            wrapper._unread, wrapper._plan = body["recipe"], plan
            return wrapper
        recipe = Recipe(body["recipe"], source="recipe message", _decoded=decoded)
        step = recipe.node(pointer)
        if not isinstance(step, dict):
            raise RecipeError(
                f"recipe message: recipe-pointer {pointer} names no step "
                f"(steps: {sorted(recipe.nodes)})"
            )
        links = {}
        destinations: dict[int, dict[str, Any]] = {}
        for kind in ("output", "error"):
            links[kind] = checked_links(pointer, step, kind)
            for name, targets in links[kind].items():
                for target in targets:
                    if target not in destinations:
                        destinations[target] = destination_problem(
                            recipe,
                            target,
                            f"step {pointer} {kind}" + (f" {name!r}" if name else ""),
                        )
        wrapper = cls(
            recipe,
            pointer=pointer,
            path=path,
            environment=environment,
            payload=body.get("payload"),
            emit=emit,
            message_id=message_id,
        )
        wrapper._links = links
        wrapper._destinations = destinations
        if _recipe_bytes is not None and decoded:
            plans.remember(_recipe_bytes, pointer, recipe.data, step, links, destinations)
        return wrapper

    # state ------------------------------------------------------------------

    @property
    def recipe(self) -> Recipe:
        """The recipe (for a step sent by its plan, made from the message on first use:
        most services never read it)."""
        if self._recipe is None:
            self._recipe = Recipe(self._unread, source="recipe message", _decoded=True)
            self._unread = None
        return self._recipe

    @recipe.setter
    def recipe(self, recipe: Recipe) -> None:
        self._recipe, self._unread = recipe, None

    @property
    def recipe_step(self) -> dict[str, Any] | None:
        """The current step's mapping (None before :meth:`start`)."""
        if self.recipe_pointer is None:
            return None
        return self.recipe.data[self.recipe_pointer]

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

    def start(
        self,
        *,
        headers: Mapping[str, Any] | None = None,
        delay: float | None = None,
        expiration: float | None = None,
    ) -> list[Outgoing]:
        """The messages that start a new recipe instance, one per ``start`` entry."""
        if self.recipe_pointer is not None:
            raise RecipeError("this recipe has already been started")
        if not self.recipe.start:
            raise RecipeError("recipe has no start entries")
        planned = []
        for entry in self.recipe.start:
            if not (isinstance(entry, list) and len(entry) == 2):
                raise RecipeError(f"start entry {short(entry)} is not a [node, payload] pair")
            planned.append((entry[0], entry[1]))
        return self._emit_all(planned, headers, delay, expiration, add_path_step=True)

    def send(
        self,
        payload: Any,
        *,
        headers: Mapping[str, Any] | None = None,
        delay: float | None = None,
        expiration: float | None = None,
    ) -> list[Outgoing]:
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
                    "channel: use send_to(name, ...) or set_default_channel(name)"
                )
            return self.send_to(
                self.default_channel, payload, headers=headers, delay=delay, expiration=expiration
            )
        targets = self._step_links(step, "output").get(None, [])
        return self._emit_all([(t, payload) for t in targets], headers, delay, expiration)

    def send_to(
        self,
        channel: str,
        payload: Any,
        *,
        headers: Mapping[str, Any] | None = None,
        delay: float | None = None,
        expiration: float | None = None,
    ) -> list[Outgoing]:
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
        targets = self._step_links(step, "output").get(channel, [])
        return self._emit_all([(t, payload) for t in targets], headers, delay, expiration)

    def checkpoint(
        self,
        payload: Any,
        *,
        delay: float = 0,
        headers: Mapping[str, Any] | None = None,
        expiration: float | None = None,
    ) -> list[Outgoing]:
        """Send ``payload`` back to this same step, optionally after ``delay`` seconds.

        The recipe path is not extended and the step's own ``transport-delay``
        does not apply (as in workflows).
        """
        self._step()
        return self._emit_all(
            [(self.recipe_pointer, payload)], headers, delay, expiration, add_path_step=False
        )

    def error_targets(self) -> list[int]:
        """Where :meth:`send_error` goes: the step's ``error`` nodes, else the recipe's."""
        step = self._step()
        if "error" in step:
            return list(self._step_links(step, "error").get(None, []))
        plan = self._valid_plan()
        targets = plan.error if plan is not None else self.recipe.data.get("error", [])
        return list(targets) if isinstance(targets, list) else []

    def send_error(
        self,
        details: Any,
        *,
        headers: Mapping[str, Any] | None = None,
        expiration: float | None = None,
    ) -> list[Outgoing]:
        """Route ``details`` to the error steps; an empty list means no error route
        exists, and the caller must keep the input (dead-letter it), not drop it."""
        targets = self.error_targets()
        return self._emit_all([(t, details) for t in targets], headers, None, expiration)

    # internals --------------------------------------------------------------

    def _valid_plan(self) -> StepPlan | None:
        """The step's plan, if the recipe still says what the plan was made from.

        Read but unchanged (the usual case: a service reads its parameters) keeps
        it; a service that changed the step, a node it sends to or the top-level
        error route in place sends as the recipe now says, checked again.
        """
        plan = self._plan
        if plan is None or self._recipe is None:
            return plan
        data = self._recipe.data
        if (
            data.get(self.recipe_pointer) == plan.step
            and data.get("error") == plan.error
            and all(data.get(number) == node for number, node in plan.destinations.items())
        ):
            return plan
        self._plan = None  # links and destinations are checked from the recipe from now on
        return None

    def _step(self) -> dict[str, Any]:
        plan = self._valid_plan()
        if plan is not None:
            return plan.step
        step = self.recipe_step
        if step is None:
            raise RecipeError("this recipe wrapper has no current step (call start() first)")
        return step

    def _step_links(self, step: dict[str, Any], kind: str) -> dict[Any, list[int]]:
        """The current step's ``kind`` links, checked (once per wrapper)."""
        plan = self._valid_plan()
        if plan is not None:
            return plan.links.get(kind, {})
        links = self._links.get(kind)
        if links is None:
            links = self._links[kind] = checked_links(self.recipe_pointer, step, kind)
        return links

    def body(self, destination: int, payload: Any, add_path_step: bool = True) -> dict[str, Any]:
        """The message body for ``destination``, with workflows' keys in workflows' order."""
        return self._body(destination, payload, add_path_step, self.recipe.data)

    def _body(
        self, destination: Any, payload: Any, add_path_step: bool, recipe: Any
    ) -> dict[str, Any]:
        if add_path_step and self.recipe_pointer:
            path = [*self.recipe_path, self.recipe_pointer]
        else:
            path = list(self.recipe_path)
        return {
            "environment": self.environment,
            "payload": payload,
            "recipe": recipe,
            "recipe-path": path,
            "recipe-pointer": destination,
        }

    def _emit_all(
        self,
        planned: list[tuple[Any, Any]],
        headers: Mapping[str, Any] | None,
        delay: float | None,
        expiration: float | None,
        add_path_step: bool = True,
    ) -> list[Outgoing]:
        """Build every message first, then emit: one bad destination sends nothing."""
        built: list[Outgoing] = []
        for destination, payload in planned:
            built.extend(
                self._build(destination, payload, headers, delay, expiration, add_path_step)
            )
        for outgoing in built:
            self.emit(outgoing)
        return built

    def _build(
        self,
        destination: Any,
        payload: Any,
        headers: Mapping[str, Any] | None,
        delay: float | None,
        expiration: float | None,
        add_path_step: bool,
    ) -> list[Outgoing]:
        plan = self._valid_plan()
        known = plan.destinations if plan is not None else self._destinations
        node = known.get(destination) if type(destination) is int else None
        if node is None:
            node = destination_problem(self.recipe, destination, f"step {self.recipe_pointer}")
        if delay is None:
            delay = node.get("transport-delay")
        try:
            if self._recipe is None and plan is not None:  # the recipe as received, unread
                body = encode_body(
                    self._body(destination, payload, add_path_step, None), plan.recipe_json
                )
            else:
                body = encode_body(self.body(destination, payload, add_path_step))
        except (TypeError, ValueError) as exc:
            raise RecipeError(f"message for node {destination} cannot be encoded: {exc}") from None
        except RecursionError:
            raise RecipeError(f"payload for node {destination} is nested too deeply") from None
        extra = dict(headers or {})
        delay = delay or None
        out: list[Outgoing] = []
        queue, topic, exchange = node.get("queue"), node.get("topic"), node.get("exchange")
        if topic and delay:
            raise RecipeError(
                f"node {destination}: a broadcast to topic {topic!r} cannot be delayed"
            )
        if queue:
            if exchange and not delay:
                # workflows publishes to the node's exchange with the queue as routing key;
                # a delayed message goes through the delay mechanism, exchange ignored.
                out.append(
                    self._outgoing(
                        exchange, "exchange", body, extra, delay, expiration, routing_key=queue
                    )
                )
            else:
                out.append(self._outgoing(queue, "queue", body, extra, delay, expiration))
        if topic:
            out.append(self._outgoing(topic, "topic", body, extra, None, expiration))
        return out

    def _outgoing(
        self,
        destination: str,
        kind: Any,
        body: bytes,
        extra: dict[str, Any],
        delay: float | None,
        expiration: float | None,
        routing_key: str = "",
    ) -> Outgoing:
        message_id = derived_id(f"{self._id_base}/{self._sequence}")
        self._sequence += 1
        headers = {**extra, RECIPE_HEADER: True, MESSAGE_ID_HEADER: message_id}
        return Outgoing(
            destination=destination,
            body=body,
            kind=kind,
            headers=headers,
            routing_key=routing_key,
            delay=delay,
            expiration=expiration,
            message_id=message_id,
        )

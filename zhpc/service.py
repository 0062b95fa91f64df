"""Services: subclass :class:`Service`, implement ``process()``; the runner does the rest.

A :class:`Service` handles one message at a time, knows no broker and sends its
results with ``rw.send``. :class:`~zhpc.runner.ServiceRunner` (in
:mod:`zhpc.runner`, re-exported here) feeds it from a queue and makes killing it
harmless.
"""

from __future__ import annotations

import logging
import socket
import traceback
from typing import TYPE_CHECKING, Any, ClassVar

from zhpc.config import Config, ServiceConfig
from zhpc.errors import OutcomeUnknown, RecipeError, Rejected
from zhpc.message import Message, Outgoing
from zhpc.recipe import RecipeWrapper

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.transport import Transport

log = logging.getLogger(__name__)


class Service:
    """Base class of zhpc services: subclass it and implement :meth:`process`.

    Register the class under the ``zhpc.services`` entry point group; the
    entry point's name is the service's name (``zhpc service -s NAME``).
    """

    #: The queue consumed when the configuration names none (default: the service name).
    queue: ClassVar[str | None] = None
    #: Whether this service may consume ``dlq.*``/``retry.*`` queues (Schlockmeister does);
    #: an ordinary service there would fail every message again, in a hot loop.
    consumes_dead_letters: ClassVar[bool] = False

    def __init__(
        self, name: str, settings: ServiceConfig | None = None, config: Config | None = None
    ) -> None:
        self.name = name
        #: The whole zhpc configuration (broker, recipes directory, ...).
        self.config = config or Config()
        #: This service's own section, with command-line overrides applied.
        self.settings = settings or self.config.service(name)
        #: Free parameters from the service's configuration section.
        self.parameters: dict[str, Any] = dict(self.settings.parameters)
        self.log = logging.getLogger(f"zhpc.services.{name}")
        self._outputs: list[Outgoing] | None = None
        #: The message being processed (None between messages).
        self.current_message: Message | None = None

    # -- for subclasses ----------------------------------------------------------
    def setup(self) -> None:
        """Called once before the first message: open files, front-load lookups."""

    def teardown(self) -> None:
        """Called once after the last message, also after a drain."""

    def process(self, rw: RecipeWrapper, payload: Any) -> None:
        """Handle one message; send results with ``rw.send``/``rw.send_to``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement process()")

    def tick(self, transport: Transport) -> None:
        """Called by the runner between messages (at least every 0.5 s): periodic work of
        the service's own, such as the cluster submission's job watch. Default: nothing."""

    def publish(self, message: Outgoing) -> None:
        """Send a message outside the recipe, atomically with the current input's ack."""
        if self._outputs is None:
            raise RuntimeError("publish() is only possible while a message is being processed")
        self._outputs.append(message)

    # -- used by the runner --------------------------------------------------------
    def receive(self, message: Message, outputs: list[Outgoing]) -> None:
        """Turn one received message into outputs (collected in ``outputs``).

        Raises :class:`Rejected` for a message that is not a recipe message.
        Services that consume something other than recipe messages (the
        Dispatcher) override this.
        """
        self._outputs = outputs
        self.current_message = message
        try:
            try:
                rw = RecipeWrapper.from_message(message, emit=outputs.append)
            except RecipeError as exc:
                raise Rejected(str(exc)) from None
            try:
                self.process(rw, rw.payload)
            except OutcomeUnknown:
                outputs.clear()  # retried (never the error route): the retry looks first
                raise
            except Exception as exc:
                outputs.clear()  # nothing half-done leaves this step
                if not rw.send_error(self.error_details(exc, rw, message)):
                    raise
                self.log.warning(
                    "step %s failed, error route taken: %s", rw.recipe_pointer, exc, exc_info=True
                )
        finally:
            self._outputs = None
            self.current_message = None

    def error_details(self, exc: Exception, rw: RecipeWrapper, message: Message) -> dict[str, Any]:
        """What an error route receives when :meth:`process` raised."""
        return {
            "error": str(exc) or type(exc).__name__,
            "exception": type(exc).__name__,
            "traceback": traceback.format_exc(limit=20),
            "service": self.name,
            "host": socket.gethostname(),
            "recipe-pointer": rw.recipe_pointer,
            "message-id": message.message_id,
            "payload": rw.payload,
        }


# The runner builds on Service; re-exported so plug-ins and tests keep one import.
from zhpc.runner import DrainDeadline, ServiceRunner  # noqa: E402

__all__ = ["DrainDeadline", "Service", "ServiceRunner"]

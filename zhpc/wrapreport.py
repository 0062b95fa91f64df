"""A wrap run's link to the broker: one connection opened on first use, and the heartbeat thread.

The connection is opened lazily (from the heartbeat thread or the results' publish,
whichever comes first), so a short command without a recipe wrapper never imports a
transport. Both are owned by :class:`zhpc.wrap.WrapRun`, which closes them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

from zhpc.errors import ZhpcError
from zhpc.status import status_message

TYPE_CHECKING = False  # not typing's: typing costs ms at zhpc wrap's start-up
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

    from zhpc.config import Config
    from zhpc.transport.base import Transport

log = logging.getLogger("zhpc.wrap")


class Reporter:
    """The one broker connection of a wrap run, opened on first use from any thread."""

    def __init__(self, config: Callable[[], Config]) -> None:
        self._config = config
        self._transport: Transport | None = None
        self._lock = threading.Lock()

    @property
    def connected(self) -> bool:
        return self._transport is not None

    def transport(self) -> Transport:
        with self._lock:
            if self._transport is None:
                from zhpc.transport import get_transport

                transport = get_transport(self._config().broker)
                transport.connect()
                self._transport = transport
            return self._transport

    def status(self, status: dict[str, Any]) -> None:
        try:
            self.transport().publish(status_message(status))
        except ZhpcError as exc:  # a lost heartbeat is not worth stopping the work for
            log.warning("status heartbeat not sent: %s", exc)

    def close(self) -> None:
        # A heartbeat thread may still be trying to connect: do not wait for it.
        if not self._lock.acquire(timeout=1):
            return
        try:
            if self._transport is not None:
                with contextlib.suppress(Exception):
                    self._transport.close()
                self._transport = None
        finally:
            self._lock.release()


class Heartbeat(threading.Thread):
    """Sends ``status()`` after ``first`` seconds, then every ``interval`` seconds."""

    def __init__(
        self,
        reporter: Reporter,
        status: Callable[[], dict[str, Any]],
        first: float,
        interval: float,
    ) -> None:
        super().__init__(daemon=True, name="zhpc-wrap-heartbeat")
        self.reporter = reporter
        self.make_status = status
        self.first = first
        self.interval = interval
        self.stopped = threading.Event()
        self.sent = 0

    def run(self) -> None:
        if self.stopped.wait(self.first):
            return
        while not self.stopped.is_set():
            self.reporter.status(self.make_status())
            self.sent += 1
            if self.stopped.wait(self.interval):
                return

    def stop(self) -> None:
        self.stopped.set()

"""Helpers shared by the transport conformance tests and their fixtures.

A separate module (not conftest) so test files can import it by a unique name.
"""

from __future__ import annotations

import os
import queue as queue_mod
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testsupport import wait_until

from zhpc.config import BrokerConfig
from zhpc.message import Message
from zhpc.transport import Transport, get_transport

HELPER = Path(__file__).with_name("helper_client.py")
REPO_ROOT = Path(__file__).resolve().parents[2]

#: Every name unique() handed out, so a RabbitMQ backend can delete its queues afterwards.
NAMES: list[str] = []


def unique(prefix: str = "zt") -> str:
    name = f"{prefix}.{uuid.uuid4().hex[:12]}"
    NAMES.append(name)
    return name


class Inbox:
    """Subscribe to a queue (or topic) and collect what arrives, polling on demand."""

    def __init__(
        self,
        transport: Transport,
        name: str,
        *,
        prefetch: int = 50,
        broadcast: bool = False,
        auto_ack: bool = False,
    ) -> None:
        self.transport = transport
        self.auto_ack = auto_ack
        self.messages: list[Message] = []
        if broadcast:
            self.subscription = transport.subscribe_broadcast(name, self._on_message)
        else:
            self.subscription = transport.subscribe(name, self._on_message, prefetch=prefetch)

    def _on_message(self, message: Message) -> None:
        self.messages.append(message)
        if self.auto_ack:
            self.transport.ack(message)

    def wait(self, count: int, timeout: float = 10.0) -> list[Message]:
        """Poll until at least ``count`` messages arrived in total; return all of them."""

        def enough() -> bool:
            if len(self.messages) < count:
                self.transport.poll(0.05)
            return len(self.messages) >= count

        wait_until(enough, timeout, 0.005, lambda: f"{count} message(s), got {len(self.messages)}")
        return self.messages

    def next(self, timeout: float = 10.0) -> Message:
        """The next message not yet taken."""
        self.wait(1, timeout)
        return self.messages.pop(0)

    def close(self) -> None:
        self.transport.unsubscribe(self.subscription)


class Lane:
    """Read a queue one message at a time with ``Transport.fetch`` (how retry lanes are read)."""

    def __init__(self, transport: Transport, name: str, *, auto_ack: bool = False) -> None:
        self.transport = transport
        self.name = name
        self.auto_ack = auto_ack
        self.messages: list[Message] = []

    def wait(self, count: int, timeout: float = 10.0) -> list[Message]:
        def enough() -> bool:
            if len(self.messages) < count:
                message = self.transport.fetch(self.name)
                if message is not None:
                    self.messages.append(message)
                    if self.auto_ack:
                        self.transport.ack(message)
            return len(self.messages) >= count

        wait_until(enough, timeout, 0.01, lambda: f"{count} message(s), got {len(self.messages)}")
        return self.messages

    def next(self, timeout: float = 10.0) -> Message:
        self.wait(1, timeout)
        return self.messages.pop(0)


class Helper:
    """A helper client in a subprocess; its stdout lines are read by a thread."""

    def __init__(self, args: list[str]) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        self.proc = subprocess.Popen(
            [sys.executable, str(HELPER), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._queue: queue_mod.Queue[str] = queue_mod.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))

    def _pump(self) -> list[str]:
        while True:
            try:
                self.lines.append(self._queue.get_nowait())
            except queue_mod.Empty:
                return self.lines

    def wait_lines(self, predicate: Callable[[list[str]], bool], timeout: float = 15.0) -> None:
        def check() -> bool:
            if self.proc.poll() is not None and self._queue.empty() and not predicate(self._pump()):
                raise AssertionError(
                    f"helper exited with {self.proc.returncode}: {self.stderr_text()}"
                )
            return predicate(self._pump())

        wait_until(check, timeout, what=lambda: f"helper output; so far {self.lines[-3:]}")

    def stderr_text(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()[-2000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)


@dataclass
class Backend:
    """How to reach one broker: its URL and a factory of connected transports."""

    name: str
    url: str
    _opened: list[Transport] = field(default_factory=list)
    _helpers: list[Helper] = field(default_factory=list)
    _first_name: int = field(default_factory=lambda: len(NAMES))

    def make(self, **config: Any) -> Transport:
        transport = get_transport(BrokerConfig(url=self.url, **config))
        transport.connect()
        self._opened.append(transport)
        return transport

    def spawn(self, mode: str, name: str, *extra: str) -> Helper:
        """Start ``helper_client.py URL MODE NAME ...`` (killed at teardown)."""
        helper = Helper([self.url, mode, name, *extra])
        self._helpers.append(helper)
        return helper

    def teardown(self) -> None:
        for helper in self._helpers:
            helper.kill()
        for transport in reversed(self._opened):
            try:
                transport.close()
            except Exception as exc:  # teardown must go on for the others
                print(f"closing {transport!r}: {exc}")
        if self.name == "rabbitmq":
            self._delete_rabbitmq_queues(NAMES[self._first_name :])
        elif self.name == "stomp":
            self._drain_stomp_queues(NAMES[self._first_name :])

    def _drain_stomp_queues(self, names: list[str]) -> None:
        """Best effort: empty this test's queues (ActiveMQ then drops them when idle)."""
        try:
            transport = get_transport(BrokerConfig(url=self.url))
            transport.connect()
        except Exception as exc:
            print(f"cleanup: cannot connect to ActiveMQ: {exc}")
            return
        try:
            for name in names:
                transport.delete_queue(name)
                transport.delete_queue(f"dlq.{name}")
        finally:
            transport.close()

    def _delete_rabbitmq_queues(self, names: list[str]) -> None:
        """Best effort: remove this test's uuid-named queues from the shared broker."""
        import pika  # only the RabbitMQ backend needs it

        try:
            connection = pika.BlockingConnection(pika.URLParameters(self.url))
        except pika.exceptions.AMQPError as exc:
            print(f"cleanup: cannot connect to RabbitMQ: {exc}")
            return
        try:
            channel = connection.channel()
            for name in names:
                for queue in (name, f"retry.{name}", f"dlq.{name}"):
                    try:
                        channel.queue_delete(queue)
                    except pika.exceptions.AMQPError:
                        channel = connection.channel()
        finally:
            connection.close()

"""Helpers for the service tests: brokers, service processes (and see testsupport.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zhpc.config import BrokerConfig
from zhpc.recipe import RecipeWrapper
from zhpc.transport import Transport, get_transport
from zhpc.transport.base import dlq_name, retry_name

RUNNER = Path(__file__).with_name("runner.py")


@dataclass
class Broker:
    """One broker for one test: unique queue names, deleted afterwards on RabbitMQ."""

    kind: str
    url: str
    delivery_limit: int = 5
    names: list[str] = field(default_factory=list)
    transports: list[Transport] = field(default_factory=list)

    def queue(self, prefix: str) -> str:
        name = f"zst.{prefix}.{uuid.uuid4().hex[:10]}"
        self.names.append(name)
        return name

    def config(self) -> BrokerConfig:
        return BrokerConfig(url=self.url, delivery_limit=self.delivery_limit)

    def transport(self) -> Transport:
        transport = get_transport(self.config())
        transport.connect()
        self.transports.append(transport)
        return transport

    def teardown(self) -> None:
        if self.kind in ("rabbitmq", "stomp") and self.names:
            transport = self.transports[0] if self.transports else self.transport()
            for name in self.names:
                for queue in (name, retry_name(name), dlq_name(name)):
                    transport.delete_queue(queue)
        for transport in self.transports:
            transport.close()


def publish_recipe(transport: Transport, recipe: dict[str, Any], payloads: list[Any]) -> None:
    """Start one recipe instance per payload (the way the Dispatcher would)."""
    outputs = []
    for payload in payloads:
        outputs += RecipeWrapper.from_recipe({**recipe, "start": [[1, payload]]}).start()
    transport.publish_many(outputs)


class ServiceProcess:
    """``runner.py`` (or any zhpc command line) as a child process, logging to a file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._handle = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            stdout=self._handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    @classmethod
    def runner(cls, log: Path, *args: str, env: dict[str, str] | None = None) -> ServiceProcess:
        return cls([str(RUNNER), *args], log, env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"process {self.pid} still running after {timeout} s; log:\n{self.output()}"
            ) from None

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._handle.close()

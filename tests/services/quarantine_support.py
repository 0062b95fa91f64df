"""Helpers for the Schlockmeister and ``zhpc dlq`` tests: configuration, runs, failing steps."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from service_support import Broker, ServiceProcess

from zhpc.cli import main
from zhpc.config import Config, ServiceConfig, parse_config
from zhpc.quarantine import QuarantineStore, open_store
from zhpc.recipe import RecipeWrapper
from zhpc.service import Service, ServiceRunner
from zhpc.services.schlockmeister import Schlockmeister, SchlockmeisterRunner
from zhpc.transport import Transport


@dataclass
class Setup:
    """One test's broker, quarantine store and notification queue, as a config file too."""

    broker: Broker
    data: dict[str, Any]
    path: Path

    @property
    def config(self) -> Config:
        return parse_config(self.data)

    @property
    def notify_queue(self) -> str:
        return str(self.data["quarantine"]["notify_queue"])

    def store(self) -> QuarantineStore:
        return open_store(self.config.quarantine)

    def watch(self, *dead_letter_queues: str) -> None:
        """On RabbitMQ (shared) only named queues are watched; the embedded broker lists them."""
        self.data["quarantine"]["queues"] += list(dead_letter_queues)
        self.path.write_text(yaml.safe_dump(self.data))

    def with_broker(self, path: Path, **broker: Any) -> Path:
        """This configuration with other broker settings, as a file (e.g. a broker that is down)."""
        data = {**self.data, "broker": {**self.data["broker"], **broker}}
        path.write_text(yaml.safe_dump(data))
        return path


def setup(broker: Broker, tmp_path: Path) -> Setup:
    notify = broker.queue("note")
    data = {
        "broker": {"url": broker.url, "delivery_limit": broker.delivery_limit},
        "quarantine": {
            "url": f"sqlite://{tmp_path / 'quarantine.sqlite'}",
            "queues": [],
            "discover": broker.kind == "embedded",
            "management_url": "",
            "rescan_interval": 0.2,
            "notify_queue": notify,
        },
    }
    path = tmp_path / "zhpc.yaml"
    path.write_text(yaml.safe_dump(data))
    return Setup(broker, data, path)


def run_schlockmeister(
    config: Config, transport: Transport, idle: float = 1.0, queue: str | None = None
) -> SchlockmeisterRunner:
    """Schlockmeister in this process until it has been idle for ``idle`` s."""
    service = Schlockmeister("schlockmeister", ServiceConfig(idle_timeout=idle), config)
    runner = SchlockmeisterRunner(service, transport, queue=queue)
    assert runner.run() == 0
    return runner


def schlockmeister_process(
    setup: Setup, log: Path, *args: str, env: dict[str, str] | None = None
) -> ServiceProcess:
    """``zhpc service -s schlockmeister`` as a child process (the real command line)."""
    return ServiceProcess(
        ["-m", "zhpc", "--config", str(setup.path), "-v", "service", "-s", "schlockmeister", *args],
        log,
        env,
    )


def run_service(
    cls: type[Service], queue: str, transport: Transport, **parameters: Any
) -> ServiceRunner:
    # The lane is looked at more often than the idle timeout, so a failed message is
    # retried before the runner stops, however the first delivery races the first look.
    service = cls(
        cls.__name__.lower(),
        ServiceConfig(queue=queue, idle_timeout=0.5, retry_interval=0.2, parameters=parameters),
    )
    runner = ServiceRunner(service, transport)
    assert runner.run() == 0
    return runner


def dlq(
    setup: Setup, capsys: pytest.CaptureFixture[str], *args: str, config: Path | None = None
) -> tuple[int, str, str]:
    """``zhpc dlq ARGS`` in this process: exit code, stdout, stderr."""
    capsys.readouterr()
    code = main(["--config", str(config or setup.path), "dlq", *args])
    out, err = capsys.readouterr()
    return code, out, err


def listed(setup: Setup, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    code, out, err = dlq(setup, capsys, "list", "--json")
    assert code == 0, err
    return json.loads(out)


# -- services for the tests ---------------------------------------------------------------------
class CountingStep(Service):
    """Appends one line per run to ``parameters.runs`` and passes the payload on."""

    def process(self, rw: RecipeWrapper, payload: Any) -> None:
        with open(self.parameters["runs"], "a") as runs:
            runs.write(f"{payload}\n")
        rw.send(payload)


class FlakyStep(Service):
    """Fails until the file ``parameters.fixed`` exists; then says how it was delivered."""

    def process(self, rw: RecipeWrapper, payload: Any) -> None:
        if not Path(self.parameters["fixed"]).exists():
            raise RuntimeError("step 2 is broken until it is fixed")
        message = self.current_message
        assert message is not None
        rw.send(
            {
                **payload,
                "fixed": True,
                "delivery_count": message.delivery_count,
                "reinjected": message.headers.get("zhpc-reinjected"),
                "x-death": "x-death" in message.headers,
            }
        )


def python() -> str:
    return sys.executable

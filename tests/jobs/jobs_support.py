"""Helpers for the job tests: config files, running the CLI, reading queues, recipes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from zhpc.message import Message
from zhpc.transport import Transport

PLUGINS = Path(__file__).parent / "plugins"
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def zhpc_env(**extra: str) -> dict[str, str]:
    """The environment for zhpc subprocesses and batch jobs: test plug-ins importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PLUGINS), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def zhpc(*args: str, timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run the real ``zhpc`` command line (same interpreter) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "zhpc", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=kwargs.pop("env", None) or zhpc_env(),
        check=False,
        **kwargs,
    )


def collect(
    transport: Transport, queue: str, count: int, timeout: float, *, exact: bool = False
) -> list[Message]:
    """Ack and return messages from ``queue`` until ``count`` came or ``timeout`` passed.

    With ``exact`` it keeps listening briefly after ``count`` to catch extras.
    """
    got: list[Message] = []

    def keep(message: Message) -> None:
        got.append(message)
        transport.ack(message)

    sub = transport.subscribe(queue, keep, prefetch=50)
    deadline = time.monotonic() + timeout
    try:
        while len(got) < count and time.monotonic() < deadline:
            transport.poll(0.2)
        if exact:
            transport.poll(0.5)
    finally:
        transport.unsubscribe(sub)
        while transport.poll(0):
            pass
    return got


def missing(what: str) -> None:
    """Skip on a developer machine, fail in CI (CI=true), where everything must be installed."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI: {what}", pytrace=False)
    pytest.skip(what)


def wrapped_recipe(queue: str, step: dict[str, Any], payload: Any,
                   submission: str | None = None) -> dict[str, Any]:
    """A recipe whose step 1 is a cluster step with all four named outputs on test queues."""
    return {
        "1": {
            "service": "wrapped command",
            "queue": submission or f"{queue}.submission",
            "output": {"job_submitted": 5, "success": 2, "failure": 3, "done": 4},
            **step,
        },
        "2": {"service": "success", "queue": f"{queue}.success"},
        "3": {"service": "failure", "queue": f"{queue}.failure"},
        "4": {"service": "done", "queue": f"{queue}.done"},
        "5": {"service": "submitted", "queue": f"{queue}.submitted"},
        "start": [[1, payload]],
    }


def recipe_message(recipe: dict[str, Any], parameters: dict[str, Any] | None = None):
    """The one start message of a new instance of ``recipe``."""
    from zhpc.recipe import RecipeWrapper

    (message,) = RecipeWrapper.from_recipe(recipe, parameters).start()
    return message

"""Helpers for the job tests: config files, running the CLI, recipes (and see testsupport.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

PLUGINS = Path(__file__).parent / "plugins"


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


def wrapped_recipe(
    queue: str, step: dict[str, Any], payload: Any, submission: str | None = None
) -> dict[str, Any]:
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

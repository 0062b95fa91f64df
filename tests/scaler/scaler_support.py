"""Helpers for the scaler tests: a service name of their own, config files, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from zhpc.message import Outgoing
from zhpc.recipe import RecipeWrapper

PLUGINS = Path(__file__).parent / "plugins"


@dataclass
class Setup:
    """One test's service: its name, queue, configuration file and environment."""

    service: str
    queue: str
    config: Path
    env: dict[str, str]
    workdir: Path

    def zhpc(
        self, *args: str, timeout: float = 120, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the real ``zhpc`` command line with this test's configuration."""
        return subprocess.run(
            [sys.executable, "-m", "zhpc", "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env or self.env,
            check=False,
        )

    def scale(self, *args: str, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """``zhpc scale --once --json``: the JSON line of this service; fails on a non-zero exit."""
        proc = self.zhpc("scale", "--json", "-s", self.service, *args, env=env)
        assert proc.returncode == 0, proc.stderr
        return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
            for p in sorted(self.workdir.rglob("*.out"))
        )


def register_service(tmp_path: Path, cls: str) -> tuple[str, Path]:
    """A fresh service name for ``zhpc_scale_test_plugins:<cls>``, in a dist-info of its own."""
    name = f"zhpc_scale_{uuid.uuid4().hex[:10]}"
    dist = tmp_path / "plugins" / f"{name}-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(
        f"[zhpc.services]\n{name} = zhpc_scale_test_plugins:{cls}\n"
    )
    return name, tmp_path / "plugins"


def make_setup(
    tmp_path: Path,
    *,
    broker: str,
    backend: str,
    cls: str = "Sleepy",
    scaler: dict[str, Any] | None = None,
    service: dict[str, Any] | None = None,
    cluster: dict[str, Any] | None = None,
) -> Setup:
    name, plugins = register_service(tmp_path, cls)
    queue = f"{name}.in"
    workdir = tmp_path / "jobs"
    workdir.mkdir(parents=True)
    config = tmp_path / "zhpc.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "broker": {"url": broker},
                "cluster": {"backend": backend, "workdir": str(workdir), **(cluster or {})},
                "services": {
                    name: {
                        "queue": queue,
                        "prefetch": 1,
                        "drain_grace": 2,
                        "end_margin": 5,
                        "heartbeat_interval": 5,
                        "idle_timeout": 3,
                        **(service or {}),
                    }
                },
                "scaler": {name: {"cooldown": 0, "time": "00:05:00", **(scaler or {})}},
            }
        )
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(PLUGINS), str(plugins), env.get("PYTHONPATH")])
    )
    env["ZHPC_HOME"] = str(tmp_path / "home")
    return Setup(name, queue, config, env, workdir)


def work(queue: str, count: int, sleep: float = 0.0) -> list[Outgoing]:
    """``count`` recipe messages for ``queue`` whose results go to ``queue.out``."""
    recipe = {
        "1": {"service": "sleepy", "queue": queue, "output": 2},
        "2": {"service": "sink", "queue": f"{queue}.out"},
    }
    messages = []
    for n in range(count):
        (message,) = RecipeWrapper.from_recipe(
            {**recipe, "start": [[1, {"n": n, "sleep": sleep}]]}
        ).start()
        messages.append(message)
    return messages

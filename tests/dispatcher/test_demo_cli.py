"""``zhpc demo`` end to end, as a user runs it: a subprocess, no configuration, no cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def demo_env(tmp_path: Path) -> dict[str, str]:
    """The user's environment, pointing their own state somewhere the demo must not touch."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZHPC_")}
    env["ZHPC_HOME"] = str(tmp_path / "users-own-home")
    return env


def processes_in(directory: Path) -> list[int]:
    """Processes whose working directory is ``directory`` (the demo starts its services there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if Path(os.readlink(entry / "cwd")) == directory:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_demo_runs_the_recipe_and_leaves_nothing_behind(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "zhpc", "demo", "--home", str(home), "--timeout", "60"],
        capture_output=True,
        text=True,
        timeout=120,
        env=demo_env(tmp_path),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert result.stderr == ""
    for line in (
        "dispatcher  started the recipe",
        "double      doubled the value",
        "jsonlines   appended the result",
        'result      {"value": 42}',
        "stopped 3 services (all exited 0)",
        'turned {"value": 21} into {"value": 42}',
    ):
        assert line in out, out
    assert len(out.splitlines()) <= 10

    [record] = [
        json.loads(line) for line in (home / "output" / "demo.jsonl").read_text().splitlines()
    ]
    assert record["payload"] == {"value": 42}
    assert record["recipe_id"] in out
    for name in ("dispatcher", "double", "jsonlines"):
        log = (home / "logs" / f"{name}.log").read_text()
        assert "stopped after 1 processed, 0 failed" in log, log
    assert (
        f"dispatched recipe {record['recipe_id']} (demo)"
        in (home / "logs" / "dispatcher.log").read_text()
    )
    assert processes_in(home) == []
    assert not (tmp_path / "users-own-home").exists()


def test_demo_that_times_out_says_so_in_one_line_and_stops_everything(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "zhpc", "demo", "--home", str(home), "--timeout", "0.01"],
        capture_output=True,
        text=True,
        timeout=60,
        env=demo_env(tmp_path),
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("zhpc: error: timed out waiting for the services to start")
    assert result.stderr.count("\n") == 1
    assert processes_in(home) == []


@pytest.mark.parametrize("timeout", ["0", "-1"])
def test_demo_refuses_a_timeout_that_is_not_positive(tmp_path: Path, timeout: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "zhpc", "demo", "--home", str(tmp_path), "--timeout", timeout],
        capture_output=True,
        text=True,
        timeout=60,
        env=demo_env(tmp_path),
    )
    assert (result.returncode, result.stderr) == (2, "zhpc: error: --timeout must be positive\n")


def run_demo(home: Path, tmp_path: Path, timeout: str = "60") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zhpc", "demo", "--home", str(home), "--timeout", timeout],
        capture_output=True,
        text=True,
        timeout=120,
        env=demo_env(tmp_path),
        cwd=tmp_path,
    )


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_demo_refuses_a_directory_it_did_not_make(tmp_path: Path) -> None:
    """Issue 12.20: a user's zhpc.yaml and queued messages are left exactly as they were."""
    from zhpc.message import Outgoing
    from zhpc.transport.embedded import EmbeddedTransport

    home = tmp_path / "users-state"
    home.mkdir()
    (home / "zhpc.yaml").write_text("broker: {url: 'amqp://zhpc@rabbit.example/'}\n")
    with EmbeddedTransport(home / "broker.sqlite") as transport:
        transport.publish(Outgoing(destination="processing_recipe", body=b'{"recipes": []}'))
        assert transport.queue_depth("processing_recipe").ready == 1
    before = snapshot(home)
    result = run_demo(home, tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        f"zhpc: error: --home {home} is not empty and was not made by zhpc "
        "demo; name a new or empty directory (the demo would replace its "
        "zhpc.yaml and consume the messages in its broker.sqlite)\n"
    )
    assert result.stdout == ""
    assert snapshot(home) == before
    assert processes_in(home) == []
    with EmbeddedTransport(home / "broker.sqlite") as transport:
        assert transport.queue_depth("processing_recipe").ready == 1
    afile = tmp_path / "a-file"
    afile.write_text("mine\n")
    result = run_demo(afile, tmp_path)
    assert (result.returncode, result.stderr) == (
        2,
        f"zhpc: error: --home {afile} exists and is not a directory\n",
    )
    assert afile.read_text() == "mine\n"


def test_demo_reuses_an_empty_directory_and_its_own(tmp_path: Path) -> None:
    home = tmp_path / "empty"
    home.mkdir()
    for _ in range(2):  # the second run finds the first run's files and its marker
        result = run_demo(home, tmp_path, timeout="0.01")
        assert result.returncode == 2
        assert result.stderr.startswith("zhpc: error: timed out waiting for the services"), (
            result.stderr
        )
        assert (home / "zhpc.yaml").is_file() and (home / ".zhpc-demo").is_file()

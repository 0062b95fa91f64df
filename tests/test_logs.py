"""Logging set-up: command line first, then the configuration's logging section."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from zhpc import logs
from zhpc.cli import main


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    if logs._installed is not None:
        root.removeHandler(logs._installed)
        logs._installed = None
    root.handlers[:] = handlers
    root.setLevel(level)


def test_configuration_sets_level_and_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ZHPC_HOME", str(tmp_path))
    config = tmp_path / "c.yaml"
    config.write_text("logging: {level: INFO, format: json}\n")
    assert main(["--config", str(config), "config", "check"]) == 0
    assert logging.getLogger().level == logging.INFO
    logging.getLogger("zhpc.test").info("hello", extra={"queue": "q1"})
    line = capsys.readouterr().err.strip().splitlines()[-1]
    entry = json.loads(line)
    assert entry["message"] == "hello" and entry["queue"] == "q1" and entry["level"] == "INFO"


def test_command_line_wins_over_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZHPC_HOME", str(tmp_path))
    config = tmp_path / "c.yaml"
    config.write_text("logging: {level: ERROR, format: json}\n")
    assert main(["--config", str(config), "-vv", "--log-format", "text", "config", "check"]) == 0
    assert logging.getLogger().level == logging.DEBUG
    assert logs._installed is not None
    assert not isinstance(logs._installed.formatter, logs.JsonFormatter)


def test_library_use_leaves_logging_alone(tmp_path: Path) -> None:
    from zhpc.config import load_config

    config = tmp_path / "c.yaml"
    config.write_text("logging: {level: DEBUG}\n")
    before = list(logging.getLogger().handlers)
    load_config(config)
    assert logging.getLogger().handlers == before

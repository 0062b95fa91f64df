"""``zhpc go --pickup`` sends a spooled request under the id of its first attempt (issue 12,
item 6): that attempt may have got through, and only the same id lets a consumer tell."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from zhpc.cli import main
from zhpc.commands.go import EXIT_SPOOLED
from zhpc.dispatch import DISPATCHER_QUEUE
from zhpc.message import Message
from zhpc.spool import Spool
from zhpc.transport.embedded import EmbeddedTransport


def _config(path: Path, url: str, **extra: object) -> Path:
    path.write_text(yaml.safe_dump({"broker": {"url": url, **extra}}))
    return path


def test_pickup_keeps_the_message_id_of_the_first_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("ZHPC_HOME", str(home))
    monkeypatch.delenv("ZHPC_CONFIG", raising=False)
    monkeypatch.delenv("ZHPC_ENV", raising=False)
    monkeypatch.chdir(tmp_path)
    down = _config(
        home / "down.yaml", "amqp://guest:guest@127.0.0.1:1/", connection_attempts=1, retry_delay=0
    )
    up = _config(home / "up.yaml", f"sqlite://{home / 'broker.sqlite'}")

    assert main(["--config", str(down), "go", "demo", "-s", "output_filename=a"]) == EXIT_SPOOLED
    (spooled,) = Spool(home / "spool").files()
    first_attempt = json.loads(spooled.read_text()).get("message_id")
    # Sent twice (a pickup that died between the confirm and removing the file):
    shutil.copy(spooled, spooled.with_name("99999999999999999999-copy.json"))
    assert main(["--config", str(up), "go", "--pickup"]) == 0

    got: list[Message] = []
    with EmbeddedTransport.from_config(_load(up)) as transport:
        transport.subscribe(DISPATCHER_QUEUE, got.append, prefetch=10)
        while transport.poll(0.3):
            pass
    assert len(got) == 2 and first_attempt is not None
    assert [m.message_id for m in got] == [first_attempt, first_attempt]


def _load(path: Path):
    from zhpc.config import load_config

    return load_config(path).broker

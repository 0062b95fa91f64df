"""``zhpc go``: checks before sending, sending, the spool when the broker is down, --pickup."""

from __future__ import annotations

import fcntl
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from zhpc.cli import main
from zhpc.commands.go import EXIT_SPOOLED
from zhpc.dispatch import DISPATCHER_QUEUE, HOST_HEADER, USER_HEADER
from zhpc.message import Message
from zhpc.spool import Spool
from zhpc.transport.embedded import EmbeddedTransport

#: A password that must never appear in any output.
SECRET = "pw-never-printed-7f3a"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private ZHPC_HOME and working directory, with no configuration from outside."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("ZHPC_HOME", str(home))
    monkeypatch.delenv("ZHPC_CONFIG", raising=False)
    monkeypatch.delenv("ZHPC_ENV", raising=False)
    monkeypatch.chdir(tmp_path)
    return home


def write_config(path: Path, url: str, **extra: Any) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"broker": {"url": url, **extra}}))
    return path


@pytest.fixture
def embedded(home: Path) -> Path:
    return write_config(home / "embedded.yaml", f"sqlite://{home / 'broker.sqlite'}")


@pytest.fixture
def down(home: Path) -> Path:
    """A broker nothing listens on (port 1), tried once."""
    return write_config(
        home / "down.yaml",
        f"amqp://guest:{SECRET}@127.0.0.1:1/",
        connection_attempts=1,
        retry_delay=0,
    )


def requests(config: Path, expect: int) -> list[Message]:
    from zhpc.config import load_config

    got: list[Message] = []
    with EmbeddedTransport.from_config(load_config(config).broker) as transport:

        def keep(message: Message) -> None:
            got.append(message)
            transport.ack(message)

        transport.subscribe(DISPATCHER_QUEUE, keep, prefetch=100)
        while transport.poll(0.2):
            pass
        assert transport.queue_depth(DISPATCHER_QUEUE).ready == 0
    assert len(got) == expect
    return got


def go(config: Path, *args: str) -> int:
    return main(["--config", str(config), "go", *args])


def test_go_sends_a_zocalo_request_and_prints_its_recipe_id(
    embedded: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert go(embedded, "demo", "-s", "output_filename=x.jsonl", "-s", "n=a=b") == 0
    out, err = capsys.readouterr()
    guid = out.strip()
    uuid.UUID(guid)
    assert err == ""
    [message] = requests(embedded, 1)
    assert message.json() == {
        "recipes": ["demo"],
        "parameters": {"output_filename": "x.jsonl", "n": "a=b", "guid": guid},
    }
    assert message.headers[USER_HEADER] and message.headers[HOST_HEADER]


def test_go_keeps_a_given_guid_and_sends_a_custom_recipe(
    embedded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    custom = tmp_path / "custom.yaml"
    custom.write_text("1: {queue: q.custom, parameters: {f: '{f}'}}\nstart: [[1, {}]]\n")
    assert go(embedded, "-f", str(custom), "-s", "guid=my-id", "-s", "f=1") == 0
    assert capsys.readouterr().out.strip() == "my-id"
    [message] = requests(embedded, 1)
    body = message.json()
    assert body["custom_recipe"] == {
        "1": {"queue": "q.custom", "parameters": {"f": "{f}"}},
        "start": [[1, {}]],
    }
    assert body["recipes"] == [] and body["parameters"] == {"guid": "my-id", "f": "1"}


def test_dry_run_prints_the_request_and_sends_nothing(
    embedded: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert go(embedded, "demo", "--dry-run", "-s", "output_filename=o") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["queue"] == DISPATCHER_QUEUE
    assert shown["message"]["recipes"] == ["demo"]
    uuid.UUID(shown["message"]["parameters"]["guid"])
    assert set(shown["headers"]) == {USER_HEADER, HOST_HEADER}
    requests(embedded, 0)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(["nosuch"], "no recipe 'nosuch'", id="unknown-recipe"),
        pytest.param(["../demo"], "invalid recipe name", id="path"),
        pytest.param(["demo", "-s", "novalue"], "invalid parameter 'novalue'", id="bad-set"),
        pytest.param([], "name at least one recipe", id="nothing"),
        pytest.param(["demo", "-s", "guid=a/b"], "parameter 'guid'", id="bad-guid"),
        pytest.param(["-f", "missing.json"], "no such recipe file", id="missing-file"),
        pytest.param(["-f", "BAD"], "invalid recipe", id="invalid-file"),
        pytest.param(["-f", "TEMPLATE"], "node 1", id="bad-template"),
        pytest.param(["demo", "--pickup"], "--pickup takes no recipes", id="pickup-with-recipe"),
    ],
)
def test_errors_are_one_line_exit_2_and_send_nothing(
    embedded: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    expected: str,
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"1": {"queue": "q"}}))  # no start
    template = tmp_path / "template.json"
    template.write_text(
        json.dumps({"1": {"queue": "q", "parameters": {"a": "{x"}}, "start": [[1, {}]]})
    )
    args = [str(bad) if a == "BAD" else str(template) if a == "TEMPLATE" else a for a in args]
    assert go(embedded, *args) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and expected in err, err
    requests(embedded, 0)


def test_broker_down_spools_then_pickup_sends_and_removes(
    down: Path, embedded: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert go(down, "demo", "-s", "output_filename=a") == EXIT_SPOOLED
    out, err = capsys.readouterr()
    first = out.strip()
    assert "saved in the spool" in err and "--pickup" in err and err.count("\n") == 1
    assert SECRET not in out + err
    assert go(down, "demo", "-s", "output_filename=b") == EXIT_SPOOLED
    second = capsys.readouterr().out.strip()
    files = Spool(home / "spool").files()
    assert len(files) == 2
    saved = json.loads(files[0].read_text())
    assert saved["queue"] == DISPATCHER_QUEUE
    assert saved["message"]["parameters"]["guid"] == first
    assert set(saved["headers"]) == {USER_HEADER, HOST_HEADER}

    # Still down: pickup fails with one line and keeps every request.
    assert go(down, "--pickup") == 2
    out, err = capsys.readouterr()
    assert "unreachable" in err and "2 request(s) stay" in err and err.count("\n") == 1
    assert SECRET not in out + err
    assert len(Spool(home / "spool").files()) == 2

    # Up (here: the embedded broker): sent oldest first, files removed.
    assert go(embedded, "--pickup") == 0
    assert "sent 2 spooled request(s); 0 left" in capsys.readouterr().out
    assert Spool(home / "spool").files() == []
    sent = requests(embedded, 2)
    assert [m.json()["parameters"]["guid"] for m in sent] == [first, second]
    assert all(m.headers[USER_HEADER] for m in sent)

    assert go(embedded, "--pickup") == 0
    assert "no spooled requests" in capsys.readouterr().out


def test_pickup_skips_a_request_another_pickup_holds(
    embedded: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spool = Spool(home / "spool")
    held = spool.save(
        DISPATCHER_QUEUE, {"recipes": ["demo"], "parameters": {"guid": "held"}}, {}, label="held"
    )
    spool.save(DISPATCHER_QUEUE, {"recipes": ["demo"], "parameters": {"guid": "free"}}, {})
    with held.open() as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # as a concurrent pickup would
        assert go(embedded, "--pickup") == 0
    assert "sent 1 spooled request(s); 1 left" in capsys.readouterr().out
    assert spool.files() == [held]
    assert go(embedded, "--pickup") == 0
    assert spool.files() == []
    assert [m.json()["parameters"]["guid"] for m in requests(embedded, 2)] == ["free", "held"]


def test_pickup_sets_aside_a_file_that_is_not_a_request(
    embedded: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spool = Spool(home / "spool")
    spool.directory.mkdir(parents=True)
    (spool.directory / "0-broken.json").write_text("{half")
    spool.save(DISPATCHER_QUEUE, {"recipes": ["demo"], "parameters": {"guid": "ok"}}, {})
    assert go(embedded, "--pickup") == 2
    out, err = capsys.readouterr()
    assert "0-broken.json: not JSON" in err
    assert "sent 1 spooled request(s); 0 left" in out
    assert (spool.directory / "0-broken.json.bad").exists()
    assert [m.json()["parameters"]["guid"] for m in requests(embedded, 1)] == ["ok"]


@pytest.fixture
def no_spool_writes(home: Path) -> Iterator[None]:
    yield
    assert not (home / "spool").exists()


def test_a_bad_request_is_not_spooled_when_the_broker_is_down(
    down: Path, no_spool_writes: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert go(down, "nosuch") == 2
    assert "no recipe 'nosuch'" in capsys.readouterr().err

"""Live interoperability: Zocalo's own ``zocalo.go`` feeds the zhpc Dispatcher.

The request is sent by the real ``zocalo.cli.go.run`` from the ``zocalo`` package
(through workflows' PikaTransport to RabbitMQ, or its StompTransport to ActiveMQ),
with no Zocalo site configuration: only its ``--rabbit-*``/``--stomp-*`` options.
The zhpc Dispatcher, ``double`` and ``jsonlines`` run as separate ``zhpc service``
processes; the custom recipe (``zocalo.go -f``) uses queue names unique to this
test, so other tests on the same broker are not disturbed.
"""

from __future__ import annotations

import getpass
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from testsupport import AMQP_URL, STOMP_URL, unavailable, wait_until

from zhpc.config import BrokerConfig
from zhpc.dispatch import DISPATCHER_QUEUE
from zhpc.transport import dlq_name, get_transport
from zhpc.transport.accounting import retry_name

ZOCALO_GO = "import sys; from zocalo.cli.go import run; sys.argv[0] = 'zocalo.go'; run()"


@pytest.fixture(
    params=[
        pytest.param(AMQP_URL, marks=pytest.mark.rabbitmq, id="rabbitmq"),
        pytest.param(STOMP_URL, marks=pytest.mark.activemq, id="stomp"),
    ]
)
def url(request: pytest.FixtureRequest) -> str:
    request.getfixturevalue("rabbitmq_up" if request.param == AMQP_URL else "activemq_up")
    return str(request.param)


@pytest.fixture
def broker(url: str) -> Iterator[Any]:
    try:
        import zocalo.cli.go  # noqa: F401
    except ImportError:
        unavailable("zocalo is not installed", hint="pip install -e '.[test]' installs it")
    with get_transport(BrokerConfig(url=url, connection_attempts=2)) as transport:
        yield transport


def zocalo_go(url: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    parts = urlsplit(url)
    if parts.scheme == "stomp":
        wire = [
            "-t",
            "StompTransport",
            "--stomp-host",
            parts.hostname or "127.0.0.1",
            "--stomp-port",
            str(parts.port or 61613),
        ]
    else:
        wire = [
            "--rabbit-host",
            parts.hostname or "127.0.0.1",
            "--rabbit-port",
            str(parts.port or 5672),
            "--rabbit-user",
            parts.username or "guest",
            "--rabbit-pass",
            parts.password or "guest",
        ]
    result = subprocess.run(
        [sys.executable, "-c", ZOCALO_GO, *wire, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Submitted." in result.stdout
    return result


def test_a_zocalo_go_request_runs_through_zhpc_services(
    url: str, broker: Any, tmp_path: Path, unique_name: str
) -> None:
    queues = {"double": f"{unique_name}.double", "jsonlines": f"{unique_name}.jsonlines"}
    home = tmp_path / "home"
    config_file = tmp_path / "zhpc.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "broker": {"url": url},
                "services": {name: {"queue": queue} for name, queue in queues.items()},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZHPC_", "ZOCALO_"))}
    env.update(ZHPC_HOME=str(home), ZHPC_CONFIG=str(config_file))
    recipe_file = tmp_path / "recipe.json"
    recipe_file.write_text(
        json.dumps(
            {
                "1": {"service": "zhpc double", "queue": queues["double"], "output": 2},
                "2": {
                    "service": "zhpc jsonlines",
                    "queue": queues["jsonlines"],
                    "parameters": {"output_filename": "{output_filename}"},
                },
                "start": [[1, {"value": 21}]],
            }
        )
    )
    output = home / "output" / f"{unique_name}.jsonl"

    services = {
        name: subprocess.Popen(
            [sys.executable, "-m", "zhpc", "-v", "service", "-s", name],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / f"{name}.log").open("wb"),
        )
        for name in ("dispatcher", "double", "jsonlines")
    }
    try:
        for queue in (DISPATCHER_QUEUE, *queues.values()):
            wait_until(
                lambda q=queue: broker.queue_depth(q).consumers >= 1,
                30,
                what=f"a consumer on {queue}",
            )

        # As zocalo.go sends it: no guid (the Dispatcher makes one), then with -s guid=.
        zocalo_go(
            url, "-n", "-f", str(recipe_file), "-s", f"output_filename={output.name}", env=env
        )
        chosen = str(uuid.uuid4())
        zocalo_go(
            url,
            "-n",
            "-f",
            str(recipe_file),
            "-s",
            f"output_filename={output.name}",
            "-s",
            f"guid={chosen}",
            env=env,
        )

        def records() -> list[dict[str, Any]]:
            if not output.exists():
                return []
            lines = output.read_text().splitlines()
            return [json.loads(line) for line in lines] if len(lines) >= 2 else []

        found = wait_until(records, 30, what=f"two results in {output}")
        assert [r["payload"] for r in found] == [{"value": 42}, {"value": 42}]
        ids = {r["recipe_id"] for r in found}
        assert chosen in ids and len(ids) == 2
        uuid.UUID((ids - {chosen}).pop())  # the Dispatcher made a proper recipe id
        log = (tmp_path / "dispatcher.log").read_text()
        assert f"dispatched recipe {chosen} ((custom recipe))" in log
        # zocalo.go's own headers say who asked.
        assert f"for {getpass.getuser()}@{socket.gethostname()}" in log
    finally:
        for process in services.values():
            process.send_signal(signal.SIGTERM)
        codes = {}
        for name, process in services.items():
            try:
                codes[name] = process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = process.wait()
        for queue in queues.values():
            for each in (queue, retry_name(queue), dlq_name(queue)):
                broker.delete_queue(each)
    assert codes == {"dispatcher": 0, "double": 0, "jsonlines": 0}

"""Interoperability with python-workflows over real RabbitMQ and over ActiveMQ (STOMP).

workflows' RecipeWrapper starts a recipe; its first step is a zhpc service
(``double``); its second a workflows CommonService run by workflows' Frontend
in another process. The value has to cross both boundaries intact.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from service_support import Broker
from testsupport import wait_until

from zhpc.config import ServiceConfig
from zhpc.recipe import RecipeWrapper
from zhpc.service import Service, ServiceRunner

workflows_recipe = pytest.importorskip("workflows.recipe.wrapper")
pika_transport = pytest.importorskip("workflows.transport.pika_transport")
stomp_transport = pytest.importorskip("workflows.transport.stomp_transport")

SIDE = Path(__file__).with_name("workflows_side.py")


class Double(Service):
    def process(self, rw: RecipeWrapper, payload: Any) -> None:
        rw.send({"value": payload["value"] * 2, "seen": rw.recipe_pointer})


@pytest.mark.parametrize("wire", ["rabbitmq", pytest.param("stomp", marks=pytest.mark.activemq)])
def test_workflows_to_zhpc_to_workflows(
    wire: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    broker: Broker = request.getfixturevalue("rabbitmq" if wire == "rabbitmq" else "activemq")
    first, second = broker.queue("interop-zhpc"), broker.queue("interop-workflows")
    transport = broker.transport()
    for queue in (first, second):  # workflows subscribes to existing queues only
        transport.declare_queue(queue)
    output = tmp_path / "sink.jsonl"
    side = subprocess.Popen(
        [sys.executable, str(SIDE), second, str(output), *(["stomp"] if wire == "stomp" else [])],
        stdout=(tmp_path / "workflows.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the Frontend forks its service: stop the whole group
    )
    try:
        wait_until(output.with_suffix(".ready").exists, 60, 0.05, "the workflows service")

        if wire == "stomp":  # what zocalo.go does on an ActiveMQ site
            stomp_transport.StompTransport.defaults["--stomp-host"] = "127.0.0.1"
            sender = stomp_transport.StompTransport()
        else:
            sender = pika_transport.PikaTransport()
        sender.connect()
        try:
            recipe = {
                "1": {"service": "zhpc double", "queue": first, "output": 2},
                "2": {"service": "workflows sink", "queue": second},
                "start": [[1, {"value": 21}]],
            }
            workflows_recipe.RecipeWrapper(
                recipe=recipe, transport=sender, environment={"ID": "interop-1"}
            ).start()
        finally:
            sender.disconnect()

        runner = ServiceRunner(
            Double("double", ServiceConfig(queue=first, idle_timeout=1.0)), transport
        )
        assert runner.run() == 0
        assert runner.processed == 1 and runner.failed == 0 and runner.dead_lettered == 0

        wait_until(output.exists, 30, 0.05, "the workflows service to receive")
        (line,) = output.read_text().splitlines()
    finally:
        if side.poll() is None:
            os.killpg(side.pid, signal.SIGTERM)
        side.wait(15)
    record = json.loads(line)
    assert record["payload"] == {"value": 42, "seen": 1}
    assert record["recipe_pointer"] == 2
    assert record["recipe_path"] == [1]
    assert record["environment"]["ID"] == "interop-1"
    assert record["headers"]["workflows-recipe"] in (True, "True", "true")

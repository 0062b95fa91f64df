"""A python-workflows CommonService under workflows' own Frontend and PikaTransport.

Started the way ``zocalo.service`` starts a service (a Frontend that runs the
service in a child process), without zocalo's site configuration: the
transport uses RabbitMQ on 127.0.0.1:5672 as guest (workflows' defaults), or
with ``stomp`` workflows' StompTransport to ActiveMQ on 127.0.0.1:61613.

Usage: workflows_side.py QUEUE OUTPUT_FILE [stomp]. Every recipe message
on QUEUE is appended to OUTPUT_FILE as one JSON line, then acked.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import workflows.recipe
from workflows.frontend import Frontend
from workflows.services.common_service import CommonService
from workflows.transport.pika_transport import PikaTransport
from workflows.transport.stomp_transport import StompTransport

QUEUE, OUTPUT = sys.argv[1], Path(sys.argv[2])


class Sink(CommonService):
    """Writes what it receives to OUTPUT, acking afterwards."""

    _service_name = "zhpc interop sink"
    _logger_name = "zhpc.tests.workflows_sink"

    def initializing(self) -> None:
        workflows.recipe.wrap_subscribe(self._transport, QUEUE, self.receive, acknowledgement=True)
        OUTPUT.with_suffix(".ready").touch()

    def receive(self, rw: Any, header: dict, message: Any) -> None:
        record = {
            "payload": message,
            "recipe_pointer": rw.recipe_pointer,
            "recipe_path": rw.recipe_path,
            "environment": rw.environment,
            "headers": {k: v for k, v in header.items() if isinstance(v, str | int | bool)},
        }
        with OUTPUT.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        rw.transport.ack(header)


if __name__ == "__main__":
    # zocalo.service passes its site configuration here; this test has none.
    transport: type = PikaTransport
    if sys.argv[3:] == ["stomp"]:
        StompTransport.defaults["--stomp-host"] = "127.0.0.1"
        transport = StompTransport
    Frontend(transport=transport, service=Sink, environment={"live": False}).run()

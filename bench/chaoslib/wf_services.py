"""python-workflows services for the comparison run, started by ``zocalo.service``.

``ChaosWfDouble`` is the workflows counterpart of zhpc's ``double`` step: in
``plain`` mode it acks and then sends (the common CommonService pattern), in
``transactional`` mode it acks and sends inside one transaction. It rejects a
``"poison"`` value (nack without requeue: dropped, as no dead-letter exchange is set).
``ChaosWfSink`` appends one JSON line per
message (the recipe instance id and payload) and acks after the write.
The queues, mode and file come from ``ZCHAOS_WF_*`` environment variables
because ``zocalo.service`` passes no arguments to a service.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import workflows.recipe
from workflows.services.common_service import CommonService


class ChaosWfDouble(CommonService):
    _service_name = "ChaosWfDouble"
    _logger_name = "zchaos.wf.double"

    def initializing(self) -> None:
        self.mode = os.environ["ZCHAOS_WF_MODE"]
        workflows.recipe.wrap_subscribe(
            self._transport,
            os.environ["ZCHAOS_WF_WORK"],
            self.receive,
            acknowledgement=True,
            prefetch_count=10,
        )

    def receive(self, rw: Any, header: dict, message: Any) -> None:
        value = message["value"]
        if not isinstance(value, int):
            # Raising here ends a workflows service; on a classic queue the message comes
            # back and ends the next one too (a crash loop that stalls the stream: measured).
            # A Zocalo service rejects it instead; without a dead-letter exchange it is gone.
            self.log.error("value must be a number, not %s: rejected", type(value).__name__)
            rw.transport.nack(header, requeue=False)
            return
        if self.mode == "transactional":
            txn = rw.transport.transaction_begin(subscription_id=header["subscription"])
            rw.transport.ack(header, transaction=txn)
            rw.send({"value": value * 2}, transaction=txn)
            rw.transport.transaction_commit(txn)
        else:
            rw.transport.ack(header)
            rw.send({"value": value * 2})


class ChaosWfSink(CommonService):
    _service_name = "ChaosWfSink"
    _logger_name = "zchaos.wf.sink"

    def initializing(self) -> None:
        self.output = Path(os.environ["ZCHAOS_WF_OUTPUT"])
        workflows.recipe.wrap_subscribe(
            self._transport,
            os.environ["ZCHAOS_WF_SINK"],
            self.receive,
            acknowledgement=True,
            prefetch_count=10,
        )

    def receive(self, rw: Any, header: dict, message: Any) -> None:
        line = json.dumps({"recipe_id": rw.environment.get("ID"), "payload": message})
        with self.output.open("a") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        rw.transport.ack(header)


def entry_points(directory: Path) -> Path:
    """A dist-info under ``directory`` that registers both services for ``zocalo.service``
    (entry point group ``workflows.services``); put ``directory`` on PYTHONPATH."""
    info = directory / "zchaos_wf-0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: zchaos-wf\nVersion: 0\n")
    (info / "entry_points.txt").write_text(
        "[workflows.services]\n"
        "ChaosWfDouble = chaoslib.wf_services:ChaosWfDouble\n"
        "ChaosWfSink = chaoslib.wf_services:ChaosWfSink\n"
    )
    return directory

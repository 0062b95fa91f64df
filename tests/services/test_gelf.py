"""GELF logging (``logging.gelf: udp://host:port``) to a real UDP listener in this test.

A service whose step fails logs the failure with the recipe id, the step and the
service as GELF additional fields; no datagram carries a password.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from service_support import Broker, ServiceProcess
from testsupport import wait_until

from zhpc.logfields import (
    FieldsFilter,
    MaskingFilter,
    clear_fields,
    gelf_handler,
    set_message,
    set_process_fields,
)
from zhpc.logs import JsonFormatter
from zhpc.recipe import RecipeWrapper


class GelfListener:
    """A UDP socket on loopback that collects GELF messages (zlib, chunked or not)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.messages: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self._chunks: dict[bytes, dict[int, bytes]] = {}

    def receive(self) -> list[dict[str, Any]]:
        while True:
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                return self.messages
            if data[:2] == b"\x1e\x0f":  # a chunk: id, sequence number, count, payload
                chunk_id = data[2:10]
                parts = self._chunks.setdefault(chunk_id, {})
                parts[data[10]] = data[12:]
                if len(parts) < data[11]:
                    continue
                data = b"".join(parts[i] for i in sorted(parts))
                del self._chunks[chunk_id]
            data = zlib.decompress(data) if data[:1] == b"\x78" else data
            self.raw.append(data)
            self.messages.append(json.loads(data))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[GelfListener]:
    found = GelfListener()
    yield found
    found.close()


def test_gelf_records_of_a_failing_step_carry_the_recipe_id(
    broker: Broker, tmp_path: Path, listener: GelfListener
) -> None:
    queue = broker.queue("gelf")
    broker.delivery_limit = 1
    config = tmp_path / "zhpc.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "broker": {"url": broker.url, "delivery_limit": 1},
                "logging": {"level": "INFO", "gelf": f"udp://127.0.0.1:{listener.port}"},
                "services": {"double": {"queue": queue}},
                "events": {"enabled": False},
            }
        )
    )
    rw = RecipeWrapper.from_recipe(
        {"1": {"service": "double", "queue": queue}, "start": [[1, {"value": "not a number"}]]}
    )
    broker.transport().publish_many(rw.start())
    service = ServiceProcess(
        ["-m", "zhpc", "--config", str(config), "service", "-s", "double"], tmp_path / "double.log"
    )
    try:

        def failure_logged() -> dict[str, Any] | None:
            found = [
                m
                for m in listener.receive()
                if m.get("_recipe_id") == rw.recipe_id
                and "processing failed" in m.get("short_message", "")
            ]
            return found[0] if found else None

        record = wait_until(
            failure_logged,
            timeout=60,
            interval=0,
            what=lambda: f"a GELF record; log:\n{service.output()}",
        )
        service.proc.send_signal(signal.SIGTERM)
        assert service.wait(60) == 0
    finally:
        service.stop()
    assert record["_step"] == 1 and record["_service"] == "double"
    assert record["level"] == 3  # syslog ERROR
    assert "value must be a number" in record["short_message"]
    assert "TypeError" in record.get("full_message", "")
    started = [m for m in listener.receive() if "consuming" in m.get("short_message", "")]
    assert started and started[0]["_service"] == "double" and "_recipe_id" not in started[0]
    assert not any(b"guest:guest" in raw for raw in listener.raw)


def test_no_password_reaches_gelf(listener: GelfListener) -> None:
    handler = gelf_handler(f"udp://127.0.0.1:{listener.port}")
    log = logging.getLogger("zhpc.test.gelf")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        set_process_fields(service="svc", slurm_job_id="1234")
        set_message("r-1", 2)
        log.warning("cannot reach %s", "amqp://zhpc:s3cret-pw@broker:5672/")
        try:
            raise RuntimeError("connect to postgresql://zhpc:s3cret-pw@db/zhpc failed")
        except RuntimeError:
            log.exception("store failed")
        messages = wait_until(
            lambda: len(listener.receive()) >= 2 and listener.messages,
            timeout=30,
            interval=0,
            what="two GELF records",
        )
    finally:
        log.removeHandler(handler)
        handler.close()
        clear_fields()
    assert not any(b"s3cret" in raw for raw in listener.raw)
    assert messages[0]["short_message"] == "cannot reach amqp://zhpc:***@broker:5672/"
    assert messages[0]["_recipe_id"] == "r-1" and messages[0]["_step"] == 2
    assert messages[0]["_slurm_job_id"] == "1234" and messages[0]["_service"] == "svc"
    assert "zhpc:***@db" in messages[1]["full_message"]


def test_json_log_lines_carry_the_fields_and_no_password() -> None:
    record = logging.LogRecord(
        "zhpc.service", logging.ERROR, __file__, 1, "lost %s", ("amqps://u:pw123@h/",), None
    )
    try:
        set_process_fields(service="double")
        set_message("r-9", 3)
        for check in (MaskingFilter(), FieldsFilter()):
            assert check.filter(record)
    finally:
        clear_fields()
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "lost amqps://u:***@h/"
    assert (line["recipe_id"], line["step"], line["service"]) == ("r-9", 3, "double")

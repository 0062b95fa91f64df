"""``zhpc trace`` end to end, on the embedded broker and on real RabbitMQ.

A two-step recipe whose first step fails once: step 1 runs in this process
(a ServiceRunner with events on), step 2 is ``zhpc service -s double`` in a
child process, and the recorder is ``zhpc service -s recorder`` in another.
The trace must show the failure with its error, then the success, and both
steps with the right hosts and pids.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from service_support import Broker, ServiceProcess
from testsupport import collect, wait_until

from zhpc.cli import main
from zhpc.config import load_config
from zhpc.events import emitter_for
from zhpc.recipe import RecipeWrapper
from zhpc.service import Service, ServiceRunner


class FailsOnce(Service):
    """Fails on a message's first delivery (the retry lane brings it back), then doubles."""

    def process(self, rw: RecipeWrapper, payload: Any) -> None:
        message = self.current_message
        assert message is not None
        if not message.headers.get("zhpc-failures"):
            raise ValueError(f"value {payload['value']} rejected the first time")
        rw.send({"value": payload["value"] * 2})


def write_config(tmp_path: Path, broker: Broker, step2: str) -> Path:
    path = tmp_path / "zhpc.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "broker": {"url": broker.url},
                "events": {"url": f"sqlite://{tmp_path / 'events.sqlite'}"},
                "quarantine": {"url": f"sqlite://{tmp_path / 'quarantine.sqlite'}"},
                "services": {"double": {"queue": step2, "heartbeat_interval": 1}},
            }
        )
    )
    return path


def zhpc(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["--config", str(config), *args])
    return code, capsys.readouterr().out


def start(config: Path, log: Path, service: str, *args: str) -> ServiceProcess:
    return ServiceProcess(
        ["-m", "zhpc", "--config", str(config), "-v", "service", "-s", service, *args], log
    )


def test_trace_shows_a_failure_then_the_success_with_hosts_and_pids(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    step1, step2, sink = broker.queue("trace1"), broker.queue("trace2"), broker.queue("sink")
    config_path = write_config(tmp_path, broker, step2)
    config = load_config(str(config_path))
    recorder = start(config_path, tmp_path / "recorder.log", "recorder")
    doubler = None
    try:
        wait_until(
            lambda: "consuming" in recorder.output(),
            timeout=60,
            what=f"the recorder to listen; log:\n{recorder.output()}",
        )
        transport = broker.transport()
        rw = RecipeWrapper.from_recipe(
            {
                "1": {"service": "fails-once", "queue": step1, "output": 2},
                "2": {"service": "double", "queue": step2, "output": 3},
                "3": {"service": "sink", "queue": sink},
                "start": [[1, {"value": 5}]],
            }
        )
        recipe_id = rw.recipe_id
        assert recipe_id is not None
        transport.publish_many(rw.start())
        service = FailsOnce(
            "fails-once",
            config.service("fails-once").replace(queue=step1, idle_timeout=1.0),
            config,
        )
        runner = ServiceRunner(
            service, broker.transport(), events=emitter_for(config, "fails-once")
        )
        assert runner.run() == 0
        assert (runner.processed, runner.failed) == (1, 1)

        code, out = zhpc(config_path, capsys, "trace", recipe_id, "--json")
        assert code == 0
        assert [s["outcome"] for s in json.loads(out)["steps"]][-2:] == ["waiting", "waiting"]

        doubler = start(config_path, tmp_path / "double.log", "double")
        (result,) = collect(transport, sink, 1, timeout=60)
        assert result.json()["payload"] == {"value": 20}

        def traced() -> dict[str, Any] | None:
            code, out = zhpc(config_path, capsys, "trace", recipe_id, "--json")
            found = json.loads(out)
            return (
                found
                if code == 0 and len(found["steps"]) == 4 and found["steps"][2]["outcome"] == "done"
                else None
            )

        trace = wait_until(traced, timeout=60, what="the recorder to store step 2's events")
        doubler.proc.send_signal(signal.SIGTERM)
        assert doubler.wait(60) == 0
    finally:
        for proc in (doubler, recorder):
            if proc is not None:
                proc.proc.send_signal(signal.SIGTERM)
        assert recorder.wait(60) == 0, recorder.output()
        recorder.stop()
        if doubler is not None:
            doubler.stop()
    assert trace["recipe_id"] == recipe_id
    first, retried, second, third = trace["steps"]
    host = socket.gethostname()
    assert (first["step"], first["outcome"], first["exception"]) == (1, "failed", "ValueError")
    assert first["error"] == "value 5 rejected the first time"
    assert (retried["step"], retried["outcome"]) == (1, "done")
    assert first["pid"] == retried["pid"] == os.getpid() and first["host"] == host
    assert first["queue"] == step1 and first["service"] == "fails-once"
    assert (second["step"], second["service"], second["queue"]) == (2, "double", step2)
    assert second["pid"] == doubler.pid and second["host"] == host
    assert second["error"] is None and second["duration"] is not None
    assert (third["step"], third["outcome"], third["queue"]) == (3, "waiting", sink)
    assert not trace["finished"]  # nothing consumes step 3 (the test's sink)

    code, out = zhpc(config_path, capsys, "trace", recipe_id)
    assert code == 0
    assert "ValueError: value 5 rejected the first time" in out
    assert f"pid {doubler.pid}" in out and "waiting" in out


class AlwaysFails(Service):
    def process(self, rw: RecipeWrapper, payload: Any) -> None:
        raise RuntimeError("the detector file is unreadable")


def test_a_dead_lettered_step_links_to_its_quarantine_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from quarantine_support import run_schlockmeister

    from zhpc.events import EVENTS_TOPIC, decode_batch
    from zhpc.eventstore import open_event_store

    broker = Broker("embedded", f"sqlite://{tmp_path / 'broker.sqlite'}", delivery_limit=1)
    queue = broker.queue("doomed")
    path = tmp_path / "zhpc.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "broker": {"url": broker.url, "delivery_limit": 1},
                "events": {"url": f"sqlite://{tmp_path / 'events.sqlite'}"},
                "quarantine": {
                    "url": f"sqlite://{tmp_path / 'quarantine.sqlite'}",
                    "management_url": "",
                    "notify_queue": "",
                },
            }
        )
    )
    config = load_config(str(path))
    listener = broker.transport()
    with open_event_store(config.events) as store:
        listener.subscribe_broadcast(EVENTS_TOPIC, lambda m: store.add(decode_batch(m.json())))
        rw = RecipeWrapper.from_recipe(
            {"1": {"service": "fails", "queue": queue}, "start": [[1, {}]]}
        )
        broker.transport().publish_many(rw.start())
        service = AlwaysFails(
            "fails",
            config.service("fails").replace(queue=queue, idle_timeout=1.0),
            config,
        )
        runner = ServiceRunner(service, broker.transport(), events=emitter_for(config, "fails"))
        assert runner.run() == 0 and runner.dead_lettered == 1
        wait_until(
            lambda: (
                listener.poll(0.2) is not None
                and any(e["event"] == "dead-lettered" for e in store.for_recipe(str(rw.recipe_id)))
            ),
            timeout=30,
            what="the dead-lettered event",
        )
    assert run_schlockmeister(config, broker.transport()).quarantiner.filed == 1
    code, out = zhpc(path, capsys, "trace", str(rw.recipe_id), "--json")
    trace = json.loads(out)
    assert code == 0 and trace["finished"]
    *failures, last = trace["steps"]
    assert all(run["outcome"] == "failed" for run in failures)
    assert last["outcome"] == "dead-lettered" and last["error"].startswith("delivery_limit")
    assert last["dlq_id"] and last["dlq_id"] == last["message_id"]
    code, out = zhpc(path, capsys, "trace", str(rw.recipe_id))
    assert f"zhpc dlq reinject {last['dlq_id']}" in out
    code, out = zhpc(path, capsys, "dlq", "show", last["dlq_id"], "--json")
    assert code == 0 and json.loads(out)["recipe_id"] == rw.recipe_id
    broker.teardown()

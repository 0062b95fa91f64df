"""``zhpc status`` on the embedded broker and real RabbitMQ, and ``--watch`` in a real terminal."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from service_support import Broker, ServiceProcess
from testsupport import unavailable, wait_until

from zhpc.cli import main
from zhpc.message import Outgoing


def write_config(tmp_path: Path, broker: Broker, running: str, waiting: str) -> Path:
    path = tmp_path / "zhpc.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "broker": {"url": broker.url},
                "quarantine": {"url": f"sqlite://{tmp_path / 'quarantine.sqlite'}"},
                "cluster": {"backend": "local", "workdir": str(tmp_path / "jobs")},
                "services": {
                    "double": {"queue": running, "heartbeat_interval": 1},
                    "jsonlines": {"queue": waiting},
                },
            }
        )
    )
    return path


def start_double(config: Path, tmp_path: Path) -> ServiceProcess:
    return ServiceProcess(
        ["-m", "zhpc", "--config", str(config), "-v", "service", "-s", "double"],
        tmp_path / "double.log",
    )


def stop(proc: ServiceProcess) -> None:
    proc.proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(60) == 0
    finally:
        proc.stop()


def test_status_json_lists_running_services_and_queue_depths(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    running, waiting = broker.queue("status-run"), broker.queue("status-wait")
    config = write_config(tmp_path, broker, running, waiting)
    transport = broker.transport()
    transport.declare_queue(waiting)
    transport.publish_many([Outgoing.json(waiting, {"n": n}) for n in range(3)])
    service = start_double(config, tmp_path)
    try:

        def heard() -> dict | None:
            capsys.readouterr()
            assert main(["--config", str(config), "status", "--json", "--listen", "2"]) == 0
            view = json.loads(capsys.readouterr().out)
            return view if any(s["pid"] == service.pid for s in view["services"]) else None

        view = wait_until(heard, timeout=60, what=f"a heartbeat; log:\n{service.output()}")
    finally:
        stop(service)
    (mine,) = [s for s in view["services"] if s["pid"] == service.pid]
    assert mine["service"] == "double" and mine["queue"] == running
    assert mine["state"] in ("idle", "processing") and mine["processed"] == 0
    queues = {q["queue"]: q for q in view["queues"]}
    assert queues[running]["consumers"] == 1 and queues[running]["ready"] == 0
    assert queues[waiting]["ready"] == 3 and queues[waiting]["consumers"] == 0
    assert view["jobs"] == [] and view["quarantined"] == 0


def test_status_watch_is_a_live_view_in_a_real_terminal(tmp_path: Path) -> None:
    if shutil.which("tmux") is None:
        unavailable("tmux is not installed (apt-get install tmux)")
    broker = Broker("embedded", f"sqlite://{tmp_path / 'broker.sqlite'}")
    running, waiting = broker.queue("watch-run"), broker.queue("watch-wait")
    config = write_config(tmp_path, broker, running, waiting)
    socket = f"zhpc-test-{uuid.uuid4().hex[:8]}"
    tmux = ["tmux", "-L", socket]
    command = (
        f"{sys.executable} -m zhpc --config {config} status --watch --listen 1; "
        f"echo exited $?; sleep 60"
    )
    subprocess.run([*tmux, "new-session", "-d", "-x", "160", "-y", "50", command], check=True)
    service = start_double(config, tmp_path)

    def screen() -> str:
        return subprocess.run(
            [*tmux, "capture-pane", "-p"], capture_output=True, text=True, check=True
        ).stdout

    def showing(text: str) -> str | None:
        shown = screen()
        return shown if text in shown else None

    def last(what: str) -> Callable[[], str]:
        return lambda: f"{what}; the screen:\n{screen()}\nservice log:\n{service.output()}"

    try:
        shown = wait_until(
            lambda: showing(str(service.pid)), timeout=60, what=last("the service on screen")
        )
        assert "services" in shown and "queues" in shown and running in shown
        stop(service)
        wait_until(lambda: showing("stopped"), timeout=60, what=last("the service stopped"))
        subprocess.run([*tmux, "send-keys", "C-c"], check=True)
        wait_until(lambda: showing("exited 0"), timeout=30, what=last("status --watch to exit"))
    finally:
        service.stop()
        subprocess.run([*tmux, "kill-server"], check=False)
        broker.teardown()

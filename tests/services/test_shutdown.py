"""``zhpc shutdown``: only the named services drain and exit 0; the rest keep running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from service_support import Broker, ServiceProcess
from testsupport import wait_until

from zhpc.shutdown import applies


def register(tmp_path: Path, target: str) -> str:
    """A fresh service name for ``target`` (a dist-info of its own on PYTHONPATH): a shutdown
    of it on the shared broker cannot stop anybody else's services."""
    name = f"zhpc_shut_{uuid.uuid4().hex[:10]}"
    dist = tmp_path / "plugins" / f"{name}-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(f"[zhpc.services]\n{name} = {target}\n")
    return name


def start(config: Path, log: Path, service: str, plugins: Path) -> ServiceProcess:
    path = os.pathsep.join(filter(None, [str(plugins), os.environ.get("PYTHONPATH")]))
    return ServiceProcess(
        ["-m", "zhpc", "--config", str(config), "-v", "service", "-s", service],
        log,
        env={"PYTHONPATH": path},
    )


def shutdown(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zhpc", "--config", str(config), "shutdown", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_shutdown_service_stops_only_its_instances_which_exit_0(
    broker: Broker, tmp_path: Path
) -> None:
    doubler = register(tmp_path, "zhpc.services.double:Double")
    writer = register(tmp_path, "zhpc.services.jsonlines:JSONLines")
    doubled, written = broker.queue("shut-double"), broker.queue("shut-lines")
    config = tmp_path / "zhpc.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "broker": {"url": broker.url},
                "events": {"enabled": False},
                "services": {
                    doubler: {"queue": doubled},
                    writer: {"queue": written, "parameters": {"output_roots": [str(tmp_path)]}},
                },
            }
        )
    )
    procs = [
        start(config, tmp_path / f"{name}{n}.log", name, tmp_path / "plugins")
        for n, name in enumerate((doubler, doubler, writer))
    ]
    try:
        for proc in procs:
            wait_until(
                lambda proc=proc: "consuming" in proc.output(),
                timeout=60,
                what=lambda proc=proc: f"a service to start; log:\n{proc.output()}",
            )
        sent = shutdown(config, "--service", doubler)
        assert sent.returncode == 0 and sent.stdout == f"shutdown sent to service {doubler}\n"
        for proc in procs[:2]:
            assert proc.wait(60) == 0, proc.output()
            assert "shutdown requested" in proc.output()
        assert procs[2].proc.poll() is None  # not named: it keeps running
        # --all only where the broker is this test's own (not the shared RabbitMQ).
        last = ("--all",) if broker.kind == "embedded" else ("--service", writer)
        assert shutdown(config, *last).returncode == 0
        assert procs[2].wait(60) == 0, procs[2].output()
    finally:
        for proc in procs:
            if proc.proc.poll() is None:
                proc.proc.send_signal(signal.SIGTERM)
            proc.stop()


def test_shutdown_needs_a_target(tmp_path: Path) -> None:
    config = tmp_path / "zhpc.yaml"
    config.write_text(yaml.safe_dump({"broker": {"url": f"sqlite://{tmp_path / 'b.sqlite'}"}}))
    for args in ((), ("--all", "--service", "x")):
        bad = shutdown(config, *args)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"command": "shutdown", "service": None, "host": None}, True),
        ({"command": "shutdown", "service": "double", "host": None}, True),
        ({"command": "shutdown", "service": "other", "host": None}, False),
        ({"command": "shutdown", "service": None, "host": "n1"}, True),
        ({"command": "shutdown", "service": "double", "host": "n2"}, False),
        ({"command": "restart"}, False),
        (["shutdown"], False),
    ],
)
def test_which_broadcasts_apply(body: object, expected: bool) -> None:
    assert applies(body, "double", hostname="n1.cluster.example") is expected

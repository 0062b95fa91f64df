"""``zhpc scale --daemon --metrics-port``: queue depths and job counts on /metrics (embedded)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from scaler_support import make_setup, work
from testsupport import wait_until

from zhpc.transport.embedded import EmbeddedTransport


def test_the_daemon_serves_queue_depths_and_jobs(tmp_path: Path) -> None:
    setup = make_setup(
        tmp_path,
        broker=f"sqlite:///{tmp_path / 'broker.sqlite'}",
        backend="local",
        scaler={"max_jobs": 2, "messages_per_job": 10},
    )
    with EmbeddedTransport(tmp_path / "broker.sqlite") as broker:
        broker.publish_many(work(setup.queue, 7))
    log = tmp_path / "scale.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "zhpc",
                "--config",
                str(setup.config),
                "scale",
                "--daemon",
                "--dry-run",
                "--interval",
                "30",
                "--metrics-port",
                "0",
                "-s",
                setup.service,
            ],
            stdout=subprocess.DEVNULL,
            stderr=out,
            env=setup.env,
        )
    try:
        found = wait_until(
            lambda: re.search(r"metrics on port (\d+)", log.read_text()),
            timeout=60,
            what=lambda: f"the metrics port; log:\n{log.read_text()}",
        )

        def scraped() -> dict | None:
            url = f"http://127.0.0.1:{found.group(1)}/metrics"
            with urllib.request.urlopen(url, timeout=10) as answer:
                text = answer.read().decode()
            values = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }
            return values if ("zhpc_queue_depth", (("queue", setup.queue),)) in values else None

        values = wait_until(scraped, timeout=60, what="a cycle's metrics")
        assert values[("zhpc_queue_depth", (("queue", setup.queue),))] == 7
        assert values[("zhpc_jobs", (("service", setup.service), ("state", "pending")))] == 0
        assert values[("zhpc_jobs", (("service", setup.service), ("state", "running")))] == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

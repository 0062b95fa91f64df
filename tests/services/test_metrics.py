"""Prometheus ``/metrics`` of ``zhpc service`` (and its textfile), on both brokers."""

from __future__ import annotations

import re
import signal
import urllib.request
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families
from service_support import Broker, ServiceProcess, publish_recipe
from testsupport import collect, wait_until


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition text by (name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return samples(answer.read().decode())


DONE = ("zhpc_messages_total", (("outcome", "done"), ("service", "double")))
FAILED = ("zhpc_messages_total", (("outcome", "failed"), ("service", "double")))
DEAD = ("zhpc_messages_total", (("outcome", "dead-lettered"), ("service", "double")))
SECONDS = ("zhpc_message_seconds_count", (("service", "double"),))


def test_metrics_count_the_processed_messages(broker: Broker, tmp_path: Path) -> None:
    queue, out = broker.queue("metrics"), broker.queue("metrics-out")
    config = tmp_path / "zhpc.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "broker": {"url": broker.url, "delivery_limit": 1},
                "services": {"double": {"queue": queue}},
            }
        )
    )
    textfiles = tmp_path / "textfiles"
    textfiles.mkdir()
    transport = broker.transport()
    recipe = {
        "1": {"service": "double", "queue": queue, "output": 2},
        "2": {"service": "sink", "queue": out},
    }
    publish_recipe(transport, recipe, [{"value": n} for n in range(3)] + [{"value": "x"}])
    service = ServiceProcess(
        [
            "-m",
            "zhpc",
            "--config",
            str(config),
            "service",
            "-s",
            "double",
            "--metrics-port",
            "0",
            "--metrics-textfile",
            str(textfiles),
        ],
        tmp_path / "double.log",
    )
    try:
        found = wait_until(
            lambda: re.search(r"metrics on port (\d+)", service.output()),
            timeout=60,
            what=lambda: f"the metrics port; log:\n{service.output()}",
        )
        port = int(found.group(1))
        collect(transport, out, 3, timeout=60)
        seen = wait_until(
            lambda: (m := scrape(port)).get(DEAD) and m,
            timeout=60,
            what="the bad message counted as dead-lettered",
        )
        # Each failed attempt counts (the delivery limit allows a retry), each with its time.
        assert seen[DONE] == 3 and seen[FAILED] >= 1 and seen[DEAD] == 1
        assert seen[SECONDS] == seen[DONE] + seen[FAILED]
        service.proc.send_signal(signal.SIGTERM)
        assert service.wait(60) == 0
    finally:
        service.stop()
    (written,) = textfiles.glob("zhpc-double-*.prom")
    final = samples(written.read_text())
    assert final[DONE] == 3 and final[DEAD] == 1

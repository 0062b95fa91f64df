"""``zhpc wrap`` sends job-started and job-ended step events (embedded broker, real process)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from jobs_support import write_config
from test_wrap import Q, recipewrapper, run_wrap
from testsupport import wait_until

from zhpc.events import EVENTS_TOPIC, decode_batch
from zhpc.message import Message
from zhpc.transport.embedded import EmbeddedTransport


def test_a_wrapped_job_reports_its_start_and_its_exit_code(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "zhpc.yaml", {"broker": {"url": f"sqlite:///{tmp_path / 'broker.sqlite'}"}}
    )
    with EmbeddedTransport(tmp_path / "broker.sqlite") as broker:
        for name in ("success", "failure", "done"):
            broker.declare_queue(f"{Q}.{name}")
        got: list[Message] = []
        broker.subscribe_broadcast(EVENTS_TOPIC, got.append)
        rwfile = recipewrapper(tmp_path, {})
        recipe_id = json.loads(rwfile.read_text())["environment"]["ID"]
        proc = run_wrap(config, rwfile, sys.executable, "-c", "import sys; sys.exit(7)")
        assert proc.returncode == 7, proc.stderr

        def events() -> list[dict] | None:
            broker.poll(0.2)
            found = [e for m in got for e in decode_batch(m.json())]
            return found if len(found) >= 2 else None

        started, ended = wait_until(events, timeout=30, what="the job's events")
    assert (started["event"], ended["event"]) == ("job-started", "job-ended")
    assert started["recipe_id"] == ended["recipe_id"] == recipe_id
    assert started["step"] == ended["step"] == 1
    assert started["service"] == "wrap:command" and started["pid"] == ended["pid"] != 0
    assert ended["exit_code"] == 7 and ended["duration"] > 0

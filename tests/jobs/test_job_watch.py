"""A job that ends before ``zhpc wrap`` reports still gets its step's failure (issue 12,
item 8), on the real Slurm: the job is cancelled while pending, so wrap never starts."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from jobs_support import recipe_message, wrapped_recipe, write_config
from testsupport import collect, wait_until

from zhpc.cluster import JobState
from zhpc.cluster.slurm import SlurmCluster
from zhpc.config import load_config
from zhpc.message import Message
from zhpc.transport.embedded import EmbeddedTransport

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(120)]

Q = "zt.watch"


@pytest.fixture
def held_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slurm_up: None) -> None:
    """The real sbatch, submitting held: the job waits until the test cancels it."""
    real = shutil.which("sbatch")
    assert real
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\nexec {real} --hold "$@"\n')
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_a_job_cancelled_before_wrap_reports_gets_its_failure_sent(
    tmp_path: Path, held_sbatch: None
) -> None:
    from zhpc.services.cluster_submission import ClusterSubmission

    config = write_config(
        tmp_path / "zhpc.yaml",
        {
            "broker": {"url": f"sqlite:///{tmp_path / 'broker.sqlite'}"},
            "cluster": {
                "backend": "slurm",
                "workdir": str(tmp_path / "jobs"),
                "default_time": "00:02:00",
            },
        },
    )
    service = ClusterSubmission("cluster_submission", config=load_config(config))
    service.setup()
    out = recipe_message(wrapped_recipe(Q, {"cluster": {"command": ["true"]}}, {}))
    message = Message(out.body, dict(out.headers), "cluster.submission", message_id=out.message_id)
    slurm = SlurmCluster(cache_seconds=0)
    job_id = None
    try:
        with EmbeddedTransport(tmp_path / "broker.sqlite") as broker:
            for name in ("failure", "done", "success"):
                broker.declare_queue(f"{Q}.{name}")
            outputs: list[Any] = []
            service.receive(message, outputs)
            job_id = json.loads(outputs[0].body)["payload"]["job_id"]
            service.tick(broker)  # still pending: nothing to report
            assert broker.queue_depth(f"{Q}.failure").ready == 0
            slurm.cancel([job_id])
            wait_until(
                lambda: (slurm.job(job_id, "zhpc-wrap-") or _gone).state.finished,
                30,
                what="the job to be cancelled",
            )

            def reported() -> int:
                service.watch._next = 0.0  # do not wait for the watch's interval
                service.tick(broker)
                return broker.queue_depth(f"{Q}.failure").ready

            wait_until(reported, 30, what="the failure output")
            (failure,) = collect(broker, f"{Q}.failure", 1)
            (done,) = collect(broker, f"{Q}.done", 1)
            payload = failure.json()["payload"]
            assert payload["status"] == "failure" and payload["job_id"] == job_id
            assert payload["scheduler_state"] == "CANCELLED", payload
            assert "before zhpc wrap reported" in payload["error"]
            assert done.json()["payload"] == payload
            service.watch._next = 0.0
            service.tick(broker)  # reported once only
            assert collect(broker, f"{Q}.failure", 1, timeout=0.5, check=False) == []
            assert broker.queue_depth(f"{Q}.success").ready == 0
    finally:
        if job_id:
            slurm.cancel([job_id])
        service.teardown()


class _gone:  # a job the scheduler no longer lists
    state = JobState.COMPLETED

"""A recipe with a cluster step, end to end on the real cluster and RabbitMQ:
a ``zocalo.go``-style request -> Dispatcher -> cluster submission service -> sbatch ->
``zhpc wrap`` in a Slurm job -> the step's named outputs reach the next steps.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from jobs_support import recipe_message, wrapped_recipe, write_config, zhpc_env
from testsupport import AMQP_URL, ARGV_DUMP, collect, wait_until

from zhpc.cluster import JobInfo, JobState
from zhpc.cluster.slurm import SlurmCluster
from zhpc.config import BrokerConfig, load_config
from zhpc.dispatch import DispatchRequest, request_message
from zhpc.message import Message
from zhpc.transport import Transport, dlq_name, get_transport
from zhpc.transport.accounting import retry_name

pytestmark = [pytest.mark.slurm, pytest.mark.rabbitmq]


@dataclass
class Site:
    """Running Dispatcher and cluster submission services, and what they need."""

    base: Path
    config: Path
    queue: str
    dispatcher_queue: str
    data: Path
    log: Path
    transport: Transport
    queues: list[str] = field(default_factory=list)

    def new_queue(self) -> str:
        name = f"zhpc-test-{uuid.uuid4().hex[:10]}"
        self.queues += [f"{name}.{kind}" for kind in ("success", "failure", "done", "submitted")]
        return name

    def run(
        self, step: dict[str, Any], payload: Any = None, parameters: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Start a one-cluster-step recipe; returns its queue prefix and job_submitted payload."""
        name = self.new_queue()
        recipe = wrapped_recipe(name, step, payload or {}, submission=self.queue)
        (self.base / "recipes" / f"{name}.json").write_text(json.dumps(recipe))
        request = DispatchRequest(recipes=[name], parameters=dict(parameters or {}))
        self.transport.publish(request_message(request, self.dispatcher_queue))
        (submitted,) = collect(self.transport, f"{name}.submitted", 1, timeout=30, check=False) or [
            None
        ]
        assert submitted is not None, self.log.read_text()[-3000:]
        return name, submitted.json()["payload"]

    def outcome(self, name: str, expect: str, job: dict[str, Any]) -> dict[str, Any]:
        (message,) = collect(self.transport, f"{name}.{expect}", 1, timeout=90, check=False) or [
            None
        ]
        job_log = Path(job["workdir"]) / "job.out"
        assert message is not None, job_log.read_text() if job_log.exists() else "no job log"
        other = "failure" if expect == "success" else "success"
        assert collect(self.transport, f"{name}.{other}", 1, timeout=0.2, check=False) == []
        (done,) = collect(self.transport, f"{name}.done", 1, timeout=10)
        payload = message.json()["payload"]
        assert done.json()["payload"] == payload
        return payload


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory, rabbitmq_up: None, slurm_up: None
) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("site")
    queue = f"zhpc-test-{uuid.uuid4().hex[:10]}.submission"
    dispatcher_queue = f"zhpc-test-{uuid.uuid4().hex[:10]}.processing_recipe"
    for folder in ("data", "jobs", "recipes"):
        (base / folder).mkdir()
    config = write_config(
        base / "zhpc.yaml",
        {
            "broker": {"url": AMQP_URL},
            "cluster": {
                "backend": "slurm",
                "workdir": str(base / "jobs"),
                "default_time": "00:05:00",
            },
            "staging": {"allowed_roots": [str(base / "data")]},
            "recipes": {"directory": str(base / "recipes")},
            "services": {
                "cluster_submission": {"queue": queue, "prefetch": 10},
                "dispatcher": {"queue": dispatcher_queue},
            },
        },
    )
    log = base / "service.log"
    services = []
    with open(log, "w") as out:
        for name in ("dispatcher", "cluster_submission"):
            services.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "zhpc",
                        "--config",
                        str(config),
                        "-v",
                        "service",
                        "-s",
                        name,
                    ],
                    env=zhpc_env(),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    transport = get_transport(BrokerConfig(url=AMQP_URL))
    transport.connect()
    site = Site(
        base,
        config,
        queue,
        dispatcher_queue,
        base / "data",
        log,
        transport,
        queues=[queue, dlq_name(queue), dispatcher_queue, dlq_name(dispatcher_queue)],
    )
    try:
        yield site
    finally:
        for service in services:
            service.send_signal(signal.SIGTERM)
        for service in services:
            assert service.wait(timeout=30) == 0
        cluster = SlurmCluster()  # jobs of this module have their directory under base
        cluster.cancel(
            [
                j.job_id
                for j in cluster.jobs("zhpc-wrap-")
                if not j.state.finished and (base / "jobs" / j.name).is_dir()
            ]
        )
        for name in site.queues:
            for each in (name, retry_name(name)):
                transport.delete_queue(each)
        transport.close()


def finished_job(job_id: str) -> JobInfo:
    cluster = SlurmCluster(cache_seconds=0)

    def finished() -> JobInfo | None:
        info = cluster.job(job_id, "zhpc-wrap-")
        return info if info is not None and info.state.finished else None

    return wait_until(
        finished, 30, 0.5, lambda: f"job {job_id} to finish: {cluster.job(job_id, 'zhpc-wrap-')}"
    )


def test_success_reaches_the_next_step_from_a_slurm_job(site: Site) -> None:
    step = {
        "cluster": {
            "command": [sys.executable, "-c", "print('hello from the job')"],
            "time": "00:02:00",
            "cpus": 1,
            "memory": "200M",
        }
    }
    name, job = site.run(step, {"image": 1})
    assert job["job_id"].isdigit() and job["resubmission"] is False
    payload = site.outcome(name, "success", job)
    assert payload["exit_code"] == 0 and payload["stdout"] == "hello from the job\n"
    assert payload["slurm_job_id"] == job["job_id"] and payload["node"] in ("n1", "n2", "n3")
    info = finished_job(job["job_id"])
    assert (info.state, info.exit_code) == (JobState.COMPLETED, 0)


def test_a_failing_command_reaches_failure_and_the_job_exits_with_its_code(site: Site) -> None:
    step = {"cluster": {"command": [sys.executable, "-c", "import sys; sys.exit(3)"]}}
    name, job = site.run(step)
    payload = site.outcome(name, "failure", job)
    assert payload["exit_code"] == 3 and payload["slurm_job_id"] == job["job_id"]
    info = finished_job(job["job_id"])
    assert (info.state, info.exit_code) == (JobState.FAILED, 3)


def test_a_parameter_cannot_inject_a_command(site: Site) -> None:
    pwned = Path(f"/tmp/zhpc-pwned-{uuid.uuid4().hex[:8]}")
    evil = f"; touch {pwned}"
    dump = site.base / f"argv-{uuid.uuid4().hex[:8]}.json"
    step = {
        "cluster": {
            "command": [
                sys.executable,
                "-c",
                ARGV_DUMP,
                str(dump),
                "{evil}",
                "$(touch {evil})",
                "{payload[evil]}",
            ]
        }
    }
    name, job = site.run(step, {"evil": evil}, parameters={"evil": evil})
    site.outcome(name, "success", job)
    assert json.loads(dump.read_text()) == [evil, f"$(touch {evil})", evil]
    assert not pwned.exists()
    assert not Path("/tmp/zhpc-pwned").exists()


def test_staging_outside_the_allowed_roots_is_refused(site: Site) -> None:
    marker = site.base / f"ran-{uuid.uuid4().hex[:8]}"
    step = {
        "cluster": {
            "command": [sys.executable, "-c", f"open({str(marker)!r}, 'w')"],
            "stage_in": [f"{site.data}/../../etc/passwd"],
        }
    }
    name, job = site.run(step)
    payload = site.outcome(name, "failure", job)
    assert "'..' is not allowed" in payload["error"] and payload["exit_code"] == 2
    assert not marker.exists()
    assert finished_job(job["job_id"]).exit_code == 2


def test_redelivery_after_sbatch_does_not_submit_twice(site: Site) -> None:
    from zhpc.services.cluster_submission import JOB_ID_FILE, ClusterSubmission

    config = load_config(site.config)
    service = ClusterSubmission("cluster_submission", config=config)
    service.setup()
    service.cluster.cache_seconds = 0  # type: ignore[attr-defined]
    name = site.new_queue()
    step = {"cluster": {"command": ["sleep", "60"], "time": "00:02:00"}}
    out = recipe_message(wrapped_recipe(name, step, {}, submission=site.queue))
    payloads = []
    try:
        for attempt in range(3):
            message = Message(
                out.body,
                dict(out.headers),
                site.queue,
                delivery_count=attempt + 1,
                redelivered=attempt > 0,
                message_id=out.message_id,
            )
            outputs: list[Any] = []
            service.receive(message, outputs)
            (sent,) = outputs
            payloads.append(json.loads(sent.body)["payload"])
            if attempt == 1:  # died after sbatch, before it recorded the job id
                (Path(payloads[0]["workdir"]) / JOB_ID_FILE).unlink()
        assert service.cluster.calls.get("sbatch") == 1  # type: ignore[attr-defined]
        assert {p["job_id"] for p in payloads} == {payloads[0]["job_id"]}
        assert [p["resubmission"] for p in payloads] == [False, True, True]
    finally:
        service.cluster.cancel([payloads[0]["job_id"]] if payloads else [])
        service.teardown()


def test_a_cancelled_job_still_reports_failure_with_the_signal(site: Site) -> None:
    code = "import time; print('started', flush=True); time.sleep(120)"
    step = {"cluster": {"command": [sys.executable, "-c", code]}}
    name, job = site.run(step)
    job_log = Path(job["workdir"]) / "job.out"
    wait_until(
        lambda: "started" in (job_log.read_text() if job_log.exists() else ""),
        60,
        what="the command to start",
    )
    SlurmCluster().cancel([job["job_id"]])
    payload = site.outcome(name, "failure", job)
    assert (payload["signal"], payload["exit_code"]) == (15, 143)
    assert payload["stdout"] == "started\n"
    assert finished_job(job["job_id"]).state is JobState.CANCELLED

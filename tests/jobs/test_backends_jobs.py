"""The cluster submission service, ``zhpc wrap`` in the job and ``zhpc submit-services``,
unchanged on slurmrestd and Grid Engine (DRMAA), against the real schedulers and RabbitMQ."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jobs_support import recipe_message, wrapped_recipe, write_config, zhpc
from testsupport import AMQP_URL, collect, wait_until

from zhpc.cluster import Cluster, JobState, get_cluster
from zhpc.cluster.arrays import NAME_PREFIX
from zhpc.config import load_config
from zhpc.message import Message
from zhpc.transport import Transport, dlq_name
from zhpc.transport.accounting import retry_name

pytestmark = pytest.mark.rabbitmq
SERVICE = "zhpc_test_slow"


@pytest.fixture(params=["slurmrestd", "drmaa"])
def site(
    request: pytest.FixtureRequest, tmp_path: Path, rabbit: Transport
) -> Iterator[tuple[Path, Cluster, str]]:
    """A configuration using the backend, the backend itself, and a queue of this test's."""
    backend = request.param
    extra: dict[str, Any] = {}
    if backend == "slurmrestd":
        extra = {"slurmrestd": {"token_file": str(request.getfixturevalue("slurmrestd_token"))}}
    else:
        request.getfixturevalue("gridengine_up")
    queue = f"zhpc-test-{uuid.uuid4().hex[:10]}"
    (tmp_path / "jobs").mkdir()
    config = write_config(
        tmp_path / "zhpc.yaml",
        {
            "broker": {"url": AMQP_URL},
            "cluster": {
                "backend": backend,
                "workdir": str(tmp_path / "jobs"),
                "default_time": "00:05:00",
                **extra,
            },
            "services": {
                SERVICE: {
                    "queue": queue,
                    "prefetch": 1,
                    "drain_grace": 2,
                    "end_margin": 10,
                    "heartbeat_interval": 5,
                },
                "cluster_submission": {"queue": f"{queue}.submission"},
            },
        },
    )
    cluster = get_cluster(load_config(config).cluster)
    try:
        yield config, cluster, queue
    finally:
        cluster.cancel(
            [
                j.job_id
                for j in cluster.jobs("")
                if not j.state.finished
                and (
                    j.name.startswith(NAME_PREFIX + SERVICE)
                    or (tmp_path / "jobs" / j.name).is_dir()
                )
            ]
        )
        cluster.close()
        for name in (
            queue,
            f"{queue}.out",
            f"{queue}.submission",
            *(f"{queue}.{kind}" for kind in ("success", "failure", "done", "submitted")),
        ):
            for each in (name, retry_name(name), dlq_name(name)):
                rabbit.delete_queue(each)


def test_a_cluster_step_runs_under_zhpc_wrap_and_knows_its_job(
    site: tuple[Path, Cluster, str], rabbit: Transport
) -> None:
    from zhpc.services.cluster_submission import ClusterSubmission

    config, cluster, queue = site
    service = ClusterSubmission("cluster_submission", config=load_config(config))
    service.setup()
    step = {
        "cluster": {
            "command": [sys.executable, "-c", "print('hello from the job')"],
            "time": "00:02:00",
        }
    }
    out = recipe_message(wrapped_recipe(queue, step, {"image": 1}))
    for kind in ("success", "failure", "done"):
        rabbit.declare_queue(f"{queue}.{kind}")
    outputs: list[Any] = []
    try:
        service.receive(Message(out.body, dict(out.headers), f"{queue}.submission"), outputs)
    finally:
        service.cluster.close()
    (sent,) = outputs
    job = json.loads(sent.body)["payload"]
    (success,) = collect(rabbit, f"{queue}.success", 1, timeout=120, check=False) or [None]
    job_log = Path(job["workdir"]) / "job.out"
    assert success is not None, job_log.read_text() if job_log.exists() else "no job log"
    payload = success.json()["payload"]
    assert payload["exit_code"] == 0 and payload["stdout"] == "hello from the job\n"
    assert payload["job_id"] == job["job_id"] and payload["node"]
    info = wait_until(
        lambda: (lambda i: i if i and i.state.finished else None)(cluster.job(job["job_id"], "")),
        60,
        0.5,
        "the job to be listed finished",
    )
    assert (info.state, info.exit_code) == (JobState.COMPLETED, 0)


def test_submit_services_array_consumes_and_cancel_loses_nothing(
    site: tuple[Path, Cluster, str], rabbit: Transport
) -> None:
    config, cluster, queue = site
    recipe = {
        "1": {"service": "slow", "queue": queue, "output": 2},
        "2": {"service": "sink", "queue": f"{queue}.out"},
    }
    rabbit.declare_queue(queue)
    rabbit.declare_queue(f"{queue}.out")
    rabbit.publish_many(
        [recipe_message({**recipe, "start": [[1, {"n": n, "sleep": 0.5}]]}) for n in range(30)]
    )
    proc = zhpc(
        "--config",
        str(config),
        "submit-services",
        "-s",
        SERVICE,
        "--count",
        "2",
        "--time",
        "00:05:00",
    )
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    wait_until(lambda: rabbit.queue_depth(queue).consumers == 2, 90, 0.5, "two consumers")
    outputs = collect(rabbit, f"{queue}.out", 4, timeout=60, check=False)
    assert len(outputs) >= 4
    cluster.cancel([job_id])
    wait_until(
        lambda: all(
            j.state.finished for j in cluster.jobs(NAME_PREFIX) if j.array_job_id == job_id
        ),
        60,
        0.5,
        "the cancelled tasks",
    )
    outputs += collect(rabbit, f"{queue}.out", 30, timeout=2, exact=True, check=False)
    done = {m.json()["payload"]["n"] for m in outputs}
    left = collect(rabbit, queue, 30 - len(done), timeout=10, exact=True, check=False)
    while (moved := rabbit.fetch(retry_name(queue))) is not None:
        rabbit.ack(moved)
        left.append(moved)
    assert done | {m.json()["payload"]["n"] for m in left} == set(range(30))
    assert rabbit.queue_depth(dlq_name(queue)).ready == 0

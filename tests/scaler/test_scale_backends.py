"""``zhpc scale`` unchanged on the other schedulers: slurmrestd and Grid Engine (DRMAA).

The same burst as on Slurm, smaller: one array of the service for the queue's
work, every message processed, the tasks ending by themselves when idle.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scaler_support import Setup, make_setup, work
from testsupport import AMQP_URL, collect, wait_until

from zhpc.cluster import Cluster, JobState, get_cluster
from zhpc.config import load_config
from zhpc.transport import Transport, dlq_name

pytestmark = pytest.mark.rabbitmq


def cluster_settings(backend: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    if backend == "slurmrestd":
        token = request.getfixturevalue("slurmrestd_token")
        return {"slurmrestd": {"token_file": str(token)}}
    request.getfixturevalue("gridengine_up")
    return {}


@pytest.fixture(params=["slurmrestd", "drmaa"])
def setup(
    request: pytest.FixtureRequest, tmp_path: Path, rabbit: Transport
) -> Iterator[tuple[Setup, Cluster]]:
    backend = request.param
    made = make_setup(
        tmp_path,
        broker=AMQP_URL,
        backend=backend,
        cluster=cluster_settings(backend, request),
        scaler={"max_jobs": 2, "messages_per_job": 20, "max_pending": 2},
    )
    cluster = get_cluster(load_config(made.config).cluster)
    try:
        yield made, cluster
    finally:
        name = f"zhpc-svc-{made.service}"
        cluster.cancel([j.job_id for j in cluster.jobs(name) if not j.state.finished])
        cluster.close()
        for queue in (made.queue, f"{made.queue}.out"):
            for each in (queue, dlq_name(queue)):
                rabbit.delete_queue(each)


def test_a_burst_gets_one_array_that_drains_it_and_ends_when_idle(
    setup: tuple[Setup, Cluster], rabbit: Transport
) -> None:
    made, cluster = setup
    rabbit.declare_queue(f"{made.queue}.out")
    rabbit.publish_many(work(made.queue, 40, sleep=0.01))
    (first,) = made.scale("--once")
    assert (first["desired"], first["submitted"]) == (2, 2), first
    name = f"zhpc-svc-{made.service}"
    tasks = [j for j in cluster.jobs(name) if j.name == name]
    assert {j.array_job_id for j in tasks} == {first["job_id"]} and len(tasks) == 2
    (second,) = made.scale("--once")
    assert second["submitted"] == 0, second
    outputs = collect(rabbit, f"{made.queue}.out", 40, timeout=120, check=False)
    assert {m.json()["payload"]["n"] for m in outputs} == set(range(40)), made.logs()
    done = wait_until(
        lambda: (lambda js: js if js and all(j.state.finished for j in js) else None)(
            [j for j in cluster.jobs(name) if j.name == name]
        ),
        timeout=90,
        interval=0.5,
        what="the service tasks to end when idle",
    )
    assert {(j.state, j.exit_code) for j in done} == {(JobState.COMPLETED, 0)}, made.logs()
    assert rabbit.queue_depth(dlq_name(made.queue)).ready == 0

"""Services as Slurm job arrays on the real cluster: `zhpc submit-services` end to end.

A test-only slow service (``tests/jobs/plugins``, on PYTHONPATH of the jobs)
consumes a stream of messages on RabbitMQ while the job is cancelled, requeued or
runs into its time limit. Whatever happens, every message ends up either
processed (its output arrived) or still in its queue, and nothing is dead-lettered.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jobs_support import recipe_message, write_config, zhpc
from testsupport import AMQP_URL, collect, wait_until

from zhpc.cluster import JobInfo, JobState
from zhpc.cluster.arrays import NAME_PREFIX, service_array_spec
from zhpc.cluster.slurm import SlurmCluster
from zhpc.config import load_config
from zhpc.transport import Transport, dlq_name
from zhpc.transport.accounting import retry_name

pytestmark = [pytest.mark.slurm, pytest.mark.rabbitmq]
SERVICE = "zhpc_test_slow"


@pytest.fixture
def slurm(slurm_up: None) -> Iterator[SlurmCluster]:
    cluster = SlurmCluster(cache_seconds=0)
    submitted: list[str] = []
    cluster.submitted = submitted  # type: ignore[attr-defined]
    yield cluster
    cluster.cancel(submitted)


@pytest.fixture
def queue(rabbit: Transport, unique_name: str) -> Iterator[str]:
    yield unique_name
    for name in (unique_name, f"{unique_name}.out"):
        for each in (name, retry_name(name), dlq_name(name)):
            rabbit.delete_queue(each)


@pytest.fixture
def config(tmp_path: Path, queue: str) -> Path:
    (tmp_path / "jobs").mkdir()
    return write_config(
        tmp_path / "zhpc.yaml",
        {
            "broker": {"url": AMQP_URL},
            "cluster": {"backend": "slurm", "workdir": str(tmp_path / "jobs")},
            "services": {
                SERVICE: {
                    "queue": queue,
                    "prefetch": 1,
                    "drain_grace": 2,
                    "end_margin": 10,
                    "heartbeat_interval": 5,
                }
            },
        },
    )


def start_stream(rabbit: Transport, queue: str, count: int, sleep: float) -> set[int]:
    recipe = {
        "1": {"service": "slow", "queue": queue, "output": 2},
        "2": {"service": "sink", "queue": f"{queue}.out"},
        "start": [[1, {}]],
    }
    rabbit.declare_queue(queue)
    rabbit.declare_queue(f"{queue}.out")
    rabbit.publish_many(
        [recipe_message({**recipe, "start": [[1, {"n": n, "sleep": sleep}]]}) for n in range(count)]
    )
    return set(range(count))


def submit(config: Path, slurm: SlurmCluster, *args: str) -> str:
    proc = zhpc("--config", str(config), "submit-services", "-s", SERVICE, *args)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    assert job_id.isdigit(), proc.stdout
    slurm.submitted.append(job_id)  # type: ignore[attr-defined]
    return job_id


def tasks(slurm: SlurmCluster, job_id: str) -> list[JobInfo]:
    return [j for j in slurm.jobs(NAME_PREFIX) if j.array_job_id == job_id]


def logs(tmp_path: Path) -> str:
    return "\n".join(
        f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted((tmp_path / "jobs").glob("*.out"))
    )


def account(
    rabbit: Transport, queue: str, expected: set[int], outputs: list[Any], max_deliveries: int = 2
) -> None:
    """Every message is an output or still queued, none was delivered more than
    ``max_deliveries`` times, and the dead-letter queue is empty."""
    done = {m.json()["payload"]["n"] for m in outputs}
    left = collect(rabbit, queue, len(expected - done), timeout=10, exact=True, check=False)
    while (moved := rabbit.fetch(retry_name(queue))) is not None:  # returned by a dead job
        rabbit.ack(moved)
        left.append(moved)
    remaining = {m.json()["payload"]["n"] for m in left}
    assert done | remaining == expected, f"lost: {sorted(expected - done - remaining)}"
    assert rabbit.queue_depth(dlq_name(queue)).ready == 0
    assert all(m.delivery_count <= max_deliveries for m in left), [
        (m.json()["payload"]["n"], m.delivery_count) for m in left
    ]


def test_count_100_is_one_sbatch_call_of_one_array(
    config: Path, slurm: SlurmCluster, tmp_path: Path
) -> None:
    spec = service_array_spec(load_config(config), SERVICE, 100, time="00:01:00", hold=True)
    job_id = slurm.submit(spec)
    slurm.submitted.append(job_id)  # type: ignore[attr-defined]
    assert slurm.calls == {"sbatch": 1}
    listed = tasks(slurm, job_id)
    assert sorted(j.array_task_id for j in listed) == list(range(100))
    assert all(j.state is JobState.PENDING for j in listed)
    dry = zhpc(
        "--config", str(config), "submit-services", "-s", SERVICE, "--count", "100", "--dry-run"
    )
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("sbatch --parsable") == 1 and "--array=0-99" in dry.stdout
    assert "--signal=B:USR1@12" in dry.stdout and "trap 'forward USR1' USR1" in dry.stdout
    assert "trap 'forward CONT'" not in dry.stdout and " CONT" not in dry.stdout


def test_three_tasks_consume_and_scancel_loses_nothing(
    config: Path, slurm: SlurmCluster, rabbit: Transport, queue: str, tmp_path: Path
) -> None:
    expected = start_stream(rabbit, queue, 40, sleep=0.5)
    job_id = submit(config, slurm, "--count", "3", "--time", "00:05:00")
    wait_until(lambda: rabbit.queue_depth(queue).consumers == 3, 60, 0.5, "three consumers")
    running = tasks(slurm, job_id)
    assert len(running) == 3 and all(j.state is JobState.RUNNING for j in running), running
    outputs = collect(rabbit, f"{queue}.out", 6, timeout=30, check=False)
    assert len(outputs) >= 6, logs(tmp_path)
    assert len({m.json()["payload"]["job"] for m in outputs}) >= 2  # not one task doing it all
    slurm.cancel([job_id])
    wait_until(
        lambda: all(j.state.finished for j in tasks(slurm, job_id)), 30, 0.5, "cancelled tasks"
    )
    outputs += collect(rabbit, f"{queue}.out", 40, timeout=2, exact=True, check=False)
    account(rabbit, queue, expected, outputs)


def test_requeue_loses_nothing_and_the_requeued_task_carries_on(
    config: Path, slurm: SlurmCluster, rabbit: Transport, queue: str, tmp_path: Path
) -> None:
    expected = start_stream(rabbit, queue, 16, sleep=0.5)
    job_id = submit(config, slurm, "--count", "1", "--time", "00:05:00")
    outputs = collect(rabbit, f"{queue}.out", 3, timeout=60, check=False)
    assert len(outputs) == 3, logs(tmp_path)
    task = f"{job_id}_0"
    subprocess.run(["scontrol", "requeue", task], check=True, timeout=30)

    def released() -> bool:  # a requeued job waits ~2 minutes unless told to start now
        (info,) = tasks(slurm, job_id) or [None]
        if info is None or info.state is not JobState.PENDING:
            return False
        update = subprocess.run(
            ["scontrol", "update", f"JobId={task}", "StartTime=now"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        return update.returncode == 0

    wait_until(released, 60, 0.5, "the requeued task to be pending")
    done = {m.json()["payload"]["n"] for m in outputs}

    def all_done() -> bool:  # duplicates are allowed
        more = collect(rabbit, f"{queue}.out", len(expected - done), timeout=1, check=False)
        done.update(m.json()["payload"]["n"] for m in more)
        return done == expected

    wait_until(
        lambda: done == expected or all_done(),
        60,
        0,
        lambda: f"the outputs of {sorted(expected - done)}\n{logs(tmp_path)}",
    )
    (info,) = tasks(slurm, job_id)
    assert info.restart_count == 1
    assert rabbit.queue_depth(dlq_name(queue)).ready == 0


def test_time_limit_drains_and_exits_0_before_slurm_kills_it(
    config: Path, slurm: SlurmCluster, rabbit: Transport, queue: str, tmp_path: Path
) -> None:
    expected = start_stream(rabbit, queue, 100, sleep=1.5)
    job_id = submit(config, slurm, "--count", "1", "--time", "00:01:00")
    (info,) = wait_until(
        lambda: [j for j in tasks(slurm, job_id) if j.state.finished],
        150,
        0.5,
        "the one-minute job to end",
    )
    assert (info.state, info.exit_code) == (JobState.COMPLETED, 0), logs(tmp_path)
    assert info.start_time and info.end_time
    assert (info.end_time - info.start_time).total_seconds() < 60
    outputs = collect(rabbit, f"{queue}.out", 100, timeout=3, exact=True, check=False)
    assert len(outputs) >= 10, logs(tmp_path)
    # A drain hands its message back without counting a failed delivery.
    account(rabbit, queue, expected, outputs, max_deliveries=1)
    log = logs(tmp_path)
    assert "draining (" in log and "zhpc: service exited with status 0" in log, log

"""Issue 2 smoke tests: the real test cluster runs jobs on n1-n3 and RabbitMQ answers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from testsupport import wait_until


@pytest.mark.slurm
def test_sbatch_job_lands_on_each_node_and_completes(
    slurm_up: None, unique_name: str, tmp_path: Path
) -> None:
    job_ids = {}
    for node in ("n1", "n2", "n3"):
        submitted = subprocess.run(
            [
                "sbatch",
                "--parsable",
                f"--job-name={unique_name}",
                f"--nodelist={node}",
                f"--output={tmp_path}/%j.out",
                "--time=00:02:00",
            ],
            input='#!/bin/bash\necho "node=$SLURMD_NODENAME job=$SLURM_JOB_ID"\n',
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        job_ids[node] = submitted.stdout.strip().split(";")[0]

    def states() -> dict[str, str] | None:
        out = subprocess.run(
            ["squeue", "--noheader", "--states=all", f"--name={unique_name}", "--format=%i %T"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        found = dict(line.split() for line in out.splitlines())
        done = len(found) == 3 and all(s in ("COMPLETED", "FAILED") for s in found.values())
        return found if done else None

    final = wait_until(states, timeout=60, what="the three smoke jobs to finish")
    assert set(final.values()) == {"COMPLETED"}
    for node, job_id in job_ids.items():
        output = (tmp_path / f"{job_id}.out").read_text()
        assert output.strip() == f"node={node} job={job_id}"


@pytest.mark.rabbitmq
def test_pika_round_trips_a_message(rabbitmq_up: None, unique_name: str) -> None:
    import pika

    params = pika.ConnectionParameters(
        host="127.0.0.1",
        port=5672,
        credentials=pika.PlainCredentials("guest", "guest"),
        connection_attempts=3,
        retry_delay=1,
    )
    connection = pika.BlockingConnection(params)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(unique_name, exclusive=True, auto_delete=True)
        body = f"hello from {unique_name}".encode()
        channel.basic_publish(
            "", unique_name, body, pika.BasicProperties(delivery_mode=2), mandatory=True
        )
        received = []
        for method, _props, payload in channel.consume(
            unique_name, inactivity_timeout=10, auto_ack=False
        ):
            assert method is not None, "no message came back within 10 s"
            channel.basic_ack(method.delivery_tag)
            received.append(payload)
            break
        channel.cancel()
        assert received == [body]
    finally:
        connection.close()

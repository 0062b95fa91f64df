"""Fixtures of the scaler tests on the real cluster: RabbitMQ and the 3-node Slurm."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from scaler_support import Setup, make_setup
from testsupport import AMQP_URL

from zhpc.cluster.slurm import SlurmCluster
from zhpc.config import BrokerConfig
from zhpc.transport import Transport, dlq_name, get_transport


@pytest.fixture
def rabbit(rabbitmq_up: None) -> Iterator[Transport]:
    with get_transport(BrokerConfig(url=AMQP_URL)) as transport:
        yield transport


@pytest.fixture
def slurm(slurm_up: None) -> SlurmCluster:
    return SlurmCluster(cache_seconds=0)


@pytest.fixture
def slurm_setup(
    tmp_path: Path, rabbit: Transport, slurm: SlurmCluster
) -> Iterator[Callable[..., Setup]]:
    """Makes this test's service (a name of its own) on RabbitMQ + Slurm; afterwards cancels
    exactly that service's jobs and deletes its queues."""
    made: list[Setup] = []

    def make(**kwargs: object) -> Setup:
        setup = make_setup(tmp_path / f"s{len(made)}", broker=AMQP_URL, backend="slurm", **kwargs)  # type: ignore[arg-type]
        made.append(setup)
        return setup

    yield make
    for setup in made:
        mine = [
            j.job_id
            for j in slurm.jobs(f"zhpc-svc-{setup.service}")
            if j.name == f"zhpc-svc-{setup.service}" and not j.state.finished
        ]
        slurm.cancel(mine)
        for queue in (setup.queue, f"{setup.queue}.out"):
            for name in (queue, dlq_name(queue)):
                rabbit.delete_queue(name)

"""A short chaos run (``bench/chaos.py`` small): every fault kind at least once, nothing lost.

1,000 recipe instances (10 of them through a real sbatch + ``zhpc wrap`` job, one a
poison message) flow through services running as Slurm array tasks kept up by
``zhpc scale``, on a private RabbitMQ node, while the run SIGKILLs service
processes, cancels and requeues array tasks, lets a task run into its time limit,
SIGKILLs and restarts one slurmd, restarts the broker application and cuts every
broker connection. Every good instance must reach the sink and only the poison
message may be quarantined.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from chaoslib import faults
from chaoslib.rabbit import PrivateRabbit
from chaoslib.run import ChaosRun, Settings, leftover_jobs
from testsupport import port_open, unavailable

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(600)]
PORT = 5691  # not the benchmark's 5690, so a benchmark running meanwhile is left alone


def test_every_fault_kind_once_loses_nothing(slurm_up: None, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        unavailable("the chaos run needs root (slurmd restart, ss -K)")
    if not PrivateRabbit.available():
        unavailable("RabbitMQ is not installed in /usr/lib/rabbitmq")
    if port_open(PORT) or port_open(PORT + 10000):
        unavailable(f"port {PORT} or {PORT + 10000} is in use", hint=None)
    settings = Settings(
        messages=1000,
        rate=12,
        kinds=list(faults.KINDS),
        repeats=1,
        drain_timeout=240,
        base=tmp_path / "run",
        port=PORT,
    )
    run = ChaosRun(settings)
    report = run.run()
    print(report)
    assert report["faults"] == {kind: 1 for kind in faults.KINDS}, report
    assert report["lost"] == 0, report
    assert report["good_quarantined"] == 0, report
    assert report["poison"] == 1 and report["quarantined"] == 1, report
    assert report["arrived_unique"] == report["good"] == 999, report
    assert report["wrapped"] == 10, report
    assert leftover_jobs(run.base) == 0
    assert not port_open(PORT), "the private broker is still running"

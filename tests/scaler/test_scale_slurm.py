"""``zhpc scale`` on the real cluster: RabbitMQ queue depth -> Slurm job arrays.

Each test scales a service of its own name (scaler_support.register_service), so the
jobs it counts, and cancels at the end, are its own on the shared cluster.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator

import pytest
from scaler_support import Setup, work
from testsupport import collect, wait_until

from zhpc.cluster import JobInfo, JobState
from zhpc.cluster.slurm import SlurmCluster
from zhpc.transport import Transport, dlq_name

pytestmark = [pytest.mark.slurm, pytest.mark.rabbitmq]
NODES = ("n1", "n2", "n3")


def jobs_of(slurm: SlurmCluster, setup: Setup) -> list[JobInfo]:
    name = f"zhpc-svc-{setup.service}"
    return [j for j in slurm.jobs(name) if j.name == name]


def alive(slurm: SlurmCluster, setup: Setup) -> list[JobInfo]:
    return [j for j in jobs_of(slurm, setup) if not j.state.finished]


def test_a_burst_gets_one_array_that_drains_it_and_ends_when_idle(
    slurm_setup: Callable[..., Setup], rabbit: Transport, slurm: SlurmCluster
) -> None:
    setup = slurm_setup(scaler={"max_jobs": 3, "messages_per_job": 100, "max_pending": 5})
    rabbit.declare_queue(f"{setup.queue}.out")
    rabbit.publish_many(work(setup.queue, 500, sleep=0.005))
    (first,) = setup.scale("--once")
    assert (first["ready"], first["consumers"], first["desired"]) == (500, 0, 3), first
    assert first["submitted"] == 3 and first["job_id"], first
    tasks = jobs_of(slurm, setup)
    assert {j.array_job_id for j in tasks} == {first["job_id"]} and len(tasks) == 3
    (second,) = setup.scale("--once")
    assert second["submitted"] == 0 and second["running"] + second["pending"] == 3, second
    assert len(jobs_of(slurm, setup)) == 3
    outputs = collect(rabbit, f"{setup.queue}.out", 500, timeout=120, check=False)
    assert {m.json()["payload"]["n"] for m in outputs} == set(range(500)), setup.logs()
    done = wait_until(
        lambda: (lambda js: js if js and all(j.state.finished for j in js) else None)(
            jobs_of(slurm, setup)
        ),
        timeout=60,
        interval=0.5,
        what="the service jobs to end when idle",
    )
    assert {(j.state, j.exit_code) for j in done} == {(JobState.COMPLETED, 0)}, setup.logs()
    assert setup.logs().count("idle for 3 s") == 3, setup.logs()
    (after,) = setup.scale("--once")
    assert (after["work"], after["submitted"], after["reason"]) == (0, 0, "idle"), after
    assert len(jobs_of(slurm, setup)) == 3
    assert rabbit.queue_depth(dlq_name(setup.queue)).ready == 0


@pytest.fixture
def full_cluster(slurm: SlurmCluster) -> Iterator[list[str]]:
    """Jobs of this test's own that take every CPU of n1-n3, cancelled afterwards."""
    cpus = dict(
        line.split()
        for line in subprocess.run(
            ["sinfo", "--noheader", "-N", "-o", "%N %c"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.splitlines()
        if line.strip()
    )
    name = f"zhpc-test-filler-{uuid.uuid4().hex[:8]}"
    ids: list[str] = []
    try:
        for node in NODES:
            ids.append(
                subprocess.run(
                    [
                        "sbatch",
                        "--parsable",
                        f"--job-name={name}",
                        f"--nodelist={node}",
                        f"--cpus-per-task={cpus[node]}",
                        "--time=00:10:00",
                        "--output=/dev/null",
                        "--wrap=sleep 600",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=True,
                ).stdout.strip()
            )
        wait_until(
            lambda: (
                all(j.state is JobState.RUNNING for j in slurm.jobs(name))
                and len(slurm.jobs(name)) == len(NODES)
            ),
            timeout=180,
            interval=0.5,
            what="the filler jobs to occupy every node",
        )
        yield ids
    finally:
        slurm.cancel(ids)


def test_on_a_full_cluster_pending_jobs_stay_within_the_limits_and_overdue_ones_go(
    slurm_setup: Callable[..., Setup],
    rabbit: Transport,
    slurm: SlurmCluster,
    full_cluster: list[str],
) -> None:
    setup = slurm_setup(
        scaler={"max_jobs": 4, "messages_per_job": 10, "max_pending": 2, "pending_timeout": 3}
    )
    rabbit.publish_many(work(setup.queue, 100))
    reports = [setup.scale("--once")[0] for _ in range(4)]
    assert [r["submitted"] for r in reports] == [2, 0, 0, 0], reports
    assert all(r["desired"] == 4 and "max_pending" in r["reason"] for r in reports[1:]), reports
    assert reports[-1]["pending"] == 2 and reports[-1]["running"] == 0
    jobs = jobs_of(slurm, setup)
    assert len(jobs) == 2 and all(j.state is JobState.PENDING for j in jobs), jobs
    # Past pending_timeout but still needed: reported, not cancelled.
    overdue = wait_until(
        lambda: (r := setup.scale("--once")[0])["overdue"] and r,
        timeout=30,
        interval=0.5,
        what="the pending jobs to be overdue",
    )
    assert overdue["cancelled"] == 0 and len(overdue["overdue"]) == 2, overdue
    # The work goes elsewhere: the overdue jobs are no longer needed.
    collect(rabbit, setup.queue, 100, timeout=30)
    (emptied,) = setup.scale("--once")
    assert (emptied["desired"], emptied["cancelled"]) == (0, 2), emptied
    assert sorted(emptied["overdue"]) == sorted(j.job_id for j in jobs)
    states = {j.state for j in jobs_of(slurm, setup)}
    assert states == {JobState.CANCELLED}, jobs_of(slurm, setup)


def test_two_runs_at_the_same_moment_submit_once(
    slurm_setup: Callable[..., Setup], rabbit: Transport, slurm: SlurmCluster
) -> None:
    setup = slurm_setup(
        scaler={"max_jobs": 2, "messages_per_job": 10, "max_pending": 2},
        service={"idle_timeout": 2},
    )
    rabbit.publish_many(work(setup.queue, 50))
    argv = [
        sys.executable,
        "-m",
        "zhpc",
        "--config",
        str(setup.config),
        "scale",
        "--once",
        "--json",
        "-s",
        setup.service,
    ]
    procs = [
        subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=setup.env
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    assert [code for code, _, _ in results] == [0, 0], results
    submitted = sum(
        json.loads(line)["submitted"] for _, out, _ in results for line in out.splitlines()
    )
    assert submitted == 2, results
    assert len({j.array_job_id for j in jobs_of(slurm, setup)}) == 1


def test_a_service_whose_jobs_die_at_start_stops_being_submitted(
    slurm_setup: Callable[..., Setup], rabbit: Transport, slurm: SlurmCluster
) -> None:
    setup = slurm_setup(
        cls="DiesAtStart", scaler={"max_jobs": 1, "messages_per_job": 1, "crash_limit": 3}
    )
    rabbit.publish_many(work(setup.queue, 10))
    submissions, last = 0, {}
    for _ in range(6):
        proc = setup.zhpc("scale", "--once", "--json", "-s", setup.service)
        assert proc.returncode == 0, proc.stderr
        last = json.loads(proc.stdout)
        submissions += last["submitted"]
        if last["crash_looping"]:
            break
        wait_until(
            lambda: not alive(slurm, setup),
            timeout=60,
            interval=0.5,
            what="the crashing job to end",
        )
    assert submissions == 3 and last["crash_looping"], (last, setup.logs())
    assert "crash-looping service" in last["reason"] and last["submitted"] == 0
    assert "ERROR" in proc.stderr and "is crash-looping: 3 jobs in a row failed" in proc.stderr
    assert {j.state for j in jobs_of(slurm, setup)} == {JobState.FAILED}
    (still,) = setup.scale("--once")
    assert still["submitted"] == 0 and still["crash_looping"]
    assert len(jobs_of(slurm, setup)) == 3
    reset = setup.zhpc("scale", "--reset", "-s", setup.service)
    assert reset.returncode == 0, reset.stderr
    (retried,) = setup.scale("--once")
    assert retried["submitted"] == 1 and not retried["crash_looping"], retried


def test_without_the_slurm_commands_the_cycle_fails_clearly_and_submits_nothing(
    slurm_setup: Callable[..., Setup],
    rabbit: Transport,
    slurm: SlurmCluster,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    setup = slurm_setup(scaler={"max_jobs": 2})
    rabbit.publish_many(work(setup.queue, 20))
    env = {**setup.env, "PATH": str(tmp_path_factory.mktemp("empty-path"))}
    proc = setup.zhpc("scale", "--once", "--json", "-s", setup.service, env=env)
    assert proc.returncode == 1 and proc.stdout == "", proc
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "cannot list jobs: squeue not found" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert jobs_of(slurm, setup) == []

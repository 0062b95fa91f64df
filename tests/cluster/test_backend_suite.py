"""One suite, every backend (local, slurm, ssh, slurmrestd, drmaa) against its real scheduler.

What zhpc relies on from any scheduler: an argv runs literally, an array's
tasks know their index (through :mod:`zhpc.jobenv`, as ``zhpc wrap`` and the
services read it), one listing is one scheduler call, cancel (also
pending-only, as the scaler uses it), exit codes and signals, the time limit
reached after the drain warning, and bad input refused with a one-line error.
"""

from __future__ import annotations

import json
import signal
import sys
import textwrap
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from testsupport import ARGV_DUMP, jobs_finished, wait_until

from zhpc.cluster import JobSpec, JobState
from zhpc.errors import ClusterError

if TYPE_CHECKING:
    from conftest import Backend

#: Inside a job: who am I, as zhpc.jobenv sees it; written to DIR/<task>.json.
WHOAMI = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from zhpc.jobenv import JobEnvironment
    env = JobEnvironment.from_environ()
    task = env.array_task_id
    Path(sys.argv[1], f"{task}.json").write_text(json.dumps(
        [env.scheduler, env.job_id, env.array_job_id, task, env.end_time() is not None]))
    """
)

#: Drains on the scheduler's warning signal or the job's end time, as a service does.
DRAINER = textwrap.dedent(
    """
    import sys, time
    from zhpc.jobenv import Drain, JobEnvironment
    with Drain(job=JobEnvironment.from_environ()) as drain:
        while not drain.should_drain(grace=float(sys.argv[2])):
            time.sleep(0.2)
    open(sys.argv[1], "w").write(drain.reason or "")
    """
)


def test_argv_runs_literally_and_is_listed(
    backend: Backend, unique_name: str, tmp_path: Path
) -> None:
    pwned = Path(f"/tmp/zhpc-pwned-{uuid.uuid4().hex[:8]}")
    args = [f'"; touch {pwned}', f"$(touch {pwned})", "a  b", "$HOME", "*", "it's"]
    out = tmp_path / "argv.json"
    job_id = backend.cluster.submit(
        JobSpec(
            name=unique_name,
            argv=[sys.executable, "-c", ARGV_DUMP, str(out), *args],
            time_limit="00:05:00",
            workdir=tmp_path,
            comment="zhpc suite",
        )
    )
    (info,) = wait_until(jobs_finished(backend.cluster, unique_name, 1), timeout=120,
                         what=f"{backend.name} job")  # fmt: skip
    assert (info.job_id, info.state, info.exit_code) == (job_id, JobState.COMPLETED, 0)
    assert info.node
    if backend.comments:
        assert info.comment == "zhpc suite"
    assert json.loads(out.read_text()) == args
    assert not pwned.exists()


def test_array_tasks_know_their_index_and_one_listing_is_one_call(
    backend: Backend, unique_name: str, tmp_path: Path
) -> None:
    job_id = backend.cluster.submit(
        JobSpec(name=unique_name, argv=[sys.executable, "-c", WHOAMI, str(tmp_path)], array=4,
                time_limit="00:05:00", workdir=tmp_path, env={"PYTHONPATH": sys.path[0]})
    )  # fmt: skip
    before = dict(backend.calls) if backend.calls is not None else None
    listed = backend.cluster.jobs(unique_name)
    if before is not None:
        assert sum(backend.calls.values()) == sum(before.values()) + 1
    assert sorted(j.job_id for j in listed) == [f"{job_id}_{i}" for i in range(4)]
    done = wait_until(jobs_finished(backend.cluster, unique_name, 4), timeout=120,
                      what=f"{backend.name} array tasks")  # fmt: skip
    assert {j.state for j in done} == {JobState.COMPLETED}
    assert {(j.array_job_id, j.array_task_id) for j in done} == {(job_id, i) for i in range(4)}
    for task in range(4):
        scheduler, seen_id, array_id, seen_task, has_end = json.loads(
            (tmp_path / f"{task}.json").read_text()
        )
        assert (array_id, seen_task, has_end) == (job_id, task, True)
        assert scheduler in ("local", "slurm", "gridengine") and seen_id


def test_cancel_running_and_pending_only(
    backend: Backend, unique_name: str, tmp_path: Path
) -> None:
    cluster = backend.cluster
    running = cluster.submit(JobSpec(name=unique_name, argv=["sleep", "300"],
                                     time_limit="00:10:00", workdir=tmp_path))  # fmt: skip
    wait_until(lambda: [j for j in cluster.jobs(unique_name) if j.state is JobState.RUNNING],
               timeout=120, what=f"{backend.name} job to run")  # fmt: skip
    cluster.cancel([running], pending_only=True)  # the scaler never stops a running job
    held = None
    if backend.holds:
        held = cluster.submit(JobSpec(name=unique_name, argv=["true"], array=2,
                                      extra_args=["--hold"], workdir=tmp_path))  # fmt: skip
        cluster.cancel([f"{held}_1"], pending_only=True)
    states = {j.job_id: j.state for j in cluster.jobs(unique_name)}
    assert states[running] is JobState.RUNNING
    if held is not None:
        assert states[f"{held}_0"] is JobState.PENDING
        wait_until(lambda: {j.job_id: j.state for j in cluster.jobs(unique_name)}.get(
            f"{held}_1", JobState.CANCELLED) is JobState.CANCELLED, timeout=60,
            what="the held task to be cancelled")  # fmt: skip
        cluster.cancel([held])
    cluster.cancel([running])
    cluster.cancel([running])  # twice: not an error
    wait_until(lambda: {j.job_id: j.state for j in cluster.jobs(unique_name)}.get(running)
               is JobState.CANCELLED, timeout=120,
               what=lambda: f"cancel; jobs: {cluster.jobs(unique_name)}")  # fmt: skip


def test_exit_codes_and_signals(backend: Backend, unique_name: str, tmp_path: Path) -> None:
    cluster = backend.cluster
    failed = cluster.submit(JobSpec(name=unique_name, argv=["sh", "-c", "exit 3"],
                                    time_limit="00:05:00", workdir=tmp_path))  # fmt: skip
    killed = cluster.submit(JobSpec(name=unique_name, argv=["sh", "-c", "kill -KILL $$"],
                                    time_limit="00:05:00", workdir=tmp_path))  # fmt: skip
    jobs = {j.job_id: j for j in wait_until(jobs_finished(cluster, unique_name, 2), timeout=120,
                                            what=f"{backend.name} jobs")}  # fmt: skip
    assert (jobs[failed].state, jobs[failed].exit_code) == (JobState.FAILED, 3)
    assert jobs[killed].state is JobState.FAILED
    assert (jobs[killed].signal, jobs[killed].exit_code) == (signal.SIGKILL, 128 + 9)


def test_time_limit_drains_then_times_out(
    backend: Backend, unique_name: str, tmp_path: Path
) -> None:
    if backend.minute_limits and backend.name != "slurmrestd":
        pytest.skip("Slurm limits are whole minutes: its timeout is tested in test_cluster_slurm")
    limit, warning = (60, 30) if backend.minute_limits else (8, 4)
    reason = tmp_path / "reason"
    cluster = backend.cluster
    drained = cluster.submit(JobSpec(
        name=unique_name, argv=[sys.executable, "-c", DRAINER, str(reason), "3"],
        time_limit=limit, signal=f"B:USR1@{warning}", workdir=tmp_path,
        env={"PYTHONPATH": sys.path[0]}))  # fmt: skip
    stuck = cluster.submit(JobSpec(name=unique_name, argv=["sleep", "600"], time_limit=limit,
                                   workdir=tmp_path))  # fmt: skip
    jobs = {j.job_id: j for j in wait_until(jobs_finished(cluster, unique_name, 2),
                                            timeout=limit + 120, interval=1,
                                            what=f"{backend.name} time limit")}  # fmt: skip
    assert jobs[drained].state is JobState.COMPLETED, reason.read_text() if reason.exists() else ""
    assert reason.read_text() in ("received SIGUSR1", "job end time within 3 s")
    assert jobs[stuck].state is JobState.TIMEOUT


def test_bad_input_is_one_line_cluster_error(backend: Backend, unique_name: str) -> None:
    with pytest.raises(ClusterError) as refused:
        backend.cluster.cancel(["1; rm -rf /"])
    assert "\n" not in str(refused.value)
    if backend.name == "local":
        return  # no partitions or queues
    with pytest.raises(ClusterError) as refused:
        backend.cluster.submit(JobSpec(name=unique_name, argv=["true"],
                                       partition="no-such-partition"))  # fmt: skip
    message = str(refused.value)
    assert "\n" not in message and ("partition" in message.lower() or "queue" in message.lower())

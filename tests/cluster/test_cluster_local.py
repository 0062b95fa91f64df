"""The local backend: real detached processes, tracked in files under the job workdir."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from testsupport import ARGV_DUMP, jobs_finished, signal_storm, wait_until

from zhpc.cluster import JobSpec, JobState, get_cluster
from zhpc.cluster.local import LocalCluster
from zhpc.config import ClusterConfig
from zhpc.errors import ClusterError
from zhpc.procinfo import start_time as process_start_time


@pytest.fixture
def local(tmp_path: Path):
    cluster = LocalCluster(tmp_path / "jobs", kill_wait=1.0)
    yield cluster
    running = [j.job_id for j in cluster.jobs("") if not j.state.finished]
    cluster.cancel(running)


def test_get_cluster_builds_the_local_backend_under_the_job_workdir(tmp_path: Path) -> None:
    cluster = get_cluster(ClusterConfig(backend="local", workdir=tmp_path))
    assert isinstance(cluster, LocalCluster) and cluster.root == tmp_path / "local"


def test_argv_runs_literally_and_completes(
    local: LocalCluster, unique_name: str, tmp_path: Path
) -> None:
    args = ['"; touch /tmp/zhpc-pwned-local', "$HOME", "a  b", "*"]
    out = tmp_path / "argv.json"
    job_id = local.submit(
        JobSpec(name=unique_name, argv=[sys.executable, "-c", ARGV_DUMP, str(out), *args])
    )
    (info,) = wait_until(jobs_finished(local, unique_name, 1), timeout=30, what="the job")
    assert (info.job_id, info.state, info.exit_code) == (job_id, JobState.COMPLETED, 0)
    assert json.loads(out.read_text()) == args
    assert not Path("/tmp/zhpc-pwned-local").exists()


def test_failure_exit_code_output_env_and_workdir(
    local: LocalCluster, unique_name: str, tmp_path: Path
) -> None:
    script = '#!/bin/sh\necho "$PWD $ZHPC_JOB_ID $GREETING"\necho oops >&2\nexit 7\n'
    job_id = local.submit(
        JobSpec(
            name=unique_name,
            script=script,
            workdir=tmp_path,
            output=tmp_path / "%j.out",
            error=tmp_path / "%j.err",
            env={"GREETING": "hi there"},
            comment="why",
        )
    )
    (info,) = wait_until(jobs_finished(local, unique_name, 1), timeout=30, what="the job")
    assert (info.state, info.exit_code, info.reason) == (JobState.FAILED, 7, "NonZeroExitCode")
    assert info.comment == "why"
    assert (tmp_path / f"{job_id}.out").read_text() == f"{tmp_path} {job_id} hi there\n"
    assert (tmp_path / f"{job_id}.err").read_text() == "oops\n"


def test_array_tasks_get_their_index(local: LocalCluster, unique_name: str, tmp_path: Path) -> None:
    job_id = local.submit(
        JobSpec(
            name=unique_name,
            argv=["sh", "-c", 'echo "$ZHPC_ARRAY_JOB_ID $ZHPC_ARRAY_TASK_ID"'],
            array=3,
            output=tmp_path / "%A_%a.out",
        )
    )
    jobs = wait_until(jobs_finished(local, unique_name, 3), timeout=30, what="the tasks")
    assert [j.job_id for j in jobs] == [f"{job_id}_{i}" for i in range(3)]
    assert {j.state for j in jobs} == {JobState.COMPLETED}
    for task in range(3):
        assert (tmp_path / f"{job_id}_{task}.out").read_text() == f"{job_id} {task}\n"


def test_time_limit_sends_early_signal_then_term(
    local: LocalCluster, unique_name: str, tmp_path: Path
) -> None:
    # The job logs each signal; USR1 comes 1 s before the 2 s limit, TERM at the limit.
    program = textwrap.dedent(
        """
        import signal, sys, time
        log = open(sys.argv[1], "a", buffering=1)
        def note(signum, frame):
            log.write(signal.Signals(signum).name + "\\n")
            if signum == signal.SIGTERM:
                sys.exit(0)
        signal.signal(signal.SIGUSR1, note)
        signal.signal(signal.SIGTERM, note)
        while True:
            time.sleep(0.05)
        """
    )
    log = tmp_path / "signals.log"
    local.submit(
        JobSpec(
            name=unique_name,
            argv=[sys.executable, "-c", program, str(log)],
            time_limit=2,
            signal="B:USR1@1",
        )
    )
    (info,) = wait_until(jobs_finished(local, unique_name, 1), timeout=30, what="the timeout")
    assert (info.state, info.reason) == (JobState.TIMEOUT, "TimeLimit")
    assert log.read_text().split() == ["SIGUSR1", "SIGTERM"]


def test_job_ignoring_term_is_killed_after_kill_wait(local: LocalCluster, unique_name: str) -> None:
    local.submit(
        JobSpec(name=unique_name, argv=["sh", "-c", "trap '' TERM; sleep 60"], time_limit=1)
    )
    (info,) = wait_until(jobs_finished(local, unique_name, 1), timeout=30, what="the kill")
    assert info.state is JobState.TIMEOUT and info.signal == signal.SIGKILL


def test_another_process_lists_and_cancels(local: LocalCluster, unique_name: str) -> None:
    job_id = local.submit(JobSpec(name=unique_name, argv=["sleep", "60"], array=2))
    wait_until(
        lambda: all(j.state is JobState.RUNNING for j in local.jobs(unique_name)),
        timeout=30,
        what="the tasks to run",
    )
    code = (
        "import sys; from pathlib import Path; from zhpc.cluster.local import LocalCluster; "
        "c = LocalCluster(Path(sys.argv[1])); "
        "print(len(c.jobs(sys.argv[2]))); c.cancel([sys.argv[3]])"
    )
    other = subprocess.run(
        [sys.executable, "-c", code, str(local.root), unique_name, job_id],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert other.stdout.strip() == "2"
    jobs = wait_until(jobs_finished(local, unique_name, 2), timeout=30, what="the cancel")
    assert {j.state for j in jobs} == {JobState.CANCELLED}


def test_cancel_one_array_task_only(local: LocalCluster, unique_name: str) -> None:
    job_id = local.submit(JobSpec(name=unique_name, argv=["sleep", "60"], array=2))
    local.cancel([f"{job_id}_1"])
    wait_until(
        lambda: [j for j in local.jobs(unique_name) if j.state is JobState.CANCELLED],
        timeout=30,
        what="task 1 to be cancelled",
    )
    states = {j.job_id: j.state for j in local.jobs(unique_name)}
    assert states[f"{job_id}_1"] is JobState.CANCELLED
    assert states[f"{job_id}_0"] in (JobState.PENDING, JobState.RUNNING)


def test_a_storm_of_sigterm_still_cancels(local: LocalCluster, unique_name: str) -> None:
    """Seen in CI: ``cancel`` twice left a job RUNNING; the handler deadlocked on an Event."""
    job_id = local.submit(JobSpec(name=unique_name, argv=["sleep", "300"]))
    wait_until(
        lambda: local.jobs(unique_name)[0].state is JobState.RUNNING, timeout=30, what="running"
    )
    supervisor = json.loads((local.root / job_id / "pid").read_text())["pid"]
    assert signal_storm(supervisor, signal.SIGTERM) > 0
    (info,) = wait_until(jobs_finished(local, unique_name, 1), timeout=30, what="the cancel")
    assert info.state is JobState.CANCELLED


def test_killed_supervisor_is_reported_as_node_fail(local: LocalCluster, unique_name: str) -> None:
    job_id = local.submit(JobSpec(name=unique_name, argv=["sleep", "60"]))
    wait_until(
        lambda: local.jobs(unique_name)[0].state is JobState.RUNNING, timeout=30, what="running"
    )
    supervisor = json.loads((local.root / job_id / "pid").read_text())["pid"]
    os.kill(supervisor, signal.SIGKILL)
    (info,) = wait_until(jobs_finished(local, unique_name, 1), timeout=30, what="node_fail")
    assert info.state is JobState.NODE_FAIL and info.reason == "supervisor process gone"
    # Cancelling it kills the orphaned command, which no supervisor watches any more.
    child = json.loads((local.root / job_id / "state.json").read_text())["child_pid"]
    local.cancel([job_id])
    wait_until(lambda: process_start_time(child) is None, timeout=30, what="the orphan to die")


def test_unknown_command_fails_cleanly(local: LocalCluster, unique_name: str) -> None:
    local.submit(JobSpec(name=unique_name, argv=["/nonexistent/zhpc-program"]))
    (info,) = wait_until(jobs_finished(local, unique_name, 1), timeout=30, what="the failure")
    assert info.state is JobState.FAILED and info.exit_code == 127
    assert "cannot start" in info.reason


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"argv": []}, "argv"),
        ({"argv": ["a"], "script": "#!/bin/sh\n"}, "exactly one"),
        ({"script": "echo no shebang"}, "#!"),
        ({"argv": ["a"], "array": 0}, "array"),
        ({"argv": ["a"], "env": {"BAD NAME": "x"}}, "environment"),
        ({"argv": ["a"], "time_limit": "soon"}, "time limit"),
        ({"argv": ["a"], "signal": "B:USR1@x"}, "signal"),
        ({"argv": ["a"], "signal": "B:NOSUCH@10"}, "signal"),
    ],
)
def test_bad_specs_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ClusterError, match=message):
        JobSpec(name="zhpc-bad", **kwargs)

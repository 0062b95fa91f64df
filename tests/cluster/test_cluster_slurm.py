"""The slurm backend against the real 3-node test cluster, plus its parsing."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import pytest
from testsupport import ARGV_DUMP, jobs_finished, wait_until

from zhpc.cluster import JobSpec, JobState
from zhpc.cluster.slurm import (
    SlurmCluster,
    batch_script,
    normalise_state,
    parse_sbatch_output,
    parse_squeue_output,
    sbatch_argv,
)
from zhpc.errors import ClusterError

# -- parsing and command building (no cluster needed) ------------------------------


@pytest.mark.parametrize(
    ("slurm", "zhpc"),
    [
        ("PENDING", JobState.PENDING),
        ("REQUEUED", JobState.PENDING),
        ("RUNNING", JobState.RUNNING),
        ("COMPLETING", JobState.RUNNING),
        ("COMPLETED", JobState.COMPLETED),
        ("FAILED", JobState.FAILED),
        ("TIMEOUT", JobState.TIMEOUT),
        ("PREEMPTED", JobState.PREEMPTED),
        ("NODE_FAIL", JobState.NODE_FAIL),
        ("BOOT_FAIL", JobState.NODE_FAIL),
        ("CANCELLED", JobState.CANCELLED),
        ("CANCELLED by 0", JobState.CANCELLED),
        ("OUT_OF_MEMORY", JobState.OUT_OF_MEMORY),
        ("RUNNING+", JobState.RUNNING),
        ("SOMETHING_NEW", JobState.UNKNOWN),
    ],
)
def test_slurm_states_are_normalised(slurm: str, zhpc: JobState) -> None:
    assert normalise_state(slurm) is zhpc


def test_squeue_lines_parse_with_exit_status_signal_and_array_ids() -> None:
    sep = "\x1f"
    lines = [
        # Real squeue --Format output shapes from Slurm 22.05 (wait status in exit_code).
        sep.join(["8", "7", "0", "FAILED", "NonZeroExitCode", "768", "n1",
                  "2026-11-22T03:27:39", "2026-11-22T03:27:42", "0", "zhpc-x|y", "a b|c", ""]),
        sep.join(["11", "11", "N/A", "CANCELLED", "None", "15", "n2",
                  "2026-11-22T03:27:49", "2026-11-22T03:27:50", "1", "zhpc-y", "(null)", ""]),
        sep.join(["12", "12", "N/A", "PENDING", "Priority", "0", "",
                  "N/A", "N/A", "0", "zhpc-z", "", ""]),
    ]  # fmt: skip
    failed, cancelled, pending = parse_squeue_output("\n".join(lines) + "\n")
    assert (failed.job_id, failed.array_job_id, failed.array_task_id) == ("7_0", "7", 0)
    assert (failed.state, failed.exit_code, failed.signal) == (JobState.FAILED, 3, None)
    assert (failed.name, failed.comment, failed.reason) == ("zhpc-x|y", "a b|c", "NonZeroExitCode")
    assert cancelled.job_id == "11" and cancelled.array_task_id is None
    assert (cancelled.signal, cancelled.exit_code, cancelled.restart_count) == (15, 143, 1)
    assert cancelled.comment is None and cancelled.reason == ""
    assert pending.state is JobState.PENDING and pending.reason == "Priority"
    assert pending.node is None and pending.exit_code is None and pending.start_time is None


def test_garbled_squeue_and_sbatch_output_become_cluster_errors() -> None:
    with pytest.raises(ClusterError, match="cannot parse squeue"):
        parse_squeue_output("12 RUNNING\n")
    with pytest.raises(ClusterError, match="no job id"):
        parse_sbatch_output("sbatch: error: something\n")
    assert parse_sbatch_output("42;cluster\n") == "42"


def test_argv_job_script_quotes_every_argument_and_execs() -> None:
    spec = JobSpec(name="zhpc-q", argv=["prog", "a b", "'; rm -rf /'", "$HOME"], env={"X": "1 2"})
    script = batch_script(spec)
    assert script.splitlines()[0] == "#!/bin/bash"
    assert "export X='1 2'" in script
    assert script.splitlines()[-1] == "exec prog 'a b' ''\"'\"'; rm -rf /'\"'\"'' '$HOME'"


def test_sbatch_argv_carries_the_spec() -> None:
    spec = JobSpec(
        name="zhpc-a", argv=["true"], time_limit=90, partition="p", cpus=2, memory="1G",
        array=4, comment="c", signal="B:USR1@60", extra_args=["--exclusive"],
    )  # fmt: skip
    argv = sbatch_argv(spec, site_args=["--qos=low"])
    assert argv[:3] == ["sbatch", "--parsable", "--job-name=zhpc-a"]
    for option in ("--time=0-00:01:30", "--partition=p", "--cpus-per-task=2", "--mem=1G",
                   "--array=0-3", "--comment=c", "--signal=B:USR1@60"):  # fmt: skip
        assert option in argv
    assert argv[-2:] == ["--qos=low", "--exclusive"]


# -- against the real cluster ------------------------------------------------------


@pytest.fixture
def slurm(slurm_up: None) -> SlurmCluster:
    return SlurmCluster(cache_seconds=0)


@pytest.mark.slurm
def test_submit_runs_argv_literally_and_lists_it(
    slurm: SlurmCluster, unique_name: str, tmp_path: Path
) -> None:
    pwned = Path(f"/tmp/zhpc-pwned-{uuid.uuid4().hex[:8]}")
    args = [f'"; touch {pwned}', "$(touch " + str(pwned) + ")", "a  b", "$HOME", "*"]
    out = tmp_path / "argv.json"
    spec = JobSpec(
        name=unique_name,
        argv=[sys.executable, "-c", ARGV_DUMP, str(out), *args],
        time_limit="00:02:00",
        workdir=tmp_path,
        output=tmp_path / "%j.out",
        comment="zhpc test",
        env={"ZHPC_TEST_VALUE": "x y"},
    )
    job_id = slurm.submit(spec)
    assert job_id.isdigit()
    (info,) = wait_until(jobs_finished(slurm, unique_name, 1), timeout=60, what="the job")
    assert (info.job_id, info.state, info.exit_code) == (job_id, JobState.COMPLETED, 0)
    assert info.comment == "zhpc test" and info.node in ("n1", "n2", "n3")
    assert json.loads(out.read_text()) == args
    assert not pwned.exists()


@pytest.mark.slurm
def test_failed_job_reports_its_exit_code(
    slurm: SlurmCluster, unique_name: str, tmp_path: Path
) -> None:
    script = '#!/bin/bash\n#SBATCH --time=00:02:00\necho "$ZHPC_TEST_VALUE"\nexit 3\n'
    job_id = slurm.submit(
        JobSpec(
            name=unique_name, script=script, output=tmp_path / "out", env={"ZHPC_TEST_VALUE": "v w"}
        )
    )
    (info,) = wait_until(jobs_finished(slurm, unique_name, 1), timeout=60, what="the job")
    assert (info.job_id, info.state, info.exit_code) == (job_id, JobState.FAILED, 3)
    assert info.reason == "NonZeroExitCode"
    assert (tmp_path / "out").read_text() == "v w\n"


@pytest.mark.slurm
def test_array_is_one_sbatch_call_and_one_squeue_per_listing(
    slurm: SlurmCluster, unique_name: str, tmp_path: Path
) -> None:
    job_id = slurm.submit(
        JobSpec(
            name=unique_name,
            argv=["bash", "-c", 'echo "$SLURM_ARRAY_TASK_ID"'],
            array=6,
            time_limit="00:02:00",
            output=tmp_path / "%A_%a.out",
        )
    )
    assert slurm.calls["sbatch"] == 1
    before = slurm.calls.get("squeue", 0)
    jobs = slurm.jobs(unique_name)
    assert slurm.calls["squeue"] == before + 1
    assert sorted(j.job_id for j in jobs) == sorted(f"{job_id}_{i}" for i in range(6))
    done = wait_until(jobs_finished(slurm, unique_name, 6), timeout=90, what="the array tasks")
    assert {j.state for j in done} == {JobState.COMPLETED}
    for task in range(6):
        assert (tmp_path / f"{job_id}_{task}.out").read_text() == f"{task}\n"


@pytest.mark.slurm
def test_cancel_a_running_job(slurm: SlurmCluster, unique_name: str) -> None:
    job_id = slurm.submit(
        JobSpec(name=unique_name, argv=["sleep", "300"], time_limit=600, output="/dev/null")
    )
    wait_until(
        lambda: [j for j in slurm.jobs(unique_name) if j.state is JobState.RUNNING],
        timeout=60,
        what="the job to run",
    )
    slurm.cancel([job_id])
    (info,) = wait_until(jobs_finished(slurm, unique_name, 1), timeout=60, what="the cancel")
    assert info.state is JobState.CANCELLED and info.scheduler_state == "CANCELLED"
    slurm.cancel([job_id])  # cancelling a finished job is not an error


@pytest.mark.slurm
def test_time_limit_gives_timeout(slurm: SlurmCluster, unique_name: str) -> None:
    # Slurm counts limits in whole minutes: this takes about 60-70 s (KillWait is 5 s).
    slurm.submit(JobSpec(name=unique_name, argv=["sleep", "600"], time_limit=1, output="/dev/null"))
    (info,) = wait_until(
        jobs_finished(slurm, unique_name, 1), timeout=150, interval=1, what="timeout"
    )
    assert info.state is JobState.TIMEOUT
    assert info.scheduler_state == "TIMEOUT"


@pytest.mark.slurm
def test_bad_requests_become_one_line_cluster_errors(slurm: SlurmCluster, unique_name: str) -> None:
    with pytest.raises(ClusterError, match=r"sbatch on this machine failed: .*[Pp]artition"):
        slurm.submit(JobSpec(name=unique_name, argv=["true"], partition="no-such-partition"))
    with pytest.raises(ClusterError, match="not a Slurm job id"):
        slurm.cancel(["1; rm -rf /"])

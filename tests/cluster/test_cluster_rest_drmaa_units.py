"""slurmrestd and DRMAA backends without a scheduler: request building, parsing, refusals."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from zhpc.cluster import JobSpec, JobState
from zhpc.cluster.drmaa import DRMAACluster, job_script, job_template
from zhpc.cluster.gridengine import parse_accounting_line, parse_qstat
from zhpc.cluster.slurmrest import (
    SlurmRestCluster,
    expand_tasks,
    job_properties,
    memory_mb,
    parse_jobs,
    read_token,
)
from zhpc.errors import ClusterError

# -- slurmrestd --------------------------------------------------------------------


def test_token_file_must_be_private_and_is_never_in_an_error(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("SLURM_JWT=eyJsecret.part.sig\n")
    token.chmod(0o644)
    with pytest.raises(ClusterError, match="readable by others") as refused:
        read_token(token)
    assert "eyJ" not in str(refused.value)
    token.chmod(0o600)
    assert read_token(token) == "eyJsecret.part.sig"
    assert read_token(None, {"SLURM_JWT": "eyJenv"}) == "eyJenv"
    with pytest.raises(ClusterError, match="no usable token in SLURM_JWT"):
        read_token(None, {})


def test_refused_token_is_one_line_without_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A port nothing listens on: the connection error is retried, then reported.
    cluster = SlurmRestCluster("http://127.0.0.1:9", environ={"SLURM_JWT": "eyJtopsecret"},
                               attempts=2)  # fmt: skip
    with caplog.at_level(logging.DEBUG), pytest.raises(ClusterError) as failed:
        cluster.jobs()
    assert "\n" not in str(failed.value) and "127.0.0.1:9" in str(failed.value)
    assert "eyJtopsecret" not in caplog.text + str(failed.value)


def test_job_properties_carry_the_spec_and_drop_slurm_and_token_variables() -> None:
    spec = JobSpec(name="zhpc-a", argv=["true"], time_limit=90, partition="p", cpus=2,
                   memory="2G", array=4, comment="c", signal="B:USR1@60",
                   workdir="/w", output="/w/%A_%a.out", extra_args=["--hold"])  # fmt: skip
    environ = {"PATH": "/bin", "SLURM_JWT": "eyJx", "SLURM_JOB_ID": "7", "HOME": "/root"}
    job = job_properties(spec, environ, ["--qos=low"])
    assert job["environment"] == {"PATH": "/bin", "HOME": "/root"}
    assert (job["time_limit"], job["memory_per_node"], job["array"]) == (2, 2048, "0-3")
    assert (job["signal"], job["hold"], job["qos"]) == ("USR1@60", True, "low")
    assert job["current_working_directory"] == "/w" and job["cpus_per_task"] == 2
    with pytest.raises(ClusterError, match="unsupported sbatch argument '--wrap=x'"):
        job_properties(JobSpec(name="zhpc-b", argv=["a"], extra_args=["--wrap=x"]), {})
    with pytest.raises(ClusterError, match="bad memory"):
        memory_mb("lots")


def test_pending_array_records_are_expanded_and_other_users_dropped() -> None:
    assert list(expand_tasks("0-3,7,10-14:2%4")) == [0, 1, 2, 3, 7, 10, 12, 14]
    records = [
        {"job_id": 9, "array_job_id": 9, "array_task_id": None, "array_task_string": "1-2",
         "job_state": "PENDING", "state_reason": "JobHeldUser", "exit_code": 0, "nodes": "",
         "start_time": 0, "end_time": 0, "name": "zhpc-x", "user_name": "me"},
        {"job_id": 10, "array_job_id": 9, "array_task_id": 0, "array_task_string": "",
         "job_state": "FAILED", "state_reason": "NonZeroExitCode", "exit_code": 768,
         "nodes": "n1", "start_time": 1796171600, "end_time": 1796171601, "name": "zhpc-x",
         "user_name": "me", "comment": "why"},
        {"job_id": 11, "array_job_id": 0, "array_task_id": None, "array_task_string": "",
         "job_state": "CANCELLED", "state_reason": "None", "exit_code": 15, "nodes": "n2",
         "start_time": 1, "end_time": 2, "name": "zhpc-y", "user_name": "me"},
        {"job_id": 12, "array_job_id": 0, "job_state": "RUNNING", "name": "zhpc-z",
         "user_name": "someone-else"},
    ]  # fmt: skip
    failed, pending1, pending2, cancelled = parse_jobs(records, "me")
    assert [pending1.job_id, pending2.job_id] == ["9_1", "9_2"]
    assert pending1.state is JobState.PENDING and pending1.reason == "JobHeldUser"
    assert (failed.job_id, failed.state, failed.exit_code, failed.comment) == (
        "9_0",
        JobState.FAILED,
        3,
        "why",
    )
    assert (cancelled.job_id, cancelled.signal, cancelled.exit_code) == ("11", 15, 143)
    assert cancelled.array_job_id is None and cancelled.reason == ""


# -- DRMAA -------------------------------------------------------------------------

QSTAT = """<?xml version='1.0'?>
<job_info><queue_info>
 <job_list state="running"><JB_job_number>3</JB_job_number><JB_name>zhpc-p</JB_name>
  <state>r</state><JAT_start_time>2026-12-02T00:42:20</JAT_start_time>
  <queue_name>zhpc.q@vm</queue_name><tasks>1</tasks></job_list>
</queue_info><job_info>
 <job_list state="pending"><JB_job_number>3</JB_job_number><JB_name>zhpc-p</JB_name>
  <state>qw</state><queue_name></queue_name><tasks>5-7:2</tasks></job_list>
 <job_list state="pending"><JB_job_number>4</JB_job_number><JB_name>zhpc-q</JB_name>
  <state>hqw</state><queue_name></queue_name></job_list>
 <job_list state="pending"><JB_job_number>5</JB_job_number><JB_name>zhpc-e</JB_name>
  <state>Eqw</state><queue_name></queue_name></job_list>
</job_info></job_info>"""


def test_qstat_xml_tasks_are_zero_based_and_states_mapped() -> None:
    running, five, seven, held, error = parse_qstat(QSTAT)
    assert (running.job_id, running.array_task_id, running.node) == ("3_0", 0, "vm")
    assert running.state is JobState.RUNNING and running.start_time is not None
    assert [five.job_id, seven.job_id] == ["3_4", "3_6"] and five.state is JobState.PENDING
    assert (held.job_id, held.state, held.reason) == ("4", JobState.PENDING, "held")
    assert error.state is JobState.FAILED
    with pytest.raises(ClusterError, match="cannot parse qstat"):
        parse_qstat("<job_info>")


def _line(
    job: str, task: int, failed: int, status: int, start: int, end: int, category: str = "-q zhpc.q"
) -> str:
    fields = (
        [
            "zhpc.q",
            "vm",
            "root",
            "root",
            "zhpc-j",
            job,
            "sge",
            "0",
            "1",
            str(start),
            str(end),
            str(failed),
            str(status),
        ]
        + ["0"] * 22
        + [str(task), "0", "0", "0", category, "0", "NONE", "0", "0"]
    )
    return ":".join(fields) + "\n"


@pytest.mark.parametrize(
    ("failed", "status", "runtime", "category", "cancelled", "state", "signal"),
    [
        (0, 0, 3, "-q zhpc.q", set(), JobState.COMPLETED, None),
        (0, 3, 3, "-q zhpc.q", set(), JobState.FAILED, None),
        (100, 137, 1, "-q zhpc.q", set(), JobState.FAILED, 9),
        (100, 137, 1, "-q zhpc.q", {"7"}, JobState.CANCELLED, 9),
        (100, 137, 8, "-l h_rt=8", set(), JobState.TIMEOUT, 9),
    ],
)
def test_accounting_lines_give_final_states(
    failed: int, status: int, runtime: int, category: str, cancelled: set[str],
    state: JobState, signal: int | None,
) -> None:  # fmt: skip
    parsed = parse_accounting_line(_line("7", 2, failed, status, 100, 100 + runtime, category),
                                   cancelled)  # fmt: skip
    assert parsed is not None
    owner, info = parsed
    assert (owner, info.job_id, info.array_job_id, info.array_task_id) == ("root", "7_1", "7", 1)
    assert (info.state, info.exit_code, info.signal) == (state, status, signal)
    assert parse_accounting_line("# Version: 8.1.9\n", set()) is None


def test_job_template_maps_limits_and_refuses_what_grid_engine_cannot_do(tmp_path: Path) -> None:
    spec = JobSpec(name="zhpc-t", argv=["prog", "a b"], time_limit=60, signal="B:USR1@10",
                   array=3, output="/o/%A_%a.out", extra_args=["--hold"], memory="1G",
                   env={"X": "1"})  # fmt: skip
    template = job_template(
        spec, tmp_path / "s.sh", {"PATH": "/bin", "JOB_ID": "3", "SGE_TASK_ID": "1"}, "zhpc.q"
    )
    assert template["nativeSpecification"] == (
        "-b y -shell no -q zhpc.q -l h_vmem=1G,h_rt=60,s_rt=50"
    )
    assert template["outputPath"] == ":/o/$JOB_ID_$TASK_ID.out" and template["joinFiles"]
    assert (template["bulk"], template["hold"]) == (3, True)
    assert template["jobEnvironment"] == {"PATH": "/bin"}
    assert "export ZHPC_GE_END_TIME=$(( $(date +%s) + 60 ))" in job_script(spec)
    assert job_script(spec).splitlines()[-1] == "exec prog 'a b'"
    for kwargs, message in [
        ({"signal": "B:TERM@10", "time_limit": 60}, "SIGUSR1 only"),
        ({"signal": "B:USR1@10"}, "needs a time limit"),
        ({"partition": "q; rm"}, "bad Grid Engine queue"),
        ({"extra_args": ["--exclusive"]}, "unsupported argument"),
        ({"cpus": 4}, "parallel environment"),
    ]:
        with pytest.raises(ClusterError, match=message):
            job_template(JobSpec(name="zhpc-t", argv=["a"], **kwargs), tmp_path / "s", {}, None)


def test_job_identity_from_grid_engine_variables() -> None:
    task = DRMAACluster.job_identity(
        {
            "JOB_ID": "12",
            "SGE_TASK_ID": "3",
            "JOB_NAME": "zhpc-n",
            "HOSTNAME": "vm",
            "ZHPC_GE_END_TIME": "1796172326",
        }
    )
    assert (task.scheduler, task.job_id, task.array_job_id, task.array_task_id) == (
        "gridengine",
        "12_2",
        "12",
        2,
    )
    single = DRMAACluster.job_identity({"JOB_ID": "13", "SGE_TASK_ID": "undefined"})
    assert (single.job_id, single.array_task_id) == ("13", None)
    assert DRMAACluster.job_end_time(task, {"ZHPC_GE_END_TIME": "1796172326"}) == 1796172326
    assert DRMAACluster.job_identity({"SGE_TASK_ID": "1"}) is None


def test_job_environment_finds_grid_engine_through_its_entry_point() -> None:
    from zhpc.jobenv import JobEnvironment

    env = JobEnvironment.from_environ(
        {"JOB_ID": "12", "SGE_TASK_ID": "1", "ZHPC_GE_END_TIME": "1796172326"}
    )
    assert (env.scheduler, env.job_id, env.array_task_id) == ("gridengine", "12_0", 0)
    assert env.end_time() == 1796172326 and env.slurm_job_id is None

"""zhpc.jobenv: which job we are in, when it ends, and drain on signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from testsupport import signal_storm, wait_until

from zhpc.jobenv import DRAIN_SIGNALS, Drain, JobEnvironment


def test_slurm_variables_are_read() -> None:
    env = JobEnvironment.from_environ(
        {
            "SLURM_JOB_ID": "42",
            "SLURM_ARRAY_JOB_ID": "40",
            "SLURM_ARRAY_TASK_ID": "2",
            "SLURM_RESTART_COUNT": "1",
            "SLURMD_NODENAME": "n2",
            "SLURM_JOB_NAME": "zhpc-svc",
        }
    )
    assert (env.scheduler, env.job_id, env.array_job_id, env.array_task_id) == (
        "slurm", "42", "40", 2,
    )  # fmt: skip
    assert (env.restart_count, env.node, env.job_name, env.in_job) == (1, "n2", "zhpc-svc", True)


def test_local_backend_variables_and_end_time() -> None:
    end = time.time() + 100
    env = JobEnvironment.from_environ(
        {"ZHPC_JOB_ID": "7_1", "ZHPC_ARRAY_JOB_ID": "7", "ZHPC_ARRAY_TASK_ID": "1",
         "ZHPC_JOB_END_TIME": f"{end:.3f}"}
    )  # fmt: skip
    assert (env.scheduler, env.job_id, env.array_task_id) == ("local", "7_1", 1)
    assert env.end_time() == pytest.approx(end, abs=0.01)
    assert 90 < env.remaining() <= 100.01


def test_outside_a_job_there_is_no_end_time() -> None:
    env = JobEnvironment.from_environ({})
    assert not env.in_job and env.end_time() is None and env.remaining() is None


@pytest.mark.parametrize("signum", DRAIN_SIGNALS, ids=lambda s: s.name)
def test_each_drain_signal_sets_the_flag(signum: signal.Signals) -> None:
    seen = []
    previous = signal.getsignal(signum)
    with Drain() as drain:
        drain.on_signal(seen.append)
        assert not drain.should_drain()
        os.kill(os.getpid(), signum)
        assert drain.wait(5)
        assert drain.should_drain() and drain.signal is signum and seen == [signum]
        assert drain.reason == f"received {signum.name}"
    assert signal.getsignal(signum) == previous


def test_second_sigint_interrupts() -> None:
    with Drain() as drain:
        os.kill(os.getpid(), signal.SIGINT)
        assert drain.wait(5)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # interrupted by the handler at once


def test_max_runtime_and_end_time_trigger_drain() -> None:
    drain = Drain(max_runtime=0.05)
    assert not drain.should_drain()
    wait_until(drain.should_drain, 5, 0.01, "the max runtime to pass")
    assert drain.reason == "max runtime reached"

    job = JobEnvironment.from_environ(
        {"ZHPC_JOB_ID": "1", "ZHPC_JOB_END_TIME": str(time.time() + 30)}
    )
    drain = Drain(job=job)
    assert not drain.should_drain(grace=10)
    assert drain.should_drain(grace=60) and drain.reason == "job end time within 60 s"


def test_a_subprocess_drains_on_sigusr1_from_outside(tmp_path: Path) -> None:
    program = textwrap.dedent(
        """
        from zhpc.jobenv import Drain
        drain = Drain().install()
        print("ready", flush=True)
        if drain.wait(30):
            print("drained", drain.signal.name, flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGUSR1)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert out == "drained SIGUSR1\n" and proc.returncode == 0


def test_a_storm_of_sigterm_drains_once_and_cleanly() -> None:
    """A handler re-entered by the next signal must neither deadlock nor recurse to death."""
    program = textwrap.dedent(
        """
        import sys, time
        from zhpc.jobenv import Drain
        drain = Drain().install()
        print("ready", flush=True)
        while not drain.should_drain():
            time.sleep(0.001)
        print("drained", drain.signal.name, flush=True)
        sys.stdin.read()  # keep the handler installed until the storm is over
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", program],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "ready\n"
        assert signal_storm(proc.pid, signal.SIGTERM) > 100
        out, err = proc.communicate(input="", timeout=30)
    finally:
        proc.kill()
    assert (out, proc.returncode) == ("drained SIGTERM\n", 0), err[-2000:]


def test_importing_jobenv_stays_cheap() -> None:
    heavy = "{'subprocess', 'msgspec', 'yaml'}"
    code = f"import sys, zhpc.jobenv; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_consumer_stops_at_the_first_of_max_runtime_and_the_job_end_minus_the_margin() -> None:
    from zhpc.jobenv import end_deadline

    end = f"{time.time() + 100:.3f}"
    job = JobEnvironment.from_environ({"ZHPC_JOB_ID": "7", "ZHPC_JOB_END_TIME": end})
    short = end_deadline(job, started=1000.0, now=1000.0, max_runtime=30.0, end_margin=15.0)
    assert short == 1030.0
    margin = end_deadline(job, started=1000.0, now=1000.0, max_runtime=None, end_margin=15.0)
    assert margin == pytest.approx(1085.0, abs=0.5)
    outside = JobEnvironment.from_environ({})
    assert end_deadline(outside, started=0.0, now=5.0, max_runtime=None, end_margin=15.0) is None


def test_stop_reason_names_the_end_deadline_or_the_idle_time() -> None:
    from zhpc.jobenv import poll_timeout, stop_reason

    assert stop_reason(now=10.0, end=20.0, last_activity=9.0, idle_timeout=5.0) is None
    assert stop_reason(now=20.0, end=20.0, last_activity=19.0, idle_timeout=5.0) == (
        "end of the job's time"
    )
    assert stop_reason(now=15.0, end=None, last_activity=9.5, idle_timeout=5.5) == "idle for 5.5 s"
    assert stop_reason(now=1e9, end=None, last_activity=0.0, idle_timeout=None) is None
    assert poll_timeout(10.0, wake=10.2, end=None) == pytest.approx(0.2)
    assert poll_timeout(10.0, wake=99.0, end=10.1) == pytest.approx(0.1)
    assert poll_timeout(10.0, wake=99.0, end=None) == 0.5
    assert poll_timeout(10.0, wake=9.0, end=None) == 0.0

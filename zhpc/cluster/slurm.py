"""Slurm through its command-line tools (``sbatch``, ``squeue``, ``scancel``).

The commands run through a :class:`~zhpc.cluster.runner.CommandRunner`: here
as local subprocesses, in :mod:`zhpc.cluster.ssh` on a login node. Everything else,
building the ``sbatch`` call and parsing ``squeue``, is shared.

Gentle on the controller: one ``squeue`` call lists all of this user's jobs
(zhpc's are picked out by name prefix afterwards) and is cached for a couple
of seconds. Commands are argument vectors, never shell strings; a batch
script goes to ``sbatch`` on stdin.

Inside a job, :meth:`SlurmCluster.job_identity` reads the ``SLURM_*``
variables Slurm sets and :meth:`SlurmCluster.job_end_time` asks ``squeue``
(through the same :class:`LocalRunner`) when the job will be stopped.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shlex
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from zhpc.cluster.base import (
    DEFAULT_NAME_PREFIX,
    Cluster,
    JobIdentity,
    JobInfo,
    JobSpec,
    JobState,
    format_time_limit,
)
from zhpc.cluster.runner import (
    CommandResult,
    CommandRunner,
    CommandTimeout,
    LocalRunner,
    TransientCommandError,
)
from zhpc.errors import ClusterError

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.config import ClusterConfig

log = logging.getLogger(__name__)

#: Field separator in ``squeue --Format`` output: a control character no name or comment uses.
_SEP = "\x1f"
_SQUEUE_FIELDS = (
    "JobID",
    "ArrayJobID",
    "ArrayTaskID",
    "State",
    "Reason",
    "exit_code",
    "NodeList",
    "StartTime",
    "EndTime",
    "RestartCnt",
    "Name",
    "Comment",
)
_JOB_ID = re.compile(r"\d+(?:_\d+)?\Z")

#: Slurm job states (squeue/sacct spelling) mapped to zhpc's.
SLURM_STATES: dict[str, JobState] = {
    "PENDING": JobState.PENDING,
    "REQUEUED": JobState.PENDING,
    "REQUEUE_FED": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING,
    "RESV_DEL_HOLD": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "CONFIGURING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "SUSPENDED": JobState.RUNNING,
    "STOPPED": JobState.RUNNING,
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "SPECIAL_EXIT": JobState.FAILED,
    "TIMEOUT": JobState.TIMEOUT,
    "DEADLINE": JobState.TIMEOUT,
    "PREEMPTED": JobState.PREEMPTED,
    "NODE_FAIL": JobState.NODE_FAIL,
    "BOOT_FAIL": JobState.NODE_FAIL,
    "CANCELLED": JobState.CANCELLED,
    "REVOKED": JobState.CANCELLED,
    "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY,
}

#: stderr fragments of Slurm client errors that are worth retrying.
_TRANSIENT = (
    "socket timed out",
    "unable to contact slurm controller",
    "zero bytes were transmitted",
    "connection refused",
    "temporarily unavailable",
    "slurm_load_jobs error: unable to",
)


def normalise_state(slurm_state: str) -> JobState:
    """zhpc's state for a Slurm state (``CANCELLED by 0`` and ``RUNNING+`` included)."""
    word = slurm_state.strip().split(" ", 1)[0].rstrip("+").upper()
    return SLURM_STATES.get(word, JobState.UNKNOWN)


def batch_script(spec: JobSpec) -> str:
    """The script text sbatch receives for ``spec``.

    An ``argv`` job becomes ``exec`` of the arguments, each quoted for the
    POSIX shell, so that no argument is ever interpreted and the batch shell
    is replaced by the program (which then receives Slurm's signals itself).
    Environment additions become ``export`` lines after the ``#!``/``#SBATCH``
    header.
    """
    exports = [f"export {key}={shlex.quote(value)}" for key, value in spec.env.items()]
    if spec.argv is not None:
        lines = ["#!/bin/bash", "# zhpc job", *exports, "exec " + shlex.join(spec.argv)]
        return "\n".join(lines) + "\n"
    assert spec.script is not None
    if not exports:
        return spec.script
    lines = spec.script.splitlines()
    header = 1
    while header < len(lines) and (not lines[header].strip() or lines[header].startswith("#")):
        header += 1
    return "\n".join([*lines[:header], *exports, *lines[header:]]) + "\n"


def sbatch_argv(spec: JobSpec, site_args: Sequence[str] = ()) -> list[str]:
    """The sbatch command line for ``spec`` (the script itself goes on stdin).

    ``site_args`` (``cluster.extra_sbatch_args``) come before the job's own
    extra arguments, so that the job's win where both set an option.
    """
    argv = ["sbatch", "--parsable", f"--job-name={spec.name}"]
    options: list[tuple[str, object]] = [
        ("--time", format_time_limit(spec.time_limit) if spec.time_limit is not None else None),
        ("--partition", spec.partition),
        ("--account", spec.account),
        ("--cpus-per-task", spec.cpus),
        ("--mem", spec.memory),
        ("--array", f"0-{spec.array - 1}" if spec.array else None),
        ("--comment", spec.comment),
        ("--chdir", spec.workdir),
        ("--output", spec.output),
        ("--error", spec.error),
        ("--signal", spec.signal),
    ]
    argv += [f"{option}={value}" for option, value in options if value is not None]
    return [*argv, *site_args, *spec.extra_args]


def parse_sbatch_output(stdout: str) -> str:
    """The job id from ``sbatch --parsable`` output (``ID`` or ``ID;cluster``)."""
    lines = [line for line in stdout.strip().splitlines() if line.strip()]
    job_id = lines[-1].split(";", 1)[0].strip() if lines else ""
    if not job_id.isdigit():
        raise ClusterError(f"sbatch printed no job id (output: {stdout.strip()[:200]!r})")
    return job_id


def squeue_argv() -> list[str]:
    """One squeue call listing all of this user's jobs, array tasks expanded, finished ones too."""
    fmt = ",".join(f"{name}:{_SEP}" for name in _SQUEUE_FIELDS)
    return ["squeue", "--me", "--noheader", "--array", "--states=all", f"--Format={fmt}"]


def end_time_argv(job_id: str) -> list[str]:
    """squeue asked for one job's end time (``%e``), nothing else."""
    return ["squeue", "--noheader", f"--jobs={job_id}", "--format=%e"]


def parse_end_time(stdout: str) -> float | None:
    """Epoch seconds from :func:`end_time_argv` output; None for no limit or no answer."""
    lines = stdout.strip().splitlines()
    if not lines:
        return None
    try:
        return datetime.fromisoformat(lines[0].strip()).timestamp()
    except ValueError:
        return None  # "NONE", "N/A", "Unknown": no limit


def job_end_time(
    job_id: str, runner: CommandRunner | None = None, timeout: float = 10.0
) -> float | None:
    """A Slurm job's end time (epoch seconds) from squeue; None if unlimited or unreadable."""
    if not job_id.isdigit():
        return None
    try:
        result = (runner or LocalRunner()).run(end_time_argv(job_id), input=None, timeout=timeout)
    except (ClusterError, OSError):
        return None
    return parse_end_time(result.stdout) if result.returncode == 0 else None


def _time(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value).astimezone()
    except ValueError:
        return None  # N/A, NONE, Unknown


def _int(value: str) -> int | None:
    return int(value) if value.strip().lstrip("-").isdigit() else None


def _digits(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def parse_squeue_output(stdout: str) -> list[JobInfo]:
    """JobInfo for each line of :func:`squeue_argv` output."""
    jobs = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        fields = line.split(_SEP)
        if len(fields) < len(_SQUEUE_FIELDS):
            raise ClusterError(f"cannot parse squeue output line {line!r}")
        (raw_id, array_id, task, state, reason, status, nodes, start, end, restarts,
         name, comment) = (f.strip() for f in fields[: len(_SQUEUE_FIELDS)])  # fmt: skip
        task_id = _int(task)
        job_id = f"{array_id}_{task_id}" if task_id is not None else raw_id
        wait_status = _int(status)
        exit_code = signal = None
        if wait_status is not None and state not in ("PENDING", "RUNNING"):
            signal = (wait_status & 0x7F) or None
            exit_code = 128 + signal if signal else (wait_status >> 8) & 0xFF
        jobs.append(
            JobInfo(
                job_id=job_id,
                name=name,
                state=normalise_state(state),
                scheduler_state=state,
                reason="" if reason == "None" else reason,
                array_job_id=array_id if task_id is not None else None,
                array_task_id=task_id,
                node=nodes or None,
                exit_code=exit_code,
                signal=signal,
                comment=None if comment in ("", "(null)") else comment,
                start_time=_time(start),
                end_time=_time(end),
                restart_count=_int(restarts) or 0,
            )
        )
    return jobs


class SlurmCluster(Cluster):
    """Slurm via sbatch/squeue/scancel, run by ``runner`` (local subprocesses by default)."""

    name = "slurm"
    #: Believed over a backend whose jobs inherit the environment of whatever started them.
    environment_rank = 10

    def __init__(
        self,
        runner: CommandRunner | None = None,
        *,
        partition: str | None = None,
        account: str | None = None,
        extra_sbatch_args: Sequence[str] = (),
        command_timeout: float = 30.0,
        attempts: int = 3,
        cache_seconds: float = 2.0,
    ) -> None:
        self.runner: CommandRunner = runner or LocalRunner()
        self.partition = partition
        self.account = account
        self.extra_sbatch_args = tuple(extra_sbatch_args)
        self.command_timeout = command_timeout
        self.attempts = attempts
        self.cache_seconds = cache_seconds
        self._cache: tuple[float, list[JobInfo]] | None = None
        self._lock = threading.Lock()
        #: Number of scheduler commands run, by program; lets tests and benchmarks count calls.
        self.calls: dict[str, int] = {}

    @classmethod
    def _options(cls, config: ClusterConfig) -> dict[str, object]:
        """The keyword arguments that the ``cluster`` section gives every Slurm backend."""
        return {
            "partition": config.partition,
            "account": config.account,
            "extra_sbatch_args": config.extra_sbatch_args,
            "command_timeout": config.command_timeout,
        }

    @classmethod
    def from_config(cls, config: ClusterConfig) -> SlurmCluster:
        return cls(**cls._options(config))  # type: ignore[arg-type]

    # -- inside a job ------------------------------------------------------------

    @classmethod
    def job_identity(cls, environ: Mapping[str, str]) -> JobIdentity | None:
        job_id = environ.get("SLURM_JOB_ID")
        if not job_id:
            return None
        return JobIdentity(
            scheduler="slurm",
            job_id=job_id,
            array_job_id=environ.get("SLURM_ARRAY_JOB_ID"),
            array_task_id=_digits(environ.get("SLURM_ARRAY_TASK_ID")),
            restart_count=_digits(environ.get("SLURM_RESTART_COUNT")) or 0,
            node=environ.get("SLURMD_NODENAME"),
            job_name=environ.get("SLURM_JOB_NAME"),
        )

    @classmethod
    def job_end_time(cls, job: JobIdentity, environ: Mapping[str, str]) -> float | None:
        """Asked of squeue on this machine: the job runs here, whichever backend submitted it."""
        return job_end_time(job.job_id)

    # -- commands --------------------------------------------------------------

    def _run_once(self, argv: Sequence[str], input: str | None) -> CommandResult:
        self.calls[argv[0]] = self.calls.get(argv[0], 0) + 1
        result = self.runner.run(argv, input=input, timeout=self.command_timeout)
        if result.returncode != 0:
            message = result.stderr.strip() or result.stdout.strip() or "no output"
            message = message.splitlines()[-1][:300]
            where = self.runner.describe()
            if any(fragment in message.lower() for fragment in _TRANSIENT):
                raise TransientCommandError(f"{argv[0]} on {where} failed: {message}")
            raise ClusterError(f"{argv[0]} on {where} failed: {message}")
        return result

    def _run(
        self, argv: Sequence[str], input: str | None = None, *, idempotent: bool = True
    ) -> CommandResult:
        """Run a command, retrying transient failures (and time-outs if it is idempotent)."""
        # Imported here: every job imports this module to learn who it is (job_identity).
        from tenacity import (
            Retrying,
            retry_if_exception_type,
            stop_after_attempt,
            wait_exponential,
        )

        retry_on: tuple[type[BaseException], ...] = (TransientCommandError,)
        if idempotent:
            retry_on += (CommandTimeout,)
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=0.5, max=5),
            retry=retry_if_exception_type(retry_on),
            reraise=True,
            before_sleep=lambda state: log.warning(
                "retrying %s: %s", argv[0], state.outcome.exception() if state.outcome else ""
            ),
        )
        return retrying(self._run_once, argv, input)

    # -- Cluster ---------------------------------------------------------------

    def submit(self, spec: JobSpec) -> str:
        if spec.partition is None and self.partition:
            spec = replace(spec, partition=self.partition)
        if spec.account is None and self.account:
            spec = replace(spec, account=self.account)
        argv = sbatch_argv(spec, site_args=self.extra_sbatch_args)
        # A timed-out sbatch may still have submitted: never retry it blindly.
        try:
            result = self._run(argv, batch_script(spec), idempotent=False)
        finally:
            self._cache = None  # a timed-out submit may have submitted: look afresh
        job_id = parse_sbatch_output(result.stdout)
        log.info("submitted Slurm job %s (%s)", job_id, spec.name)
        return job_id

    def jobs(self, name_prefix: str = DEFAULT_NAME_PREFIX) -> list[JobInfo]:
        with self._lock:
            now = time.monotonic()
            if self._cache is None or now - self._cache[0] > self.cache_seconds:
                result = self._run(squeue_argv())
                self._cache = (time.monotonic(), parse_squeue_output(result.stdout))
            every = self._cache[1]
        return [job for job in every if job.name.startswith(name_prefix)]

    def cancel(self, job_ids: Iterable[str], *, pending_only: bool = False) -> None:
        ids = [str(job_id) for job_id in job_ids]
        if not ids:
            return
        bad = [job_id for job_id in ids if not _JOB_ID.match(job_id)]
        if bad:
            raise ClusterError(f"not a Slurm job id: {', '.join(bad)}")
        if pending_only:
            self._cancel_pending(ids)
        else:
            self._run_ignoring_gone(["scancel", *ids])
        self._cache = None

    def _cancel_pending(self, ids: list[str]) -> None:
        """Cancel only what is still pending. A hold first stops a job from starting (and
        gives an array task a record of its own: ``scancel --state=PENDING ID_TASK`` on a
        still undivided pending array cancels every task of it); the release afterwards
        clears the hold of any job that had already started."""
        try:
            self._run_ignoring_gone(["scontrol", "hold", *ids])
            self._run_ignoring_gone(["scancel", "--state=PENDING", *ids])
        finally:
            with contextlib.suppress(ClusterError):
                self._run_ignoring_gone(["scontrol", "release", *ids])

    def _run_ignoring_gone(self, argv: list[str]) -> None:
        try:
            self._run(argv)
        except ClusterError as exc:
            # Already finished or unknown jobs are fine: the goal is that they do not run.
            text = str(exc).lower()
            if "invalid job id" not in text and "already finished" not in text:
                raise

    def close(self) -> None:
        self.runner.close()

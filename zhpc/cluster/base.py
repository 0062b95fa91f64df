"""The scheduler interface every backend implements.

A :class:`JobSpec` says what to run and with which resources; a backend turns
it into a job and reports on it as :class:`JobInfo` with a normalised
:class:`JobState`, keeping the scheduler's own state and reason strings for
people who know their scheduler. Seen from inside, a backend also tells a job
who it is (:class:`JobIdentity`, from the variables its scheduler sets) and
when it will be stopped, which is all :mod:`zhpc.jobenv` needs to know.

Backends are found by name through the ``zhpc.clusters`` entry points, and by
the variable that marks their jobs through ``zhpc.job_environments`` (see
:mod:`zhpc.cluster`): a new scheduler is one module plus its entry points.
"""

from __future__ import annotations

import enum
import re
import signal as _signal
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from zhpc.errors import ClusterError

if TYPE_CHECKING:  # pragma: no cover
    from typing import Self

    from zhpc.config import ClusterConfig

#: zhpc's jobs are named ``zhpc...``; listing filters on this prefix by default.
DEFAULT_NAME_PREFIX = "zhpc"

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SIGNAL_SPEC = re.compile(r"(?:[BR]{1,2}:)?(?:SIG)?[A-Z0-9]+(?:@\d+)?\Z")
_SIGNAL_NAMES = frozenset(_signal.Signals.__members__)
# ASCII digits only (\d also takes other scripts' digits, which Slurm does not), and
# a bounded number of them (a 5000-digit field is no time limit, and int() would fail).
_TIME = re.compile(r"(?:([0-9]{1,6})-)?([0-9]{1,8})(?::([0-9]{1,8}))?(?::([0-9]{1,8}))?\Z")


class JobState(enum.Enum):
    """A scheduler-independent job state."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    PREEMPTED = "preempted"
    NODE_FAIL = "node_fail"
    CANCELLED = "cancelled"
    OUT_OF_MEMORY = "out_of_memory"
    UNKNOWN = "unknown"

    @property
    def finished(self) -> bool:
        """True once the job will not run again by itself."""
        return self not in (JobState.PENDING, JobState.RUNNING, JobState.UNKNOWN)


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What to run, and with which resources.

    Exactly one of ``argv`` (a command run without any shell interpretation of
    its arguments) and ``script`` (a complete batch script with a ``#!`` line)
    is given. ``time_limit`` uses Slurm's syntax (``MM``, ``HH:MM:SS``,
    ``D-HH:MM``...) or is a number of seconds. ``array`` is a task count:
    one submission, tasks ``0..array-1``. ``signal`` is sbatch's
    ``[B:]SIG[@seconds]`` (sent that long before the time limit).
    """

    name: str
    argv: tuple[str, ...] | list[str] | None = None
    script: str | None = None
    time_limit: str | float | None = None
    partition: str | None = None
    account: str | None = None
    cpus: int | None = None
    memory: str | None = None
    array: int | None = None
    comment: str | None = None
    workdir: Path | str | None = None
    output: Path | str | None = None
    error: Path | str | None = None
    env: dict[str, str] = field(default_factory=dict)
    signal: str | None = None
    extra_args: tuple[str, ...] | list[str] = ()

    def __post_init__(self) -> None:
        if not self.name or any(c.isspace() or not c.isprintable() for c in self.name):
            raise ClusterError(f"job name {self.name!r} must be non-empty, without spaces")
        if (self.argv is None) == (self.script is None):
            raise ClusterError(f"job {self.name}: give exactly one of argv and script")
        if self.argv is not None:
            if not self.argv or not all(isinstance(a, str) for a in self.argv):
                raise ClusterError(f"job {self.name}: argv must be a non-empty list of strings")
            object.__setattr__(self, "argv", tuple(self.argv))
        if self.script is not None and not self.script.startswith("#!"):
            raise ClusterError(f"job {self.name}: a batch script must start with a #! line")
        if self.array is not None and self.array < 1:
            raise ClusterError(f"job {self.name}: array count must be at least 1")
        if self.cpus is not None and self.cpus < 1:
            raise ClusterError(f"job {self.name}: cpus must be at least 1")
        for key, value in self.env.items():
            if not _ENV_NAME.match(key) or not isinstance(value, str) or "\0" in value:
                raise ClusterError(f"job {self.name}: bad environment variable {key!r}")
        if self.signal is not None:
            parts = self.signal_parts() if _SIGNAL_SPEC.match(self.signal) else None
            if parts is None or not (parts[0].isdigit() or f"SIG{parts[0]}" in _SIGNAL_NAMES):
                raise ClusterError(f"job {self.name}: bad signal spec {self.signal!r}")
        if self.time_limit is not None:
            time_limit_seconds(self.time_limit)  # validate early
        object.__setattr__(self, "extra_args", tuple(self.extra_args))

    @property
    def time_limit_seconds(self) -> float | None:
        return None if self.time_limit is None else time_limit_seconds(self.time_limit)

    def signal_parts(self) -> tuple[str, float] | None:
        """``(signal name without SIG, seconds before the limit)`` of ``signal``, if any."""
        if self.signal is None:
            return None
        spec = self.signal.split(":", 1)[-1]
        name, _, seconds = spec.partition("@")
        name = name.removeprefix("SIG")
        return name, float(seconds) if seconds else 60.0


@dataclass(frozen=True, slots=True)
class JobInfo:
    """One job (or one array task) as the scheduler reports it."""

    job_id: str
    name: str
    state: JobState
    #: The scheduler's own state and reason, unchanged (e.g. ``OUT_OF_MEMORY``, ``Resources``).
    scheduler_state: str
    reason: str = ""
    array_job_id: str | None = None
    array_task_id: int | None = None
    node: str | None = None
    exit_code: int | None = None
    #: Set when the job was ended by a signal.
    signal: int | None = None
    comment: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    restart_count: int = 0


@dataclass(frozen=True, slots=True)
class JobIdentity:
    """The job a process runs in, as the variables its scheduler set say."""

    #: The scheduler that runs the job ("slurm", "local"...), not the backend that submitted it.
    scheduler: str
    job_id: str
    array_job_id: str | None = None
    array_task_id: int | None = None
    restart_count: int = 0
    node: str | None = None
    job_name: str | None = None


class Cluster(ABC):
    """A batch scheduler: submit, list and cancel zhpc's jobs."""

    #: Backend name as in ``cluster.backend``.
    name: str = ""
    #: When a process carries several schedulers' variables (a local job started inside a
    #: Slurm allocation inherits ``SLURM_*``), the backend with the lowest rank is believed.
    environment_rank: ClassVar[int] = 50

    @classmethod
    @abstractmethod
    def from_config(cls, config: ClusterConfig) -> Self:
        """The backend set up from the ``cluster`` section of the configuration."""

    @classmethod
    def job_identity(cls, environ: Mapping[str, str]) -> JobIdentity | None:
        """The job this process runs in if ``environ`` is that of one of this scheduler's
        jobs; None otherwise (the default: a backend whose jobs carry no variables).

        Asked only when the variable registered for this backend in
        ``zhpc.job_environments`` is set."""
        return None

    @classmethod
    def job_end_time(cls, job: JobIdentity, environ: Mapping[str, str]) -> float | None:
        """Epoch seconds when the scheduler will stop ``job``; None if unlimited or unknown."""
        return None

    @abstractmethod
    def submit(self, spec: JobSpec) -> str:
        """Submit one job (one array job if ``spec.array``); returns its id."""

    @abstractmethod
    def jobs(self, name_prefix: str = DEFAULT_NAME_PREFIX) -> list[JobInfo]:
        """All known jobs (array tasks listed one by one) whose name starts with the prefix.

        One scheduler query serves every call, whatever the number of jobs.
        """

    @abstractmethod
    def cancel(self, job_ids: Iterable[str], *, pending_only: bool = False) -> None:
        """Cancel jobs (or array tasks, ``ID_TASK``); unknown or finished ids are ignored.

        ``pending_only``: only those still PENDING when the scheduler acts; one that
        started meanwhile runs on (the scaler never cancels a running job).
        """

    def job(self, job_id: str, name_prefix: str = "") -> JobInfo | None:
        """One job by id, from the same single listing as :meth:`jobs`."""
        for info in self.jobs(name_prefix):
            if job_id in (info.job_id, info.array_job_id):
                return info
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the default has none."""

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def time_limit_seconds(limit: str | float) -> float:
    """Seconds in a Slurm time limit (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``)."""
    if isinstance(limit, int | float):
        if limit <= 0:
            raise ClusterError(f"time limit must be positive, got {limit}")
        return float(limit)
    match = _TIME.match(limit.strip())
    if not match:
        raise ClusterError(
            f"bad time limit {limit[:40]!r}: use HH:MM:SS, MM, or D-HH:MM:SS (ASCII digits)"
        )
    days, a, b, c = match.groups()
    nums = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
        hours, minutes, seconds = ([*nums, 0, 0])[:3]
        total = int(days) * 86400 + hours * 3600 + minutes * 60 + seconds
    elif len(nums) == 1:  # MM
        total = nums[0] * 60
    elif len(nums) == 2:  # MM:SS
        total = nums[0] * 60 + nums[1]
    else:  # HH:MM:SS
        total = nums[0] * 3600 + nums[1] * 60 + nums[2]
    if total <= 0:
        raise ClusterError(f"bad time limit {limit!r}: must be positive")
    return float(total)


def format_time_limit(limit: str | float) -> str:
    """A time limit as Slurm accepts it (seconds become ``D-HH:MM:SS``)."""
    if isinstance(limit, str):
        time_limit_seconds(limit)
        return limit.strip()
    total = int(-(-time_limit_seconds(limit) // 1))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{days}-{hours:02d}:{minutes:02d}:{seconds:02d}"

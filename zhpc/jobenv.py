"""The job a process runs in, and when it must stop.

The one place in zhpc that reads ``SLURM_*`` (and the local backend's
``ZHPC_*``) variables. :class:`JobEnvironment` says which job this is and
when its wall-clock limit ends; :class:`Drain` turns the signals a scheduler
sends before killing a job (SIGTERM, SIGUSR1...) into a flag that services
and ``zhpc wrap`` poll between messages. Importing this module is cheap: no
subprocess or third-party imports until a Slurm end time is actually needed.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

#: The signals a scheduler (or a person) uses to ask a job to wind down.
DRAIN_SIGNALS: tuple[signal.Signals, ...] = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)

_UNSET = object()


@dataclass
class JobEnvironment:
    """Identity of the batch job this process belongs to (all None outside a job)."""

    scheduler: str | None = None  #: "slurm", "local" or None
    job_id: str | None = None
    array_job_id: str | None = None
    array_task_id: int | None = None
    restart_count: int = 0
    node: str | None = None
    job_name: str | None = None
    _end_time: object = field(default=_UNSET, repr=False)
    _env: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> JobEnvironment:
        env = dict(os.environ if environ is None else environ)
        if env.get("SLURM_JOB_ID"):
            task = env.get("SLURM_ARRAY_TASK_ID")
            return cls(
                scheduler="slurm",
                job_id=env["SLURM_JOB_ID"],
                array_job_id=env.get("SLURM_ARRAY_JOB_ID"),
                array_task_id=int(task) if task and task.isdigit() else None,
                restart_count=_int(env.get("SLURM_RESTART_COUNT")),
                node=env.get("SLURMD_NODENAME"),
                job_name=env.get("SLURM_JOB_NAME"),
                _env=env,
            )
        if env.get("ZHPC_JOB_ID"):
            task = env.get("ZHPC_ARRAY_TASK_ID")
            return cls(
                scheduler="local",
                job_id=env["ZHPC_JOB_ID"],
                array_job_id=env.get("ZHPC_ARRAY_JOB_ID"),
                array_task_id=int(task) if task and task.isdigit() else None,
                node=os.uname().nodename,
                job_name=env.get("ZHPC_JOB_NAME"),
                _env=env,
            )
        return cls(_env=env)

    @property
    def in_job(self) -> bool:
        return self.job_id is not None

    @property
    def slurm_job_id(self) -> str | None:
        """The id that Slurm commands accept for this job (``ARRAY_TASK`` for array tasks)."""
        if self.scheduler != "slurm":
            return None
        return self.job_id

    def end_time(self) -> float | None:
        """Epoch seconds when the scheduler will stop this job; None if unlimited or unknown.

        Asked of the scheduler once (``squeue -j ID -o %e`` for Slurm) and cached.
        """
        if self._end_time is _UNSET:
            self._end_time = self._read_end_time()
        return self._end_time  # type: ignore[return-value]

    def _read_end_time(self) -> float | None:
        if self.scheduler == "local":
            value = self._env.get("ZHPC_JOB_END_TIME")
            try:
                return float(value) if value else None
            except ValueError:
                return None
        if self.scheduler == "slurm":
            return slurm_end_time(self.job_id or "")
        return None

    def remaining(self) -> float | None:
        """Seconds left before the wall-clock limit; None when there is no known limit."""
        end = self.end_time()
        return None if end is None else end - time.time()


def slurm_end_time(job_id: str, timeout: float = 10.0) -> float | None:
    """A Slurm job's end time (epoch seconds) from squeue; None if unlimited or unreadable."""
    import subprocess
    from datetime import datetime

    if not job_id.isdigit():
        return None
    try:
        result = subprocess.run(
            ["squeue", "--noheader", f"--jobs={job_id}", "--format=%e"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = result.stdout.strip().splitlines()
    if result.returncode != 0 or not text:
        return None
    try:
        return datetime.fromisoformat(text[0].strip()).timestamp()
    except ValueError:
        return None  # "NONE", "N/A", "Unknown": no limit


def _int(value: str | None) -> int:
    return int(value) if value and value.isdigit() else 0


class Drain:
    """A flag that is set when the process should finish its work and exit.

    It is set by any of ``signals`` (once :meth:`install`-ed, from the main
    thread), by :meth:`request`, or, as seen by :meth:`should_drain`, when the
    job's end time or a ``max_runtime`` deadline comes within ``grace``
    seconds. A second SIGINT raises KeyboardInterrupt, so Ctrl-C twice still
    stops an interactive run at once. Callbacks run in the signal handler
    (e.g. to forward the signal to a child process); keep them short.
    """

    def __init__(
        self,
        *,
        job: JobEnvironment | None = None,
        max_runtime: float | None = None,
        signals: Iterable[int] = DRAIN_SIGNALS,
    ) -> None:
        self.job = job
        self.started = time.monotonic()
        self.deadline = self.started + max_runtime if max_runtime else None
        self.signals = tuple(signal.Signals(s) for s in signals)
        self.event = threading.Event()
        #: The first signal received, if a signal caused the drain.
        self.signal: signal.Signals | None = None
        self.reason: str | None = None
        self._callbacks: list[Callable[[signal.Signals], None]] = []
        self._previous: dict[signal.Signals, object] = {}

    def install(self) -> Drain:
        """Install the signal handlers (main thread only); returns self."""
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        """Put back the handlers that were there before :meth:`install`."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)  # type: ignore[arg-type]
        self._previous.clear()

    def __enter__(self) -> Drain:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def on_signal(self, callback: Callable[[signal.Signals], None]) -> None:
        """Call ``callback(signal)`` for every drain signal received (also repeated ones)."""
        self._callbacks.append(callback)

    def _handle(self, signum: int, frame: object) -> None:
        sig = signal.Signals(signum)
        if sig == signal.SIGINT and self.signal == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signal is None:
            self.signal = sig
            self.reason = f"received {sig.name}"
        self.event.set()
        for callback in self._callbacks:
            callback(sig)

    def request(self, reason: str = "requested") -> None:
        """Ask for a drain from code (e.g. an idle timeout)."""
        if self.reason is None:
            self.reason = reason
        self.event.set()

    @property
    def requested(self) -> bool:
        """True once a signal came or :meth:`request` was called."""
        return self.event.is_set()

    def should_drain(self, grace: float = 0.0) -> bool:
        """True if work should stop now: a signal came, or a deadline is within ``grace`` s."""
        if self.event.is_set():
            return True
        if self.deadline is not None and time.monotonic() + grace >= self.deadline:
            self.request("max runtime reached")
            return True
        if self.job is not None:
            remaining = self.job.remaining()
            if remaining is not None and remaining <= grace:
                self.request(f"job end time within {grace:g} s")
                return True
        return False

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a drain is requested (by signal or :meth:`request`); True if it was."""
        return self.event.wait(timeout)

"""The job a process runs in, and when it must stop.

:class:`JobEnvironment` says which job this is and when its wall-clock limit
ends; which variables say so is each scheduler backend's business
(:meth:`zhpc.cluster.Cluster.job_identity`, found through the backend
registry). :class:`Drain` turns the signals a scheduler sends before killing a
job (SIGTERM, SIGUSR1...) into a flag that services and ``zhpc wrap`` poll
between messages; this module is the one place that installs such handlers.
Importing it is cheap: backends are looked up only when a job environment is
read, and a Slurm end time only when it is needed.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping

TYPE_CHECKING = False  # not typing's: typing costs ms at zhpc wrap's start-up
if TYPE_CHECKING:  # pragma: no cover
    from zhpc.cluster.base import Cluster, JobIdentity

#: The signals a scheduler (or a person) uses to ask a job to wind down.
DRAIN_SIGNALS: tuple[signal.Signals, ...] = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)

_UNSET = object()
#: How often Drain.wait looks at the flag (a signal handler must not take a lock to wake it).
_WAIT_SLICE = 0.05


class JobEnvironment:
    """Identity of the batch job this process belongs to (all None outside a job).

    Which backend's job this is gets found on first use, not on creation, so a
    process that never asks (``zhpc wrap -- CMD`` outside a recipe) looks up
    no backend at all. Both lookups (identity, end time) are done once.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._env = dict(os.environ if environ is None else environ)
        self._found: object = _UNSET
        self._end_time: object = _UNSET

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> JobEnvironment:
        """The job that ``environ`` (default: this process's environment) belongs to."""
        return cls(environ)

    def _lookup(self) -> tuple[type[Cluster], JobIdentity] | None:
        if self._found is _UNSET:
            from zhpc import plugins

            self._found = None
            # No backend's marker variable set (not in a job): zhpc.cluster is not even imported.
            if any(self._env.get(name) for name in plugins.names(plugins.JOB_ENVIRONMENTS)):
                from zhpc.cluster import job_identity

                self._found = job_identity(self._env)
        return self._found  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"JobEnvironment({self.job!r})"

    @property
    def job(self) -> JobIdentity | None:
        """Who the job is, as its scheduler's variables say; None outside a job."""
        found = self._lookup()
        return None if found is None else found[1]

    @property
    def scheduler(self) -> str | None:
        """The scheduler that runs the job ("slurm", "local"...), or None."""
        return None if self.job is None else self.job.scheduler

    @property
    def job_id(self) -> str | None:
        return None if self.job is None else self.job.job_id

    @property
    def array_job_id(self) -> str | None:
        return None if self.job is None else self.job.array_job_id

    @property
    def array_task_id(self) -> int | None:
        return None if self.job is None else self.job.array_task_id

    @property
    def restart_count(self) -> int:
        return 0 if self.job is None else self.job.restart_count

    @property
    def node(self) -> str | None:
        return None if self.job is None else self.job.node

    @property
    def job_name(self) -> str | None:
        return None if self.job is None else self.job.job_name

    @property
    def in_job(self) -> bool:
        return self.job is not None

    @property
    def slurm_job_id(self) -> str | None:
        """The id that Slurm commands accept for this job (``ARRAY_TASK`` for array tasks)."""
        if self.scheduler != "slurm":
            return None
        return self.job_id

    def end_time(self) -> float | None:
        """Epoch seconds when the scheduler will stop this job; None if unlimited or unknown.

        Asked of the job's backend once (Slurm: ``squeue -j ID -o %e``) and cached.
        """
        if self._end_time is _UNSET:
            found = self._lookup()
            self._end_time = None if found is None else found[0].job_end_time(found[1], self._env)
        return self._end_time  # type: ignore[return-value]

    def remaining(self) -> float | None:
        """Seconds left before the wall-clock limit; None when there is no known limit."""
        end = self.end_time()
        return None if end is None else end - time.time()


class Drain:
    """A flag that is set when the process should finish its work and exit.

    It is set by any of ``signals`` (once :meth:`install`-ed, from the main
    thread), by :meth:`request`, or, as seen by :meth:`should_drain`, when the
    job's end time or a ``max_runtime`` deadline comes within ``grace``
    seconds. A second SIGINT raises KeyboardInterrupt, so Ctrl-C twice still
    stops an interactive run at once. Callbacks run in the signal handler
    (e.g. to forward the signal to a child process); keep them short and
    lock-free.

    The flag is a plain attribute, not a ``threading.Event``: a signal that lands
    while the main thread is inside ``Event.set`` (the handler's own, for a second
    SIGTERM from Slurm or ``scancel``) would run the handler again on that thread
    and deadlock on the Event's lock. :meth:`wait` therefore polls.
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
        self._by_number = {int(s): s for s in self.signals}  # no Enum call in the handler
        self._requested = False
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
        self._requested = True  # first, before anything a repeated signal could interrupt
        sig = self._by_number[signum]
        if sig == signal.SIGINT and self.signal == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signal is None:
            self.signal = sig
            self.reason = f"received {sig.name}"
        for callback in self._callbacks:
            callback(sig)

    def request(self, reason: str = "requested") -> None:
        """Ask for a drain from code (e.g. an idle timeout)."""
        if self.reason is None:
            self.reason = reason
        self._requested = True

    @property
    def requested(self) -> bool:
        """True once a signal came or :meth:`request` was called."""
        return self._requested

    def should_drain(self, grace: float = 0.0) -> bool:
        """True if work should stop now: a signal came, or a deadline is within ``grace`` s."""
        if self._requested:
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
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._requested:
            left = _WAIT_SLICE
            if deadline is not None:
                left = min(left, deadline - time.monotonic())
            if left <= 0:
                return False
            time.sleep(left)
        return True


# -- when a consumer loop stops (times are the caller's monotonic clock) ------------------------
def end_deadline(
    job: JobEnvironment,
    *,
    started: float,
    now: float,
    max_runtime: float | None,
    end_margin: float,
) -> float | None:
    """When a consumer must stop taking messages: ``max_runtime`` after ``started``, or
    ``end_margin`` before the job's wall-clock end, whichever comes first; None: neither."""
    ends = []
    if max_runtime is not None:
        ends.append(started + max_runtime)
    remaining = job.remaining()
    if remaining is not None:
        ends.append(now + remaining - end_margin)
    return min(ends) if ends else None


def stop_reason(
    *, now: float, end: float | None, last_activity: float, idle_timeout: float | None
) -> str | None:
    """Why a consumer loop must drain now (its end deadline came, or it was idle too long)."""
    if end is not None and now >= end:
        return "end of the job's time"
    if idle_timeout is not None and now - last_activity >= idle_timeout:
        return f"idle for {idle_timeout:g} s"
    return None


def poll_timeout(now: float, wake: float, end: float | None) -> float:
    """Seconds to wait for a delivery: at most 0.5, and not past ``wake`` or ``end``."""
    wake = min(now + 0.5, wake)
    if end is not None:
        wake = min(wake, end)
    return max(wake - now, 0.0)

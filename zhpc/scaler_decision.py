"""The scaler's decision, from numbers alone: how many jobs to submit, which to cancel.

No I/O here: :func:`decide` maps a service's policy and what one cycle observed
to a :class:`Decision`, and :func:`count_failures` keeps the run of failed jobs
that stops a crash-looping service. Both are tested from tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from zhpc.cluster.base import JobInfo, JobState
from zhpc.config import ScalerConfig
from zhpc.scaler_state import ServiceState

#: Job states that always count as a failed job.
FAILED_STATES = frozenset({JobState.FAILED, JobState.OUT_OF_MEMORY, JobState.NODE_FAIL})
#: Remember this many counted jobs per service (the scheduler forgets them sooner).
_SEEN_LIMIT = 2000


@dataclass(frozen=True, slots=True)
class PendingJob:
    job_id: str
    #: Seconds since the scaler submitted it; None if someone else did.
    age: float | None
    #: Submitted by this scaler, so it may cancel it.
    ours: bool


@dataclass(frozen=True, slots=True)
class Observation:
    """What one cycle sees of one service."""

    ready: int
    unacked: int | None  #: None: the broker cannot tell; each consumer is then taken as busy
    consumers: int
    running: int = 0  #: running jobs with more time left than the drain margin
    ending: int = 0  #: running jobs about to drain (not capacity, but still jobs)
    pending: tuple[PendingJob, ...] = ()
    since_submit: float | None = None  #: seconds since the last submission
    ack_rate: float | None = None  #: acknowledgements per second, all consumers together
    crash_looping: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    work: int
    desired: int
    submit: int
    cancel: tuple[str, ...]
    #: Pending longer than ``pending_timeout`` (reported; cancelled if not needed).
    overdue: tuple[str, ...]
    reason: str


def work_of(obs: Observation) -> int:
    """Messages waiting or in hand; unknown unacked counts one per consumer."""
    return obs.ready + (obs.unacked if obs.unacked is not None else obs.consumers)


def messages_per_job(policy: ScalerConfig, obs: Observation) -> float:
    """How much work one job takes on: from ``target_drain_s`` and the measured rate if
    both are known, else ``messages_per_job``."""
    if policy.target_drain_s and obs.ack_rate and obs.ack_rate > 0 and obs.consumers > 0:
        return max(1.0, obs.ack_rate / obs.consumers * policy.target_drain_s)
    return float(policy.messages_per_job)


def decide(policy: ScalerConfig, obs: Observation) -> Decision:
    """How many jobs to submit and which pending ones to cancel, from the numbers alone.

    desired = clamp(ceil(work / messages per job), min_jobs, max_jobs); submit
    desired - (running with time left + pending), never beyond max_pending pending
    jobs, max_jobs jobs in all, or array_max tasks. Surplus capacity cancels only
    PENDING jobs this scaler submitted, at least ``cooldown`` s ago: the overdue
    ones first, then the youngest.
    """
    work = work_of(obs)
    wanted = math.ceil(work / messages_per_job(policy, obs)) if work > 0 else 0
    desired = min(max(wanted, policy.min_jobs), policy.max_jobs)
    pending = len(obs.pending)
    capacity = obs.running + pending
    alive = capacity + obs.ending
    overdue = tuple(
        p.job_id for p in obs.pending if p.age is not None and p.age > policy.pending_timeout
    )

    def decision(submit: int = 0, cancel: Sequence[str] = (), reason: str = "") -> Decision:
        return Decision(work, desired, submit, tuple(cancel), overdue, reason)

    if obs.crash_looping:
        return decision(reason="crash-looping service: not submitting")
    if capacity > desired:
        cancellable = [
            p for p in obs.pending if p.ours and p.age is not None and p.age >= policy.cooldown
        ]
        cancellable.sort(key=lambda p: (p.job_id not in overdue, p.age))  # overdue, then young
        cancel = [p.job_id for p in cancellable[: capacity - desired]]
        if cancel:
            return decision(
                cancel=cancel,
                reason=f"{capacity - desired} more job(s) than "
                f"needed: cancelling {len(cancel)} pending",
            )
        return decision(reason="more jobs than needed; running jobs end by themselves")
    missing = desired - capacity
    if missing == 0:
        return decision(reason="idle" if desired == 0 else f"enough jobs for {work} message(s)")
    if obs.since_submit is not None and obs.since_submit < policy.cooldown:
        left = policy.cooldown - obs.since_submit
        return decision(reason=f"cooldown: {missing} more job(s) wanted in {left:.0f} s")
    limits = {
        "max_pending": policy.max_pending - pending,
        "max_jobs": policy.max_jobs - alive,
        "array_max": policy.array_max,
    }
    submit = max(0, min(missing, *limits.values()))
    reason = f"{work} message(s) want {desired} job(s): submitting {submit}"
    if submit < missing:
        limit = min(limits, key=lambda key: limits[key])
        reason += f" (limited by {limit})"
    return decision(submit=submit, reason=reason)


# -- failures --------------------------------------------------------------------------


def runtime(job: JobInfo) -> float | None:
    if job.start_time is None or job.end_time is None:
        return None
    return (job.end_time - job.start_time).total_seconds()


def is_failure(job: JobInfo, window: float, idle_timeout: float | None) -> bool:
    """A finished job that failed: FAILED, OUT_OF_MEMORY, NODE_FAIL, or one that ended
    (cancelled excepted) within ``window`` s of starting, before its idle timeout could
    have ended it."""
    if job.state in FAILED_STATES:
        return True
    if job.state in (JobState.CANCELLED, JobState.PREEMPTED):
        return False
    seconds = runtime(job)
    if seconds is None or seconds >= window:
        return False
    return idle_timeout is None or seconds < idle_timeout


def count_failures(
    state: ServiceState,
    finished: Sequence[JobInfo],
    policy: ScalerConfig,
    idle_timeout: float | None,
    now: float,
) -> list[JobInfo]:
    """Count newly finished jobs in end-time order (a success resets the run of failures);
    returns the new failures. Sets ``state.crash_looping`` once ``crash_limit`` is reached
    (until an operator resets it: a crash loop needs a person)."""
    seen = set(state.seen_finished)
    new = sorted(
        (j for j in finished if j.job_id not in seen),
        key=lambda j: (j.end_time or datetime.min.astimezone(), j.job_id),
    )
    failures = []
    for job in new:
        if is_failure(job, policy.crash_window, idle_timeout):
            state.failures += 1
            failures.append(job)
        else:
            state.failures = 0
        state.seen_finished.append(job.job_id)
    listed = {j.job_id for j in finished}
    state.seen_finished = [s for s in state.seen_finished if s in listed][-_SEEN_LIMIT:]
    if state.failures >= policy.crash_limit and state.crash_looping is None and failures:
        last = failures[-1]
        state.crash_looping = {
            "since": now,
            "failures": state.failures,
            "last_job": last.job_id,
            "last_state": last.scheduler_state,
            "last_exit_code": last.exit_code,
        }
    return failures

"""The scaler's decision and failure counting, from tables (no I/O)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from zhpc.cluster import JobInfo, JobState
from zhpc.config import ScalerConfig
from zhpc.scaler_decision import Observation, PendingJob, count_failures, decide, is_failure
from zhpc.scaler_state import ServiceState

POLICY = ScalerConfig(
    min_jobs=0,
    max_jobs=4,
    messages_per_job=100,
    max_pending=3,
    pending_timeout=600,
    cooldown=30,
    array_max=100,
)
EMPTY = Observation(ready=0, unacked=0, consumers=0)


def ours(job_id: str, age: float) -> PendingJob:
    return PendingJob(job_id, age, ours=True)


# (name, policy changes, observation, desired, submit, cancelled ids, reason fragment)
CASES = [
    ("nothing queued, nothing running", {}, EMPTY, 0, 0, (), "idle"),
    (
        "a burst wants max_jobs, capped by max_pending",
        {},
        replace(EMPTY, ready=500),
        4,
        3,
        (),
        "limited by max_pending",
    ),
    (
        "a burst within every limit",
        {"max_pending": 10},
        replace(EMPTY, ready=500),
        4,
        4,
        (),
        "submitting 4",
    ),
    (
        "ceil(work / messages_per_job)",
        {"max_pending": 10},
        replace(EMPTY, ready=201),
        3,
        3,
        (),
        "submitting 3",
    ),
    (
        "pending jobs count as capacity",
        {},
        replace(EMPTY, ready=500, running=1, pending=(ours("1_0", 5), ours("1_1", 5))),
        4,
        1,
        (),
        "submitting 1",
    ),
    (
        "max_pending already reached",
        {},
        replace(EMPTY, ready=500, pending=(ours("1_0", 5),) * 3),
        4,
        0,
        (),
        "max_pending",
    ),
    ("enough jobs", {}, replace(EMPTY, ready=150, running=2), 2, 0, (), "enough jobs"),
    (
        "jobs about to drain are not capacity",
        {"max_jobs": 8, "max_pending": 8},
        replace(EMPTY, ready=300, ending=3),
        3,
        3,
        (),
        "submitting 3",
    ),
    (
        "jobs about to drain still count toward max_jobs",
        {},
        replace(EMPTY, ready=500, ending=3),
        4,
        1,
        (),
        "limited by max_jobs",
    ),
    (
        "max_jobs caps everything alive",
        {"max_pending": 10},
        replace(EMPTY, ready=10_000, running=2, ending=2),
        4,
        0,
        (),
        "max_jobs",
    ),
    (
        "array_max caps one submission",
        {"max_jobs": 50, "max_pending": 50, "array_max": 7},
        replace(EMPTY, ready=10_000),
        50,
        7,
        (),
        "limited by array_max",
    ),
    ("min_jobs with an empty queue", {"min_jobs": 2}, EMPTY, 2, 2, (), "submitting 2"),
    (
        "unknown unacked: each consumer holds work",
        {"messages_per_job": 1},
        Observation(ready=0, unacked=None, consumers=3, running=3),
        3,
        0,
        (),
        "enough jobs",
    ),
    (
        "unacked counts as work",
        {},
        Observation(ready=10, unacked=190, consumers=1, running=1),
        2,
        1,
        (),
        "submitting 1",
    ),
    (
        "cooldown after a submission",
        {},
        replace(EMPTY, ready=500, since_submit=10),
        4,
        0,
        (),
        "cooldown",
    ),
    ("cooldown over", {}, replace(EMPTY, ready=500, since_submit=31), 4, 3, (), "submitting"),
    (
        "crash-looping service submits nothing",
        {},
        replace(EMPTY, ready=500, crash_looping=True),
        4,
        0,
        (),
        "crash-looping service",
    ),
    (
        "surplus pending jobs are cancelled, youngest first",
        {},
        replace(EMPTY, ready=100, pending=(ours("7_0", 300), ours("8_0", 100), ours("9_0", 50))),
        1,
        0,
        ("9_0", "8_0"),
        "cancelling 2 pending",
    ),
    (
        "overdue pending jobs go first",
        {},
        replace(EMPTY, ready=100, pending=(ours("7_0", 900), ours("8_0", 100))),
        1,
        0,
        ("7_0",),
        "cancelling 1",
    ),
    (
        "nothing queued: every pending job of ours goes",
        {},
        replace(EMPTY, pending=(ours("7_0", 900), ours("8_0", 100))),
        0,
        0,
        ("7_0", "8_0"),
        "cancelling 2",
    ),
    (
        "pending jobs younger than the cooldown stay",
        {},
        replace(EMPTY, pending=(ours("7_0", 10),)),
        0,
        0,
        (),
        "end by themselves",
    ),
    (
        "pending jobs someone else submitted stay",
        {},
        replace(EMPTY, pending=(PendingJob("7_0", None, ours=False),)),
        0,
        0,
        (),
        "end by themselves",
    ),
    (
        "running jobs are never cancelled",
        {},
        replace(EMPTY, running=4),
        0,
        0,
        (),
        "running jobs end by themselves",
    ),
    (
        "target_drain_s uses the measured rate",
        {"target_drain_s": 20, "max_jobs": 50, "max_pending": 50},
        Observation(ready=1000, unacked=0, consumers=2, running=2, ack_rate=10.0),
        10,
        8,
        (),
        "submitting 8",
    ),
    (
        "target_drain_s without a rate falls back to messages_per_job",
        {"target_drain_s": 20},
        replace(EMPTY, ready=250),
        3,
        3,
        (),
        "submitting 3",
    ),
]


@pytest.mark.parametrize(
    ("changes", "obs", "desired", "submit", "cancel", "reason"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_decide(
    changes: dict, obs: Observation, desired: int, submit: int, cancel: tuple[str, ...], reason: str
) -> None:
    policy = POLICY.replace(**changes)
    decision = decide(policy, obs)
    assert (decision.desired, decision.submit, decision.cancel) == (desired, submit, cancel)
    assert reason in decision.reason
    pending = len(obs.pending) + decision.submit
    assert pending - len(decision.cancel) <= policy.max_pending or decision.submit == 0
    assert obs.running + obs.ending + pending <= policy.max_jobs or decision.submit == 0


def test_overdue_jobs_are_reported_even_when_still_needed() -> None:
    decision = decide(POLICY, replace(EMPTY, ready=500, pending=(ours("7_0", 601),)))
    assert decision.overdue == ("7_0",) and decision.cancel == ()
    assert decide(POLICY, replace(EMPTY, ready=500, pending=(ours("7_0", 599),))).overdue == ()


def test_repeated_cycles_never_exceed_the_limits() -> None:
    """Feeding each decision back as the next observation (jobs stay pending)."""
    policy = POLICY.replace(max_jobs=5, max_pending=2, cooldown=0)
    pending: list[PendingJob] = []
    for cycle in range(10):
        decision = decide(policy, replace(EMPTY, ready=5000, running=1, pending=tuple(pending)))
        pending += [ours(f"{cycle}_{t}", 100) for t in range(decision.submit)]
        assert len(pending) <= policy.max_pending and 1 + len(pending) <= policy.max_jobs
    assert len(pending) == 2


START = datetime(2026, 1, 1).astimezone()


def job(
    job_id: str, state: JobState, seconds: float, exit_code: int = 0, end: float = 0
) -> JobInfo:
    return JobInfo(
        job_id=job_id,
        name="zhpc-svc-x",
        state=state,
        scheduler_state=state.name,
        exit_code=exit_code,
        start_time=START + timedelta(seconds=end - seconds),
        end_time=START + timedelta(seconds=end),
    )


@pytest.mark.parametrize(
    ("state", "seconds", "exit_code", "idle_timeout", "failed"),
    [
        (JobState.FAILED, 300, 1, None, True),
        (JobState.OUT_OF_MEMORY, 300, 0, None, True),
        (JobState.NODE_FAIL, 300, 0, None, True),
        (JobState.COMPLETED, 2, 0, None, True),  # ended at once with nothing telling it to
        (JobState.COMPLETED, 2, 0, 1, False),  # its idle timeout ended it
        (JobState.COMPLETED, 2, 0, 5, True),  # ended before its idle timeout could
        (JobState.COMPLETED, 60, 0, None, False),
        (JobState.CANCELLED, 1, 0, None, False),
        (JobState.PREEMPTED, 1, 0, None, False),
        (JobState.TIMEOUT, 300, 0, None, False),
    ],
)
def test_is_failure(
    state: JobState, seconds: float, exit_code: int, idle_timeout: float | None, failed: bool
) -> None:
    assert is_failure(job("1", state, seconds, exit_code), 10, idle_timeout) is failed


def test_failures_in_a_row_make_a_crash_loop_and_a_success_resets_the_count() -> None:
    policy = ScalerConfig(crash_limit=3)
    state = ServiceState()
    first = [
        job("1_0", JobState.FAILED, 1, 1, end=1),
        job("1_1", JobState.FAILED, 1, 1, end=2),
        job("2_0", JobState.COMPLETED, 60, 0, end=3),
    ]
    assert len(count_failures(state, first, policy, None, 0)) == 2
    assert state.failures == 0 and state.crash_looping is None
    # The same jobs listed again are not counted twice.
    assert count_failures(state, first, policy, None, 0) == [] and state.failures == 0
    more = [
        *first,
        job("3_0", JobState.FAILED, 1, 1, end=4),
        job("4_0", JobState.NODE_FAIL, 1, end=5),
    ]
    count_failures(state, more, policy, None, 0)
    assert state.failures == 2 and state.crash_looping is None
    count_failures(
        state, [*more, job("5_0", JobState.OUT_OF_MEMORY, 1, end=6)], policy, None, 123.0
    )
    assert state.failures == 3
    assert state.crash_looping is not None
    assert state.crash_looping["last_job"] == "5_0" and state.crash_looping["since"] == 123.0
    # Jobs the scheduler no longer lists are forgotten.
    count_failures(state, [], policy, None, 0)
    assert state.seen_finished == []

"""``services:``, ``scaler:`` and ``limits:``: how services run, are scaled and bounded."""

from __future__ import annotations

import re
from typing import Annotated, Any

from msgspec import Meta

from zhpc.config.base import Invalid, Section
from zhpc.config.checks import check_job_counts, check_time_limit


class ServiceConfig(Section, kw_only=True):
    queue: str | None = None
    prefetch: Annotated[int, Meta(ge=1, le=65535)] = 100  # AMQP prefetch-count is 16 bits
    max_runtime: Annotated[float, Meta(gt=0)] | None = None
    idle_timeout: Annotated[float, Meta(gt=0)] | None = None
    heartbeat_interval: Annotated[float, Meta(gt=0)] = 30.0
    #: After a drain signal, how long the message in progress may still run before it is
    #: handed back. Keep it below the scheduler's KillWait (Slurm's default: 30 s).
    drain_grace: Annotated[float, Meta(ge=0)] = 10.0
    #: Stop this long before the job's wall-clock end, leaving time to hand back and exit.
    end_margin: Annotated[float, Meta(ge=0)] = 15.0
    #: Hand-backs (drains) after which a message is dead-lettered instead: one that never
    #: fits the time a job has left must not bounce between jobs forever.
    max_handbacks: Annotated[int, Meta(ge=1)] = 20
    #: Seconds between looks at the queue's retry lane while messages keep coming.
    retry_interval: Annotated[float, Meta(gt=0)] = 1.0
    #: Free parameters a service reads for itself.
    parameters: dict[str, Any] = {}


def _check_memory(memory: str | None) -> str | None:
    if memory is not None and not re.fullmatch(r"[1-9]\d*[KMGT]?", memory.strip()):
        raise ValueError(f"{memory!r} is not a Slurm memory size such as 500M or 4G")
    return memory


class ScalerConfig(Section, kw_only=True):
    """How ``zhpc scale`` sizes one service's job arrays (docs/scaling.md)."""

    min_jobs: Annotated[int, Meta(ge=0)] = 0
    max_jobs: Annotated[int, Meta(ge=0)] = 20
    #: Messages one job is expected to handle; desired jobs = ceil(work / this).
    messages_per_job: Annotated[int, Meta(ge=1)] = 100
    #: Instead: drain the backlog in this many seconds at the measured rate per job
    #: (messages_per_job still applies while no rate is known).
    target_drain_s: Annotated[float, Meta(gt=0)] | None = None
    #: Never more than this many of the service's jobs PENDING.
    max_pending: Annotated[int, Meta(ge=1)] = 5
    #: A job PENDING longer than this (seconds) is reported (and cancelled when not needed).
    pending_timeout: Annotated[float, Meta(gt=0)] = 600.0
    #: Seconds after a submission before the next one, or before its jobs may be cancelled.
    cooldown: Annotated[float, Meta(ge=0)] = 30.0
    #: Job shape: wall-clock limit (default cluster.default_time), partition, cpus, memory.
    time: str | None = None
    partition: str | None = None
    cpus: Annotated[int, Meta(ge=1)] | None = None
    memory: str | None = None
    #: At most this many tasks in one array submission.
    array_max: Annotated[int, Meta(ge=1)] = 100
    #: Seconds between daemon cycles.
    interval: Annotated[float, Meta(gt=0)] = 60.0
    #: Stop submitting after this many job failures in a row ("crash-looping service").
    crash_limit: Annotated[int, Meta(ge=1)] = 3
    #: A job that ends with a non-zero status within this many seconds of starting failed.
    crash_window: Annotated[float, Meta(gt=0)] = 10.0

    checks = {
        "memory": _check_memory,
        "time": check_time_limit,
    }

    def check(self) -> None:
        """On max_jobs, so the one-line error names the key to change."""
        try:
            check_job_counts(self.min_jobs, self.max_jobs)
        except ValueError as exc:
            raise Invalid("max_jobs", str(exc)) from None


class LimitsConfig(Section, kw_only=True):
    """Bounds on what one request may make the Dispatcher build (docs/recipes.md).

    A request over a bound is dead-lettered with the reason (``zhpc go`` refuses it),
    so a 200-byte request cannot make the Dispatcher build gigabytes.
    """

    #: Longest string a parameter substitution may produce, and the widest format field.
    max_substituted_chars: Annotated[int, Meta(ge=1, le=2**31)] = 1_000_000
    #: Most ``start`` entries (start messages) one recipe may have.
    max_start_messages: Annotated[int, Meta(ge=1, le=1_000_000)] = 1000
    #: Largest single message body a request or a start message may have, in bytes.
    max_message_bytes: Annotated[int, Meta(ge=1024, le=2**31)] = 16 * 2**20
    #: Largest total of all start messages of one request, in bytes.
    max_dispatch_bytes: Annotated[int, Meta(ge=1024, le=2**34)] = 64 * 2**20

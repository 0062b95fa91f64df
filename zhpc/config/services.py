"""``services:``, ``scaler:`` and ``limits:``: how services run, are scaled and bounded."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from zhpc.config.base import Section
from zhpc.config.checks import check_job_counts, check_time_limit


class ServiceConfig(Section):
    queue: str | None = None
    prefetch: int = Field(100, ge=1, le=65535)  # AMQP prefetch-count is 16 bits
    max_runtime: float | None = Field(None, gt=0)
    idle_timeout: float | None = Field(None, gt=0)
    heartbeat_interval: float = Field(30.0, gt=0)
    #: After a drain signal, how long the message in progress may still run before it is
    #: handed back. Keep it below the scheduler's KillWait (Slurm's default: 30 s).
    drain_grace: float = Field(10.0, ge=0)
    #: Stop this long before the job's wall-clock end, leaving time to hand back and exit.
    end_margin: float = Field(15.0, ge=0)
    #: Hand-backs (drains) after which a message is dead-lettered instead: one that never
    #: fits the time a job has left must not bounce between jobs forever.
    max_handbacks: int = Field(20, ge=1)
    #: Seconds between looks at the queue's retry lane while messages keep coming.
    retry_interval: float = Field(1.0, gt=0)
    #: Free parameters a service reads for itself.
    parameters: dict[str, Any] = {}


class ScalerConfig(Section):
    """How ``zhpc scale`` sizes one service's job arrays (docs/scaling.md)."""

    min_jobs: int = Field(0, ge=0)
    max_jobs: int = Field(20, ge=0)
    #: Messages one job is expected to handle; desired jobs = ceil(work / this).
    messages_per_job: int = Field(100, ge=1)
    #: Instead: drain the backlog in this many seconds at the measured rate per job
    #: (messages_per_job still applies while no rate is known).
    target_drain_s: float | None = Field(None, gt=0)
    #: Never more than this many of the service's jobs PENDING.
    max_pending: int = Field(5, ge=1)
    #: A job PENDING longer than this (seconds) is reported (and cancelled when not needed).
    pending_timeout: float = Field(600.0, gt=0)
    #: Seconds after a submission before the next one, or before its jobs may be cancelled.
    cooldown: float = Field(30.0, ge=0)
    #: Job shape: wall-clock limit (default cluster.default_time), partition, cpus, memory.
    time: str | None = None
    partition: str | None = None
    cpus: int | None = Field(None, ge=1)
    memory: str | None = None
    #: At most this many tasks in one array submission.
    array_max: int = Field(100, ge=1)
    #: Seconds between daemon cycles.
    interval: float = Field(60.0, gt=0)
    #: Stop submitting after this many job failures in a row ("crash-looping service").
    crash_limit: int = Field(3, ge=1)
    #: A job that ends with a non-zero status within this many seconds of starting failed.
    crash_window: float = Field(10.0, gt=0)

    @field_validator("memory")
    @classmethod
    def _slurm_memory(cls, memory: str | None) -> str | None:
        if memory is not None and not re.fullmatch(r"[1-9]\d*[KMGT]?", memory.strip()):
            raise ValueError(f"{memory!r} is not a Slurm memory size such as 500M or 4G")
        return memory

    @field_validator("time")
    @classmethod
    def _time_limit(cls, value: str | None) -> str | None:
        return check_time_limit(value)

    @field_validator("max_jobs")
    @classmethod
    def _not_below_min(cls, max_jobs: int, info: ValidationInfo) -> int:
        """On max_jobs, so the one-line error names the key to change."""
        min_jobs = info.data.get("min_jobs")
        if min_jobs is not None:
            check_job_counts(min_jobs, max_jobs)
        return max_jobs


class LimitsConfig(Section):
    """Bounds on what one request may make the Dispatcher build (docs/recipes.md).

    A request over a bound is dead-lettered with the reason (``zhpc go`` refuses it),
    so a 200-byte request cannot make the Dispatcher build gigabytes.
    """

    #: Longest string a parameter substitution may produce, and the widest format field.
    max_substituted_chars: int = Field(1_000_000, ge=1, le=2**31)
    #: Most ``start`` entries (start messages) one recipe may have.
    max_start_messages: int = Field(1000, ge=1, le=1_000_000)
    #: Largest single message body a request or a start message may have, in bytes.
    max_message_bytes: int = Field(16 * 2**20, ge=1024, le=2**31)
    #: Largest total of all start messages of one request, in bytes.
    max_dispatch_bytes: int = Field(64 * 2**20, ge=1024, le=2**34)

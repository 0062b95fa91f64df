"""The scaler: queue depth -> a pure decision -> at most one job array per service per cycle.

A cycle reads, for every scaled service, the work waiting in its queue (ready
plus unacked messages, and consumers) and the service's jobs from ONE listing
of the scheduler (skipped when nothing is queued and the scaler knows of no
jobs). :func:`decide` turns these numbers into a :class:`Decision` without any
I/O, so it is tested on its own from a table. The :class:`Scaler` then submits
one array (``service_array_spec``) and cancels PENDING jobs it submitted that
are no longer needed. It never cancels a running job: service jobs end by
themselves (idle timeout, wall clock).

It speaks only to :class:`~zhpc.cluster.base.Cluster` and
:class:`~zhpc.transport.base.Transport`, so the same code starts local service
processes on the embedded default and Slurm arrays next to RabbitMQ.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from zhpc.cluster.base import Cluster, JobInfo, JobState
from zhpc.config import Config, ScalerConfig
from zhpc.errors import ZhpcError
from zhpc.scaler_decision import Observation, PendingJob, count_failures, decide
from zhpc.scaler_state import ScalerState, ServiceState, StateStore
from zhpc.transport.base import QueueDepth, Transport, retry_name
from zhpc.transport.management import ManagementClient

log = logging.getLogger(__name__)

#: Forget a submitted array this long after the listing stopped showing it.
_FORGET_AFTER = 60.0


class CycleFailed(ZhpcError):
    """The cycle could not do its job (broker or scheduler unreachable)."""

    exit_code = 1


class BrokerUnreachable(CycleFailed):
    """The queue depths could not be read: the connection needs renewing."""


# -- the signal and the cycle ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """A service to scale: its queue, its policy, and when its jobs stop being capacity."""

    service: str
    queue: str
    policy: ScalerConfig
    #: A running job with less wall time left than this is draining: not capacity.
    margin: float
    idle_timeout: float | None = None


@dataclass
class ServiceReport:
    """One service in one cycle (the ``--json`` line)."""

    service: str
    queue: str
    ready: int = 0
    unacked: int | None = None
    consumers: int = 0
    running: int = 0
    ending: int = 0
    pending: int = 0
    work: int = 0
    desired: int = 0
    submitted: int = 0
    cancelled: int = 0
    reason: str = ""
    job_id: str | None = None
    overdue: list[str] = field(default_factory=list)
    failures: int = 0
    crash_looping: bool = False
    depth_source: str = "transport"
    scheduler_queries: int = 0
    dry_run: bool = False
    error: str | None = None
    time: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def queue_and_lane(transport: Transport, queue: str) -> QueueDepth:
    """The queue's depth, its retry lane's ready messages counted as ready."""
    depth = transport.queue_depth(queue)
    lane = transport.queue_depth(retry_name(queue))
    return replace(depth, ready=depth.ready + lane.ready)


def read_depth(
    transport: Transport, management: ManagementClient | None, queue: str
) -> tuple[QueueDepth, float | None, str]:
    """The queue's depth, the ack rate if known, and where the numbers came from.

    Ready and consumers come from the transport: exact and immediate (RabbitMQ's
    management figures lag by the statistics interval). Ready includes the queue's retry
    lane: the messages of killed consumers wait there, and no one subscribes to it.
    Unacked, which AMQP cannot tell, and the ack rate come from the management API when
    it answers.
    """
    depth = queue_and_lane(transport, queue)
    if depth.unacked is not None or management is None:
        return depth, None, "transport"
    try:
        stats = management.queue(queue)
    except ZhpcError as exc:
        log.warning("%s; counting each consumer as holding one message", exc)
        return depth, None, "transport"
    if stats is None or stats.unacked is None:
        return depth, None, "transport"
    # Only a consumer holds messages unacked (a basic.get holder is at work, not wanting a
    # job): with none, the API's figure is a stale sample of ones already back in ready.
    unacked = stats.unacked if depth.consumers else 0
    return replace(depth, unacked=unacked), stats.ack_rate, "transport+management"


class Scaler:
    """Runs cycles for ``targets``; the store's lock must be held around :meth:`cycle`."""

    def __init__(
        self,
        config: Config,
        targets: Sequence[Target],
        *,
        transport: Transport,
        cluster: Cluster,
        store: StateStore,
        management: ManagementClient | None = None,
        dry_run: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.targets = list(targets)
        self.transport = transport
        self.cluster = cluster
        self.store = store
        self.management = management
        self.dry_run = dry_run
        self.clock = clock
        #: Jobs alive (and capacity) per service after the last cycle, for :meth:`wants_cycle`.
        self._last: dict[str, tuple[int, int]] = {}

    def cycle(self) -> list[ServiceReport]:
        """One cycle for every target. CycleFailed if the broker or the scheduler cannot
        be asked (nothing is submitted then); per-service submission errors are reported
        in that service's ``error``."""
        from zhpc.cluster import DEFAULT_NAME_PREFIX

        now = self.clock()
        state = self.store.load()
        reports = [
            ServiceReport(t.service, t.queue, time=now, dry_run=self.dry_run) for t in self.targets
        ]
        depths: dict[str, tuple[QueueDepth, float | None]] = {}
        try:
            for target, report in zip(self.targets, reports, strict=True):
                depth, rate, report.depth_source = read_depth(
                    self.transport, self.management, target.queue
                )
                depths[target.service] = (depth, rate)
        except ZhpcError as exc:
            raise BrokerUnreachable(f"cannot read queue depths: {exc}") from None
        listing_needed = any(
            depths[t.service][0].ready
            or depths[t.service][0].unacked
            or depths[t.service][0].consumers
            or t.policy.min_jobs
            or state.of(t.service).arrays
            for t in self.targets
        )
        jobs: list[JobInfo] = []
        if listing_needed:
            try:
                jobs = self.cluster.jobs(DEFAULT_NAME_PREFIX)
            except ZhpcError as exc:
                raise CycleFailed(f"cannot list jobs: {exc}") from None
        for target, report in zip(self.targets, reports, strict=True):
            report.scheduler_queries = int(listing_needed)
            mine = [j for j in jobs if j.name == job_name(target.service)]
            depth, rate = depths[target.service]
            self._one(
                target, state.of(target.service), depth, rate, mine, listing_needed, report, now
            )
        if not self.dry_run:
            self.store.save(state)
        return reports

    def _one(
        self,
        target: Target,
        state: ServiceState,
        depth: QueueDepth,
        rate: float | None,
        jobs: list[JobInfo],
        listed: bool,
        report: ServiceReport,
        now: float,
    ) -> None:
        policy = target.policy
        report.ready, report.unacked, report.consumers = depth.ready, depth.unacked, depth.consumers
        running = ending = 0
        pending: list[PendingJob] = []
        finished: list[JobInfo] = []
        for job in jobs:
            array = job.array_job_id or job.job_id
            if job.state is JobState.PENDING:
                submitted = state.arrays.get(array)
                age = None if submitted is None else now - submitted
                pending.append(PendingJob(job.job_id, age, submitted is not None))
            elif job.state.finished:
                finished.append(job)
            elif job.state is JobState.RUNNING and not _ending(job, target.margin, now):
                running += 1
            else:
                ending += 1
        was_looping = state.crash_looping is not None
        failures = []
        if listed:  # an unlisted cycle must not forget which jobs were counted
            failures = count_failures(state, finished, policy, target.idle_timeout, now)
        if state.crash_looping is not None and not was_looping:
            log.error(
                "service %s is crash-looping: %d jobs in a row failed (last %s: %s, "
                "exit code %s); no more submissions until `zhpc scale --reset -s %s`",
                target.service,
                state.failures,
                failures[-1].job_id,
                failures[-1].scheduler_state,
                failures[-1].exit_code,
                target.service,
            )
        if listed:
            self._forget_arrays(state, jobs, now)
        since = None if state.last_submit is None else now - state.last_submit
        obs = Observation(
            depth.ready,
            depth.unacked,
            depth.consumers,
            running,
            ending,
            tuple(pending),
            since,
            rate,
            state.crash_looping is not None,
        )
        decision = decide(policy, obs)
        report.running, report.ending, report.pending = running, ending, len(pending)
        report.work, report.desired, report.reason = (
            decision.work,
            decision.desired,
            decision.reason,
        )
        report.overdue = list(decision.overdue)
        report.failures, report.crash_looping = state.failures, obs.crash_looping
        for job_id in decision.overdue:
            log.warning(
                "%s: job %s pending for more than %g s",
                target.service,
                job_id,
                policy.pending_timeout,
            )
        if self.dry_run:
            report.submitted, report.cancelled = decision.submit, len(decision.cancel)
            report.reason = f"dry run: {decision.reason}"
            return
        if decision.cancel:
            try:
                self.cluster.cancel(decision.cancel, pending_only=True)
                report.cancelled = len(decision.cancel)
                log.info("%s: cancelled pending %s", target.service, ", ".join(decision.cancel))
            except ZhpcError as exc:
                report.error = f"cannot cancel: {exc}"
        if decision.submit:
            try:
                report.job_id = self._submit(target, decision.submit)
            except ZhpcError as exc:
                report.error = f"cannot submit: {exc}"
            else:
                report.submitted = decision.submit
                state.last_submit = self.clock()
                state.arrays[report.job_id] = state.last_submit
        alive = running + ending + len(pending) + report.submitted - report.cancelled
        self._last[target.service] = (
            alive,
            running + len(pending) + report.submitted - report.cancelled,
        )

    def _submit(self, target: Target, count: int) -> str:
        from zhpc.cluster.arrays import service_array_spec

        policy = target.policy
        spec = service_array_spec(self.config, target.service, count)
        spec = replace(spec, cpus=policy.cpus or spec.cpus, memory=policy.memory or spec.memory)
        self.config.cluster.job_workdir().mkdir(parents=True, exist_ok=True)
        job_id = self.cluster.submit(spec)
        log.info("%s: submitted %d task(s) as job %s", target.service, count, job_id)
        return job_id

    @staticmethod
    def _forget_arrays(state: ServiceState, jobs: list[JobInfo], now: float) -> None:
        """Drop arrays whose tasks have all finished (they were counted above), and ones
        the listing has not shown for a while."""
        finished: dict[str, bool] = {}
        for job in jobs:
            array = job.array_job_id or job.job_id
            finished[array] = finished.get(array, True) and job.state.finished
        for array, submitted in list(state.arrays.items()):
            if finished.get(array, now - submitted > _FORGET_AFTER):
                del state.arrays[array]

    def wants_cycle(self) -> bool:
        """True if a queue grew enough that more jobs would be wanted now (one cheap depth
        query per service, no scheduler call): lets the daemon react within a second."""
        state: ScalerState | None = None
        for target in self.targets:
            last = self._last.get(target.service)
            if last is None:
                return True
            alive, capacity = last
            if alive >= target.policy.max_jobs:
                continue
            depth = queue_and_lane(self.transport, target.queue)
            obs = Observation(depth.ready, depth.unacked or 0, depth.consumers)
            if decide(target.policy, obs).desired > capacity:
                state = state or self.store.load()
                service = state.of(target.service)
                cooling = (
                    service.last_submit is not None
                    and self.clock() - service.last_submit < target.policy.cooldown
                )
                if not cooling and service.crash_looping is None:
                    return True
        return False


def job_name(service: str) -> str:
    from zhpc.cluster.arrays import NAME_PREFIX

    return f"{NAME_PREFIX}{service}"


def _ending(job: JobInfo, margin: float, now: float) -> bool:
    """A running job whose wall-clock end is within ``margin`` s (it is draining)."""
    return job.end_time is not None and job.end_time.timestamp() - now < margin


def targets_for(config: Config, names: Sequence[str] = ()) -> list[Target]:
    """The services to scale: ``names``, else every ``scaler.<service>`` section."""
    from zhpc import plugins

    chosen = list(dict.fromkeys(names)) or sorted(config.scaler)
    if not chosen:
        raise ZhpcError(
            "no services to scale: add a scaler.<service> section to the "
            "configuration or name one with -s NAME"
        )
    known = plugins.available(plugins.SERVICES)
    found = []
    for name in chosen:
        if name not in known:
            raise ZhpcError(
                f"no service named {name!r} (available: {', '.join(known) or 'none installed'})"
            )
        settings = config.service(name)
        queue = settings.queue or getattr(plugins.load(plugins.SERVICES, name), "queue", None)
        found.append(
            Target(
                service=name,
                queue=queue or name,
                policy=config.scaler_for(name),
                margin=settings.end_margin + settings.drain_grace,
                idle_timeout=settings.idle_timeout,
            )
        )
    return found

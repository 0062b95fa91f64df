"""What ``zhpc status`` shows: live services, queue depths, zhpc's batch jobs, quarantined count.

* services: the ``transient.status`` heartbeats heard while listening (the
  newest per process), as :class:`HeartbeatBoard` keeps them;
* queues: every queue zhpc knows of (configured services, the queues named in
  heartbeats) with its retry lane and dead-letter queue;
* jobs: the cluster backend's jobs named ``zhpc*``, counted by service and state;
* quarantined: the number of entries in the quarantine store.

A part that cannot be read (no cluster, store missing) is reported as an error
string next to it instead of failing the whole view.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from zhpc.status import STATUS_END, STATUS_TEXT

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.config import Config
    from zhpc.message import Message
    from zhpc.transport.base import Transport

#: A service not heard from for this many heartbeat intervals is shown as lost.
LOST_AFTER = 3


class HeartbeatBoard:
    """The newest heartbeat of each process, from a ``transient.status`` subscription."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[float, dict[str, Any]]] = {}

    def on_status(self, message: Message) -> None:
        try:
            beat = message.json()
        except ValueError:
            return
        if isinstance(beat, dict) and isinstance(beat.get("host"), str):
            self.seen[beat["host"]] = (time.time(), beat)

    def services(self, now: float | None = None) -> list[dict[str, Any]]:
        now = time.time() if now is None else now
        rows = []
        for host_id, (seen, beat) in sorted(
            self.seen.items(), key=lambda kv: (str(kv[1][1].get("service")), kv[0])
        ):
            host, _, pid = host_id.rpartition(".")
            utilization = beat.get("utilization") or {}
            busy = sum(v for k, v in utilization.items() if str(k) == "4")
            status = beat.get("status")
            rows.append(
                {
                    "service": beat.get("service"),
                    "host": ".".join(reversed(host.split("."))) if host else host_id,
                    "pid": int(pid) if pid.isdigit() else None,
                    "slurm_job_id": beat.get("slurm_job_id"),
                    "state": STATUS_TEXT.get(status, str(status))
                    if status != STATUS_END
                    else "stopped",
                    "queue": beat.get("queue"),
                    "utilization": round(float(busy), 3),
                    "processed": beat.get("processed"),
                    "failed": beat.get("failed"),
                    "last_seen": round(now - seen, 1),
                }
            )
        return rows


def zhpc_queues(config: Config, services: list[dict[str, Any]]) -> list[str]:
    """Work queues of the configured services and of those heard from."""
    names = {config.service(name).queue or name for name in config.services}
    names |= {str(s["queue"]) for s in services if s.get("queue")}
    return sorted(n for n in names if not n.startswith(("dlq.", "retry.")) and "*" not in n)


def queue_rows(transport: Transport, names: list[str]) -> list[dict[str, Any]]:
    from zhpc.transport.accounting import dlq_name, retry_name

    rows = []
    for name in names:
        depth = transport.queue_depth(name)
        rows.append(
            {
                "queue": name,
                "ready": depth.ready,
                "unacked": depth.unacked,
                "consumers": depth.consumers,
                "retrying": transport.queue_depth(retry_name(name)).ready,
                "dead": transport.queue_depth(dlq_name(name)).ready,
            }
        )
    return rows


def job_rows(config: Config) -> tuple[list[dict[str, Any]], str | None]:
    """zhpc's batch jobs counted by service and state, or the reason they cannot be listed."""
    from zhpc.cluster import get_cluster
    from zhpc.cluster.arrays import NAME_PREFIX
    from zhpc.cluster.base import DEFAULT_NAME_PREFIX
    from zhpc.errors import ZhpcError

    try:
        with get_cluster(config.cluster) as cluster:
            jobs = cluster.jobs(DEFAULT_NAME_PREFIX)
    except (ZhpcError, OSError) as exc:
        return [], str(exc)
    counts = Counter((job.name.removeprefix(NAME_PREFIX), job.state.value) for job in jobs)
    return [
        {"service": service, "state": state, "jobs": count}
        for (service, state), count in sorted(counts.items())
    ], None


def quarantined(config: Config) -> tuple[int | None, str | None]:
    from zhpc.errors import ZhpcError
    from zhpc.quarantine import open_store

    try:
        with open_store(config.quarantine) as store:
            return store.count(), None
    except ZhpcError as exc:
        return None, str(exc)


def snapshot(
    config: Config, transport: Transport, board: HeartbeatBoard, *, jobs: bool = True
) -> dict[str, Any]:
    """Everything ``zhpc status --json`` prints."""
    services = board.services()
    result: dict[str, Any] = {
        "services": services,
        "queues": queue_rows(transport, zhpc_queues(config, services)),
        "jobs": [],
    }
    if jobs:
        result["jobs"], error = job_rows(config)
        if error:
            result["jobs_error"] = error
    result["quarantined"], error = quarantined(config)
    if error:
        result["quarantine_error"] = error
    return result

"""``zhpc status``: the services alive now, their queues, zhpc's batch jobs, the quarantine.

Services are known from their ``transient.status`` heartbeats, so a one-shot
``zhpc status`` listens for ``--listen`` seconds first (heartbeats come every
``services.X.heartbeat_interval``, 30 s by default). ``--watch`` keeps listening
and redraws a live view (rich) until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import RenderableType

#: Seconds between two redraws of --watch (queue depths are read each time).
WATCH_INTERVAL = 2.0
#: With --watch, batch jobs are listed at most this often (a scheduler query is not free).
JOBS_INTERVAL = 15.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "status",
        help="live services, queue depths, batch jobs and quarantined messages",
        description="What runs now: services (from their status heartbeats), the depths of "
        "zhpc's queues, zhpc's batch jobs by service and state, quarantined messages.",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help='one JSON object {"services", "queues", "jobs", "quarantined"}',
    )
    parser.add_argument("--watch", action="store_true", help="a live view, until Ctrl-C")
    parser.add_argument(
        "--listen",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how long to collect heartbeats first (default 5)",
    )
    parser.add_argument("--no-jobs", action="store_true", help="do not ask the scheduler")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from zhpc.config import load_config
    from zhpc.errors import ZhpcError
    from zhpc.status import STATUS_TOPIC
    from zhpc.statusview import HeartbeatBoard, snapshot
    from zhpc.transport import get_transport

    if args.listen < 0:
        raise ZhpcError("--listen must be 0 or more seconds")
    config = load_config(args.config, args.environment)
    board = HeartbeatBoard()
    with get_transport(config.broker) as transport:
        transport.subscribe_broadcast(STATUS_TOPIC, board.on_status)
        _listen(transport, args.listen)
        if args.watch:
            return _watch(config, transport, board, jobs=not args.no_jobs)
        view = snapshot(config, transport, board, jobs=not args.no_jobs)
    if args.json:
        print(json.dumps(view))
    else:
        from rich.console import Console

        Console().print(render(view))
    return 0


def _listen(transport: Any, seconds: float) -> None:
    until = time.monotonic() + seconds
    while (left := until - time.monotonic()) > 0:
        transport.poll(min(left, 0.5))


def _watch(config: Any, transport: Any, board: Any, *, jobs: bool) -> int:
    from rich.live import Live

    from zhpc.statusview import snapshot

    last_jobs: tuple[float, list[Any], Any] = (-JOBS_INTERVAL, [], None)
    try:
        with Live(auto_refresh=False, screen=False, transient=False) as live:
            while True:
                ask_jobs = jobs and time.monotonic() - last_jobs[0] >= JOBS_INTERVAL
                view = snapshot(config, transport, board, jobs=ask_jobs)
                if ask_jobs:
                    last_jobs = (time.monotonic(), view["jobs"], view.get("jobs_error"))
                else:
                    view["jobs"] = last_jobs[1]
                    if last_jobs[2]:
                        view["jobs_error"] = last_jobs[2]
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                live.update(
                    render(view, title=f"zhpc status  {stamp}  (Ctrl-C quits)"), refresh=True
                )
                _listen(transport, WATCH_INTERVAL)
    except KeyboardInterrupt:
        return 0


def render(view: dict[str, Any], title: str | None = None) -> RenderableType:
    """The view as rich tables: services, queues, jobs, and a line for the quarantine."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    services = Table(title="services", title_justify="left", expand=False)
    for column in ("service", "host", "pid", "job", "state", "busy", "processed", "failed", "seen"):
        services.add_column(
            column,
            justify="right" if column in ("pid", "busy", "processed", "failed", "seen") else "left",
        )
    for s in view["services"]:
        style = {
            "processing": "green",
            "idle": "cyan",
            "stopped": "dim",
            "shutting down": "yellow",
        }.get(s["state"], "")
        services.add_row(
            str(s["service"]),
            str(s["host"]),
            str(s["pid"] or ""),
            str(s["slurm_job_id"] or ""),
            Text(str(s["state"]), style=style),
            f"{s['utilization']:.0%}",
            str(s["processed"] or 0),
            Text(str(s["failed"] or 0), style="red" if s["failed"] else ""),
            f"{s['last_seen']:.0f}s ago",
        )
    if not view["services"]:
        services.caption = "no heartbeat heard"
    queues = Table(title="queues", title_justify="left")
    for column in ("queue", "ready", "unacked", "consumers", "retrying", "dead"):
        queues.add_column(column, justify="left" if column == "queue" else "right")
    for q in view["queues"]:
        queues.add_row(
            q["queue"],
            str(q["ready"]),
            "?" if q["unacked"] is None else str(q["unacked"]),
            str(q["consumers"]),
            str(q["retrying"]),
            Text(str(q["dead"]), style="red" if q["dead"] else ""),
        )
    jobs = Table(title="batch jobs", title_justify="left")
    for column in ("service", "state", "jobs"):
        jobs.add_column(column, justify="right" if column == "jobs" else "left")
    for j in view["jobs"]:
        jobs.add_row(j["service"], j["state"], str(j["jobs"]))
    if view.get("jobs_error"):
        jobs.caption = f"not listed: {view['jobs_error']}"
    count = view.get("quarantined")
    quarantine = Text(
        f"quarantined: {'?' if count is None else count}"
        + (
            f" ({view['quarantine_error']})"
            if view.get("quarantine_error")
            else "  (zhpc dlq list)"
            if count
            else ""
        ),
        style="red" if count else "",
    )
    parts: list[RenderableType] = [services, queues, jobs, quarantine]
    if title:
        parts.insert(0, Text(title, style="bold"))
    return Group(*parts)

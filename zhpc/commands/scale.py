"""``zhpc scale``: keep enough service jobs for the work that waits, and no more.

``--once`` runs one cycle (for cron) under a lock: an overlapping run exits 0 at
once, saying so. ``--daemon`` runs a cycle every ``--interval`` seconds, and
sooner when a queue grows (one cheap depth query per service every ``--poll``
seconds, no scheduler call); SIGTERM lets the cycle in hand finish, then exits.
Exit status 1 only when a cycle could not do its job (broker or scheduler
unreachable, a submission refused).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.config import Config
    from zhpc.scaler import Scaler, ServiceReport, Target
    from zhpc.scaler_state import StateStore

log = logging.getLogger(__name__)

_COLUMNS = (
    ("SERVICE", "service", 18),
    ("QUEUE", "queue", 20),
    ("READY", "ready", 6),
    ("UNACKED", "unacked", 7),
    ("CONS", "consumers", 4),
    ("RUN", "running", 4),
    ("PEND", "pending", 4),
    ("DESIRED", "desired", 7),
    ("SUBMIT", "submitted", 6),
    ("CANCEL", "cancelled", 6),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "scale",
        help="submit service job arrays for the work waiting in their queues",
        description="Size each service's Slurm (or local) jobs to its queue: one cycle with "
        "--once (cron), or a loop with --daemon. Services: the scaler.<service> sections of "
        "the configuration, or -s NAME.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="run one cycle (the default)")
    mode.add_argument("--daemon", action="store_true", help="run cycles until SIGTERM")
    mode.add_argument(
        "--reset",
        action="store_true",
        help="forget the crash-loop verdict of the services, then exit",
    )
    parser.add_argument(
        "--interval",
        type=float,
        metavar="S",
        help="seconds between daemon cycles (default: the smallest scaler.<service>.interval)",
    )
    parser.add_argument(
        "--poll",
        type=float,
        default=0.5,
        metavar="S",
        help="daemon: look at the queue depths this often between cycles (default: 0.5)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the decisions, submit and cancel nothing"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per service per cycle")
    parser.add_argument(
        "-s",
        "--service",
        action="append",
        default=[],
        metavar="NAME",
        help="scale only this service (repeatable)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="daemon: serve Prometheus /metrics (queue depths, jobs) on PORT",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from zhpc.config import load_config
    from zhpc.errors import ZhpcError
    from zhpc.scaler import targets_for
    from zhpc.scaler_state import StateStore

    for option in ("interval", "poll"):
        value = getattr(args, option)
        if value is not None and value <= 0:
            raise ZhpcError(f"--{option} must be a positive number of seconds, not {value:g}")
    if args.metrics_port is not None and not args.daemon:
        raise ZhpcError("--metrics-port needs --daemon (one cycle has nothing to serve)")
    config = load_config(args.config, args.environment)
    targets = targets_for(config, args.service)
    store = StateStore(environment=config.environment)
    if args.reset:
        return _reset(store, targets)
    if args.daemon:
        interval = args.interval or min(t.policy.interval for t in targets)
        return _daemon(config, targets, store, args, interval)
    return _once(config, targets, store, args)


def _scaler(config: Config, targets: list[Target], store: StateStore, dry_run: bool) -> Scaler:
    from zhpc.cluster import get_cluster
    from zhpc.errors import ZhpcError
    from zhpc.scaler import BrokerUnreachable, Scaler
    from zhpc.transport import get_transport
    from zhpc.transport.management import ManagementClient

    transport = get_transport(config.broker)
    try:
        transport.connect()
    except ZhpcError as exc:
        raise BrokerUnreachable(str(exc)) from None
    try:
        cluster = get_cluster(config.cluster)
    except BaseException:
        transport.close()
        raise
    return Scaler(
        config,
        targets,
        transport=transport,
        cluster=cluster,
        store=store,
        management=ManagementClient.from_config(config.broker),
        dry_run=dry_run,
    )


def _close(scaler: Scaler) -> None:
    scaler.transport.close()
    scaler.cluster.close()


def _once(
    config: Config, targets: list[Target], store: StateStore, args: argparse.Namespace
) -> int:
    from zhpc.scaler_state import LockBusy

    try:
        with store.locked():
            scaler = _scaler(config, targets, store, args.dry_run)
            try:
                reports = scaler.cycle()
            finally:
                _close(scaler)
    except LockBusy:
        print(
            f"zhpc scale: another zhpc scale is running a cycle (lock {store.lock_path}); "
            "nothing to do",
            file=sys.stderr,
        )
        return 0
    return _show(reports, args.json, header=True)


def _show(reports: list[ServiceReport], as_json: bool, header: bool) -> int:
    """Print one cycle; 1 if a service's submission or cancellation failed."""
    if as_json:
        for report in reports:
            print(json.dumps(report.to_json()), flush=True)
    else:
        if header:
            print(" ".join(f"{title:<{width}}" for title, _, width in _COLUMNS) + " REASON")
        for report in reports:
            data = report.to_json()
            cells = ["?" if data[key] is None else str(data[key]) for _, key, _ in _COLUMNS]
            print(
                " ".join(
                    f"{cell:<{width}}" for cell, (_, _, width) in zip(cells, _COLUMNS, strict=True)
                )
                + " "
                + report.reason,
                flush=True,
            )
    failed = [r for r in reports if r.error]
    for report in failed:
        print(f"zhpc: error: {report.service}: {report.error}", file=sys.stderr, flush=True)
    return 1 if failed else 0


def _daemon(
    config: Config,
    targets: list[Target],
    store: StateStore,
    args: argparse.Namespace,
    interval: float,
) -> int:
    from zhpc.errors import TransportError, ZhpcError
    from zhpc.jobenv import Drain
    from zhpc.scaler import BrokerUnreachable
    from zhpc.scaler_state import LockBusy

    scaler: Scaler | None = None
    next_cycle = 0.0
    first = True
    metrics = None
    if args.metrics_port is not None:
        from zhpc.metrics import Metrics

        metrics = Metrics()
        log.warning("zhpc scale: metrics on port %d", metrics.serve(args.metrics_port))
    with Drain() as drain:
        log.info("scaling %s every %g s", ", ".join(t.service for t in targets), interval)
        while not drain.requested:
            now = time.monotonic()
            due = now >= next_cycle
            try:
                if scaler is None and due:
                    scaler = _scaler(config, targets, store, args.dry_run)
                if scaler is not None and (due or scaler.wants_cycle()):
                    next_cycle = now + interval
                    with store.locked():
                        reports = scaler.cycle()
                    _show(reports, args.json, header=first)
                    first = False
                    if metrics is not None:
                        metrics.observe_cycle(reports)
            except LockBusy:
                log.info("another zhpc scale is running a cycle; skipping this one")
            except (TransportError, BrokerUnreachable) as exc:  # reconnect next cycle
                print(f"zhpc: error: {exc}", file=sys.stderr, flush=True)
                next_cycle = now + interval
                if scaler is not None:
                    _close(scaler)
                    scaler = None
            except ZhpcError as exc:  # e.g. the scheduler away: the next cycle retries
                print(f"zhpc: error: {exc}", file=sys.stderr, flush=True)
                next_cycle = now + interval
            except Exception:  # a bug must not stop the scaling of every service
                log.exception("scaler cycle failed")
                next_cycle = now + interval
            drain.wait(args.poll)
        log.info("zhpc scale: %s; stopping", drain.reason)
    if scaler is not None:
        _close(scaler)
    if metrics is not None:
        metrics.close()
    return 0


def _reset(store: StateStore, targets: list[Target]) -> int:
    from zhpc.errors import ZhpcError
    from zhpc.scaler_state import LockBusy

    try:
        with store.locked(wait=120):
            state = store.load()
            for target in targets:
                service = state.of(target.service)
                service.crash_looping, service.failures = None, 0
            store.save(state)
    except LockBusy:
        raise ZhpcError(f"the scaler lock {store.lock_path} stayed busy for 120 s") from None
    print(f"crash-loop state reset for {', '.join(t.service for t in targets)}")
    return 0

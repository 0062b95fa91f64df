"""``zhpc service``: run one installed service, or list them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from zhpc.commands.argtypes import bounded_count, positive_seconds


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "service",
        help="run a service on its queue until drained",
        description="Run a service until it is told to stop (SIGTERM, SIGINT, SIGUSR1, SIGUSR2), "
        "its --max-runtime or the batch job's end time comes, or it is idle for --idle-timeout.",
    )
    parser.add_argument("-s", "--service", metavar="NAME", help="the service to run")
    parser.add_argument("--list", action="store_true", help="list installed services and exit")
    parser.add_argument("--queue", help="consume this queue instead of the service's own")
    parser.add_argument(
        "--prefetch",
        type=bounded_count(65535),
        metavar="N",
        help="messages held at once, 1-65535 (default: config)",
    )
    parser.add_argument(
        "--max-runtime",
        type=positive_seconds,
        metavar="SECONDS",
        help="drain after this many seconds",
    )
    parser.add_argument(
        "--idle-timeout",
        type=positive_seconds,
        metavar="SECONDS",
        help="drain after this long without a message",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus /metrics on PORT (0: any free port, logged)",
    )
    parser.add_argument(
        "--metrics-textfile",
        type=Path,
        metavar="DIR",
        help="write the metrics to DIR (node_exporter's textfile collector)",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from zhpc import plugins

    if args.list:
        for name, point in plugins.available(plugins.SERVICES).items():
            cls = plugins.load(plugins.SERVICES, name)
            queue = getattr(cls, "queue", None) or name
            summary = (cls.__doc__ or "").strip().splitlines()[:1]
            print(f"{name:<20} queue {queue:<24} {summary[0] if summary else point.value}")
        return 0
    if not args.service:
        from zhpc.errors import ZhpcError

        raise ZhpcError("name a service with -s NAME (zhpc service --list shows them)")

    from zhpc.config import load_config
    from zhpc.service import Service, ServiceRunner
    from zhpc.transport import get_transport

    cls = plugins.load(plugins.SERVICES, args.service)
    if not (isinstance(cls, type) and issubclass(cls, Service)):
        from zhpc.errors import ZhpcError

        raise ZhpcError(f"{args.service!r} is not a zhpc Service class")
    config = load_config(args.config, args.environment)
    overrides = {
        key: value
        for key, value in (
            ("prefetch", args.prefetch),
            ("max_runtime", args.max_runtime),
            ("idle_timeout", args.idle_timeout),
        )
        if value is not None
    }
    service_config = config.service(args.service).replace(**overrides)
    service = cls(args.service, service_config, config)
    runner = getattr(cls, "runner_class", None) or ServiceRunner
    if runner is not ServiceRunner and (
        args.metrics_port is not None or args.metrics_textfile is not None
    ):
        from zhpc.errors import ZhpcError

        raise ZhpcError(f"{args.service!r} runs with its own runner, which has no metrics")
    # The service's own modules are imported by now (if they use asyncio it is real):
    # what only the broker client drags in waits until something uses it (~9 MB).
    from zhpc import deferred

    deferred.defer("ssl", "asyncio")
    transport = get_transport(config.broker)
    transport.connect()
    try:
        # A service that consumes several queues (Schlockmeister) brings its own runner.
        from zhpc.events import emitter_for
        from zhpc.jobenv import JobEnvironment
        from zhpc.logfields import set_process_fields

        job = JobEnvironment.from_environ()
        set_process_fields(service=args.service, slurm_job_id=job.slurm_job_id)
        if runner is ServiceRunner:
            events = emitter_for(config, args.service, job)
            metrics = _metrics(args)
            if metrics is not None:
                from zhpc.events import Tee

                events = Tee(events, metrics)
            return runner(service, transport, queue=args.queue, job=job, events=events).run()
        return runner(service, transport, queue=args.queue, job=job).run()
    finally:
        transport.close()


def _metrics(args: argparse.Namespace) -> Any:
    """The Prometheus metrics the command line asks for, serving already; None if none."""
    if args.metrics_port is None and args.metrics_textfile is None:
        return None
    import logging

    from zhpc.metrics import Metrics

    metrics = Metrics(args.service)
    if args.metrics_port is not None:
        port = metrics.serve(args.metrics_port)
        logging.getLogger("zhpc.service").warning("%s: metrics on port %d", args.service, port)
    if args.metrics_textfile is not None:
        metrics.textfile(args.metrics_textfile)
    return metrics

"""``zhpc service``: run one installed service, or list them."""

from __future__ import annotations

import argparse


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
    parser.add_argument("--prefetch", type=int, help="messages held at once (default: config)")
    parser.add_argument("--max-runtime", type=float, metavar="SECONDS",
                        help="drain after this many seconds")
    parser.add_argument("--idle-timeout", type=float, metavar="SECONDS",
                        help="drain after this long without a message")
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
    service_config = config.service(args.service).model_copy(update=overrides)
    service = cls(args.service, service_config, config)
    # The service's own modules are imported by now (if they use asyncio it is real):
    # what only the broker client drags in waits until something uses it (~9 MB).
    from zhpc import deferred

    deferred.defer("ssl", "asyncio")
    transport = get_transport(config.broker)
    transport.connect()
    try:
        # A service that consumes several queues (Schlockmeister) brings its own runner.
        runner = getattr(cls, "runner_class", None) or ServiceRunner
        return runner(service, transport, queue=args.queue).run()
    finally:
        transport.close()

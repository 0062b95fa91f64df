"""``zhpc shutdown``: tell running services to drain and exit 0 (a broadcast, like Zocalo's)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "shutdown",
        help="make running services drain and exit 0",
        description="Broadcast a shutdown: the services it names (all with --all; --service "
        "and --host combine) finish or hand back the message in hand and exit 0. Services "
        "started afterwards are not affected.",
    )
    parser.add_argument("--service", metavar="NAME", help="only instances of this service")
    parser.add_argument("--host", metavar="H", help="only services on host H")
    parser.add_argument("--all", action="store_true", help="every service everywhere")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from zhpc.config import load_config
    from zhpc.errors import ZhpcError
    from zhpc.shutdown import shutdown_message
    from zhpc.transport import get_transport

    if args.all and (args.service or args.host):
        raise ZhpcError("--all shuts down every service: give it alone, or --service/--host")
    if not (args.all or args.service or args.host):
        raise ZhpcError("name what to shut down: --service NAME, --host H, or --all")
    config = load_config(args.config, args.environment)
    with get_transport(config.broker) as transport:
        transport.publish(shutdown_message(service=args.service, host=args.host))
    what = (
        "every service"
        if args.all
        else " ".join(
            part
            for part in (
                f"service {args.service}" if args.service else "",
                f"on host {args.host}" if args.host else "",
            )
            if part
        )
    )
    print(f"shutdown sent to {what}")
    return 0

"""``zhpc wrap``: run a program (or a wrapper plug-in) in a batch job and report its result."""

from __future__ import annotations

import argparse

from zhpc.commands.argtypes import positive_seconds


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "wrap",
        help="run a program in a batch job and send its result on through the recipe",
        description="Run CMD (never through a shell) with signals forwarded to it. With "
        "--recipewrapper, stage the step's inputs, send status heartbeats, and send the named "
        "output 'success' or 'failure' and then 'done' with exit code, runtime, job id, output "
        "tails and staged-out files. Exits with CMD's exit code (2 for zhpc wrap's own errors). "
        "Results the broker could not take are saved next to FILE; send them with --resend.",
    )
    parser.add_argument("--wrap", metavar="NAME", help="wrapper plug-in to run (see --list)")
    parser.add_argument("--recipewrapper", metavar="FILE", help="recipe step to report to")
    parser.add_argument("--workdir", metavar="DIR", help="run here (default: current directory)")
    parser.add_argument(
        "--heartbeat",
        type=positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="seconds between status broadcasts (default: 30)",
    )
    parser.add_argument("--list", action="store_true", help="list installed wrappers and exit")
    parser.add_argument(
        "--resend",
        metavar="RESULTS",
        help="publish results a previous run saved because the broker was away",
    )
    parser.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- CMD ARG...",
        help="the program and its arguments",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from zhpc.errors import ZhpcError

    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if args.list:
        from zhpc import plugins

        for name, point in plugins.available(plugins.WRAPPERS).items():
            print(f"{name:<20} {point.value}")
        return 0
    if args.resend:
        from zhpc.config import load_config
        from zhpc.wrap import resend

        sent = resend(Path(args.resend), load_config(args.config, args.environment))
        print(f"sent {sent} message(s)")
        return 0
    if not command and not args.wrap:
        raise ZhpcError("nothing to run: zhpc wrap [--wrap NAME] [--recipewrapper FILE] -- CMD")
    if args.heartbeat <= 0:
        raise ZhpcError("--heartbeat must be a positive number of seconds")
    if args.workdir is not None and not Path(args.workdir).is_dir():
        raise ZhpcError(f"--workdir {args.workdir}: no such directory")

    from zhpc.wrap import WrapRun

    return WrapRun(
        command,
        wrapper=args.wrap,
        recipewrapper=Path(args.recipewrapper) if args.recipewrapper else None,
        workdir=Path(args.workdir) if args.workdir else None,
        config_path=args.config,
        environment=args.environment,
        heartbeat_interval=args.heartbeat,
    ).run()

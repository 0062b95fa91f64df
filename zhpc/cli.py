"""The ``zhpc`` command line.

Each command group lives in ``zhpc/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``handler`` to a
function ``handler(args) -> int``. Modules are imported only to build the
parser; heavy imports belong inside handlers so that start-up stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from zhpc import __version__
from zhpc.errors import ZhpcError

#: Command modules, in the order ``zhpc --help`` lists them. Only working commands belong here.
COMMAND_MODULES: tuple[str, ...] = (
    "go",
    "demo",
    "recipe",
    "service",
    "submit",
    "scale",
    "wrap",
    "dlq",
    "trace",
    "status",
    "shutdown",
    "config",
)

log = logging.getLogger("zhpc")


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="zhpc",
        description="Automated data processing on HPC batch clusters, in the style of Zocalo.",
    )
    parser.add_argument("--version", action="version", version=f"zhpc {__version__}")
    parser.add_argument("--config", metavar="FILE", help="configuration file (default: search)")
    parser.add_argument(
        "-e",
        "--environment",
        metavar="NAME",
        help="configuration environment to overlay (default: $ZHPC_ENV)",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more output")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less output")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="log line format (default: the configuration's logging.format, else text)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"zhpc.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    verbosity = args.verbose - args.quiet
    from zhpc.logs import setup_logging

    setup_logging(verbosity, args.log_format)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(handler(args) or 0)
    except ZhpcError as exc:
        if verbosity > 0:
            log.exception("%s", exc)
        print(f"zhpc: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("zhpc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # a bug, not a user error: still one line unless -v
        if verbosity > 0:
            log.exception("internal error")
        print(f"zhpc: internal error: {type(exc).__name__}: {exc} (run with -v for details)",
              file=sys.stderr)
        return 1


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entry()

"""The ``zhpc`` command line.

Each command group lives in ``zhpc/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``handler`` to a
function ``handler(args) -> int``. Only the module of the command named on the
command line is imported (all of them for ``zhpc --help``, none for
``zhpc --version``); heavy imports belong inside handlers so that start-up
stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
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

#: Global options that take a value: the word after them is never the command.
_VALUED_OPTIONS = ("--config", "--environment", "--log-format")


def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``, without importing shutil.

    argparse makes a help formatter for every option it adds, and its default
    asks shutil for the width: shutil (with bz2, lzma and fnmatch) is then ~2 ms
    of every command's start-up, ``zhpc wrap``'s among them, help or not.
    """
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class _Formatter(argparse.HelpFormatter):
    """argparse's help formatter, told the terminal's width (see :func:`_terminal_columns`)."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            width = _terminal_columns() - 2  # as argparse's own default
        super().__init__(prog, indent_increment, max_help_position, width)


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line with exit code 2."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _commands_needed(argv: Sequence[str]) -> tuple[str, ...]:
    """The command modules the parser needs for ``argv``: only the one it names.

    Anything this cannot read for certain (no command, an unknown word, top-level
    help) gets every module, so argparse still lists the choices and reports errors.
    """
    value_next = False
    for arg in argv:
        if value_next:
            value_next = False
        elif arg == "--version":
            return ()  # argparse prints the version and exits when it reaches this
        elif arg in ("-h", "--help", "--"):
            return COMMAND_MODULES
        elif arg == "-e" or (
            arg.startswith("--")
            and "=" not in arg
            and len(arg) > 2
            and any(option.startswith(arg) for option in _VALUED_OPTIONS)
        ):
            value_next = True  # also argparse's abbreviations, such as --conf
        elif not arg.startswith("-"):
            return (arg,) if arg in COMMAND_MODULES else COMMAND_MODULES
    return COMMAND_MODULES


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``zhpc`` parser; given ``argv``, with only the command modules it needs."""
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
    needed = COMMAND_MODULES if argv is None else _commands_needed(argv)
    for name in needed:
        importlib.import_module(f"zhpc.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    verbosity = args.verbose - args.quiet
    from zhpc.logs import setup_logging

    setup_logging(verbosity, args.log_format)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    import logging

    log = logging.getLogger("zhpc")
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
        print(
            f"zhpc: internal error: {type(exc).__name__}: {exc} (run with -v for details)",
            file=sys.stderr,
        )
        return 1


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entry()

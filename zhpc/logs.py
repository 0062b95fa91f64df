"""Logging set-up shared by every command: text for people, JSON lines for log shippers.

json is imported by the JSON formatter when it first formats: ``zhpc wrap`` and
``zhpc --help`` log in text, and start-up is what they are judged on.
"""

from __future__ import annotations

import logging
import sys
import time

TYPE_CHECKING = False  # not typing's: typing costs ms at zhpc wrap's start-up
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

_RESERVED = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the record's extra fields kept as keys."""

    def format(self, record: logging.LogRecord) -> str:
        import json

        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


_LEVELS = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
}
#: Whether the command line chose the level / format (the configuration then yields to it).
_chosen_on_command_line = {"level": False, "format": False}


def setup_logging(verbosity: int = 0, fmt: str | None = None, *, level: str | None = None) -> None:
    """Configure the root logger.

    ``verbosity`` is the -v count minus the -q count; a non-zero value or an
    explicit ``fmt`` wins over what a configuration file asks for later
    (:func:`apply_config`).
    """
    _chosen_on_command_line["level"] = verbosity != 0
    _chosen_on_command_line["format"] = fmt is not None
    _install(
        _level_for(verbosity) if level is None else _LEVELS[level],
        fmt or "text",
        debug_pika=verbosity >= 3,
    )


def apply_config(level: str, fmt: str, gelf: str = "") -> None:
    """Use the configuration's ``logging`` section where the command line chose nothing.

    Does nothing when zhpc is used as a library (logging is then the caller's).
    ``gelf``: also send every record to a Graylog server (``udp://host:port``).
    """
    if _installed is None:
        return
    _install_gelf(gelf)
    root = logging.getLogger()
    current_fmt = "json" if isinstance(_installed.formatter, JsonFormatter) else "text"
    new_level = root.level if _chosen_on_command_line["level"] else _LEVELS[level]
    new_fmt = current_fmt if _chosen_on_command_line["format"] else fmt
    _install(new_level, new_fmt, debug_pika=logging.getLogger("pika").level == logging.DEBUG)


def _level_for(verbosity: int) -> int:
    if verbosity == 1:
        return logging.INFO
    if verbosity >= 2:
        return logging.DEBUG
    if verbosity < 0:
        return logging.ERROR
    return logging.WARNING


_installed: logging.Handler | None = None
_gelf: tuple[str, logging.Handler] | None = None


def _install_gelf(url: str) -> None:
    global _gelf
    if _gelf is not None and _gelf[0] == url:
        return
    root = logging.getLogger()
    if _gelf is not None:
        root.removeHandler(_gelf[1])
        _gelf[1].close()
        _gelf = None
    if url:
        from zhpc.logfields import gelf_handler

        handler = gelf_handler(url)
        root.addHandler(handler)
        _gelf = (url, handler)


def _install(level: int, fmt: str, *, debug_pika: bool) -> None:
    global _installed
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
    from zhpc.logfields import FieldsFilter, MaskingFilter

    handler.addFilter(MaskingFilter())
    handler.addFilter(FieldsFilter())
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
    root.addHandler(handler)
    root.setLevel(level)
    _installed = handler
    set_pika_level(debug=debug_pika)


def set_pika_level(*, debug: bool = False) -> None:
    """The one place that sets pika's log level (``-vvv`` shows pika's own debugging).

    pika logs every failed connection attempt and every expected 404 on the
    topology channel at ERROR/WARNING, several lines each; zhpc reports those
    itself in one line, so pika is quiet otherwise.
    """
    logging.getLogger("pika").setLevel(logging.DEBUG if debug else logging.CRITICAL)


def default_pika_level() -> None:
    """Quiet pika unless its level was chosen already (by setup_logging, or a program
    that uses zhpc as a library and configured pika itself)."""
    if logging.getLogger("pika").level == logging.NOTSET:
        set_pika_level()

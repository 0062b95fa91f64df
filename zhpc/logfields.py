"""Fields every log record carries where known, password masking, and the GELF handler.

``recipe_id``/``step`` are the message being processed (set by the runner and
``zhpc wrap``), ``service``/``slurm_job_id`` the process's own (set once at
start). :class:`FieldsFilter` puts them on each record, so JSON log lines get
them as keys and GELF (``logging.gelf: udp://host:port``, graypy) as the
additional fields ``_recipe_id``, ``_step``, ``_service``, ``_slurm_job_id``.
:class:`MaskingFilter` removes URL passwords from the text first: a log line
never carries one, whoever logged it.

Every command installs these filters, ``zhpc wrap`` too: typing, urllib.parse
and :mod:`zhpc.masking` are imported only once a line has a URL to mask or a
GELF handler is made (several ms of each wrap's start-up otherwise).
"""

from __future__ import annotations

import contextvars
import logging
import re

from zhpc.errors import ConfigError

TYPE_CHECKING = False  # not typing's: typing costs ms at zhpc wrap's start-up
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

FIELDS = ("recipe_id", "step", "service", "slurm_job_id")
_process: dict[str, Any] = {}
_message: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "zhpc_log_message", default=None
)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S+")


def set_process_fields(**fields: Any) -> None:
    """Fields of this whole process (``service``, ``slurm_job_id``); None values are dropped."""
    _process.update({k: v for k, v in fields.items() if v is not None})


def set_message(recipe_id: str | None, step: int | None) -> None:
    """The message being processed now (this thread); ``clear_message`` when done."""
    _message.set({"recipe_id": recipe_id, "step": step})


def clear_message() -> None:
    _message.set(None)


def clear_fields() -> None:
    """Forget the process's and the message's fields (tests; a library user)."""
    _process.clear()
    clear_message()


def current_fields() -> dict[str, Any]:
    fields = dict(_process)
    fields.update({k: v for k, v in (_message.get() or {}).items() if v is not None})
    return fields


class FieldsFilter(logging.Filter):
    """Adds the known :data:`FIELDS` to a record (never overwriting the logger's own extra)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in current_fields().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def mask_text(text: str) -> str:
    if "://" not in text:
        return text
    from zhpc.masking import mask_url

    return _URL.sub(lambda found: mask_url(found.group()), text)


class MaskingFilter(logging.Filter):
    """Masks URL passwords in the message and the traceback text before any handler sees them."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_text(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_text(record.exc_text)
        return True


def gelf_handler(url: str) -> logging.Handler:
    """A graypy GELF handler for ``udp://host:port`` (or ``tcp://``), with both filters."""
    from urllib.parse import urlsplit

    from zhpc.masking import mask_url

    parts = urlsplit(url)
    try:
        port = parts.port or 12201
    except ValueError:
        raise ConfigError(f"logging.gelf: bad port in {mask_url(url)!r}") from None
    if parts.scheme not in ("udp", "tcp") or not parts.hostname:
        raise ConfigError(
            f"logging.gelf must be udp://host:port or tcp://host:port, not {mask_url(url)!r}"
        )
    try:
        import graypy
    except ImportError:
        raise ConfigError("logging.gelf needs graypy: pip install 'zhpc[observe]'") from None
    cls = graypy.GELFUDPHandler if parts.scheme == "udp" else graypy.GELFTCPHandler
    handler = cls(parts.hostname, port, debugging_fields=False, extra_fields=True)
    handler.addFilter(MaskingFilter())
    handler.addFilter(FieldsFilter())
    return handler

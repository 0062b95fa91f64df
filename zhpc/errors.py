"""Exception hierarchy.

Every error a user can cause derives from :class:`ZhpcError`; the CLI prints
it as one line and exits with its ``exit_code`` (2 unless stated otherwise).
"""

from __future__ import annotations


class ZhpcError(Exception):
    """A problem the user can fix; shown as one line, never a traceback."""

    exit_code = 2


class ConfigError(ZhpcError):
    """Configuration file missing, unreadable or invalid."""


class RecipeError(ZhpcError):
    """A recipe or recipe message is malformed."""


class TransportError(ZhpcError):
    """The broker could not be reached or refused an operation."""


class UnroutableError(TransportError):
    """The broker could not route a published message to any queue."""


class InvalidHeaders(ZhpcError, ValueError):
    """Message headers that some broker cannot carry faithfully; refused when a message is built."""


class MalformedBody(ZhpcError, ValueError):
    """The body of a received message is not UTF-8 JSON."""


class ClusterError(ZhpcError):
    """The batch scheduler could not be reached or refused a request."""


class StagingError(ZhpcError):
    """A file may not be staged (outside the allowed roots, or missing)."""


class Rejected(ZhpcError):
    """A message that can never be processed: dead-letter it now instead of retrying."""


class OutcomeUnknown(ZhpcError):
    """An action may or may not have happened (e.g. a submit that timed out).

    Never an error route (the action may yet succeed, and report success): the
    message is retried, and the retry looks first whether it happened.
    """

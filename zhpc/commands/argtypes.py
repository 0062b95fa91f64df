"""argparse types for numbers a user types: refused at parse time as one usage line.

``type=float`` takes ``inf``, ``nan`` and ``-1``; a service told to run ``inf``
seconds or to idle for ``nan`` fails later with a traceback, or never idles.
"""

from __future__ import annotations

import argparse
import math

#: Longest number of seconds an option takes: ten years is no batch job.
MAX_SECONDS = 10 * 365 * 86400.0


def positive_seconds(text: str) -> float:
    """A finite number of seconds, greater than 0 and at most :data:`MAX_SECONDS`."""
    try:
        value = float(text) if len(text) <= 40 else math.nan
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number of seconds") from None
    if not math.isfinite(value) or not 0 < value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r}: give a number of seconds above 0 and at most {MAX_SECONDS:.0f}"
        )
    return value


def bounded_count(maximum: int):
    """An integer from 1 to ``maximum`` (ASCII digits only; ``int()`` takes others)."""

    def count(text: str) -> int:
        stripped = text.strip()
        if not (stripped.isascii() and stripped.isdigit()) or len(stripped) > 12:
            raise argparse.ArgumentTypeError(
                f"{text[:40]!r}: give a whole number from 1 to {maximum}"
            )
        value = int(stripped)
        if not 1 <= value <= maximum:
            raise argparse.ArgumentTypeError(f"{value} is not from 1 to {maximum}")
        return value

    return count

"""Who a process is, from ``/proc``: so a recycled pid is never mistaken for the one we knew.

A pid alone names a process only while it lives; the pid plus its start time
(and, across reboots, the boot id) names it for good. Read on demand, never at
import: the boot id is read once, the first time it is asked for.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path


@functools.cache
def boot_id() -> str:
    """This boot's random id (Linux); empty where /proc does not have it."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name; OSError if unreadable."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name is in parentheses and may itself contain ") ".
    return stat[stat.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot); None if it is gone, a zombie, or unknown."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def identity(pid: int) -> str | None:
    """``BOOT_ID:START_TIME`` of a live process; None if it is gone or a zombie.

    Where /proc is missing (not Linux) only existence can be checked: a live
    process is then ``"?"``, which matches any identity.
    """
    try:
        fields = _stat_fields(pid)
    except FileNotFoundError:
        return None
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "?"
    if fields[0] in ("Z", "X"):
        return None
    return f"{boot_id()}:{fields[19]}"

"""What ``zhpc scale`` remembers between cycles, and the lock that makes one cycle at a time.

Cron starts a new process for every cycle, so everything a decision needs from
the past lives in a small JSON file under ``$ZHPC_HOME/scaler/``: when each
service last submitted, which arrays the scaler submitted (only those may it
cancel), which finished jobs it already counted, and the crash-loop verdict.
Writes are atomic (a temporary file renamed over the old one). The lock is an
``fcntl.flock`` on a file beside it, held for one cycle: a second run that finds
it taken skips its cycle instead of deciding on the same numbers twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zhpc.config import zhpc_home

log = logging.getLogger(__name__)

_VERSION = 1
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass
class ServiceState:
    """One service's memory."""

    #: Epoch seconds of the last submission.
    last_submit: float | None = None
    #: Arrays this scaler submitted: job id -> epoch seconds of the submission.
    arrays: dict[str, float] = field(default_factory=dict)
    #: Finished jobs already counted as failures or successes.
    seen_finished: list[str] = field(default_factory=list)
    #: Job failures in a row.
    failures: int = 0
    #: Set when the service is crash-looping: why and since when (no more submissions).
    crash_looping: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, data: Any) -> ServiceState:
        if not isinstance(data, dict):
            return cls()
        arrays = data.get("arrays")
        seen = data.get("seen_finished")
        crash = data.get("crash_looping")
        last = data.get("last_submit")
        return cls(
            last_submit=float(last) if isinstance(last, int | float) else None,
            arrays={str(k): float(v) for k, v in arrays.items() if isinstance(v, int | float)}
            if isinstance(arrays, dict)
            else {},
            seen_finished=[str(s) for s in seen] if isinstance(seen, list) else [],
            failures=int(data.get("failures") or 0),
            crash_looping=crash if isinstance(crash, dict) else None,
        )


@dataclass
class ScalerState:
    """All services' memory, as stored in the state file."""

    services: dict[str, ServiceState] = field(default_factory=dict)

    def of(self, service: str) -> ServiceState:
        return self.services.setdefault(service, ServiceState())

    def to_json(self) -> dict[str, Any]:
        return {
            "version": _VERSION,
            "services": {name: asdict(s) for name, s in sorted(self.services.items())},
        }

    @classmethod
    def from_json(cls, data: Any) -> ScalerState:
        services = data.get("services") if isinstance(data, dict) else None
        if not isinstance(services, dict):
            return cls()
        return cls({str(name): ServiceState.from_json(s) for name, s in services.items()})


class LockBusy(Exception):
    """Another ``zhpc scale`` holds the lock."""


class StateStore:
    """The state file and its lock for one configuration environment."""

    def __init__(self, directory: Path | None = None, environment: str | None = None) -> None:
        self.directory = (directory or zhpc_home() / "scaler").expanduser()
        stem = _SAFE.sub("_", environment or "default")
        self.path = self.directory / f"{stem}.json"
        self.lock_path = self.directory / f"{stem}.lock"

    @contextlib.contextmanager
    def locked(self, wait: float = 0.0) -> Iterator[None]:
        """Hold the lock; LockBusy if another process still holds it after ``wait`` s."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as handle:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockBusy(str(self.lock_path)) from None
                    time.sleep(0.1)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def load(self) -> ScalerState:
        """The stored state; an empty one if there is none or it cannot be read."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return ScalerState()
        except OSError as exc:
            log.warning("cannot read scaler state %s (%s); starting afresh", self.path, exc)
            return ScalerState()
        try:
            return ScalerState.from_json(json.loads(text))
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("scaler state %s is damaged (%s); starting afresh", self.path, exc)
            return ScalerState()

    def save(self, state: ScalerState) -> None:
        """Replace the state file atomically, so a crash never leaves half a file."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(state.to_json(), handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

"""A spool of messages that could not be sent yet (``zhpc go`` when the broker is down).

One JSON file per message in ``$ZHPC_HOME/spool/``, in the layout of Zocalo's
``zocalo.go`` fall-back files (``{"headers": ..., "message": ...}``) plus the
destination queue. Files are written atomically (temporary file, fsync,
rename), so a reader never sees half a request.

Sending them later is safe with several senders at once: a sender takes an
exclusive ``flock`` on a file before publishing it and removes it only after
the broker confirmed the publish; a file that another sender already removed
is skipped. A sender that dies holds no lock any more, so its file is simply
sent by the next one (at least once: a crash between the confirm and the
removal sends it twice, with the same recipe id).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zhpc.config import zhpc_home
from zhpc.errors import ZhpcError

SUFFIX = ".json"
BAD_SUFFIX = ".bad"


def default_spool() -> Path:
    return zhpc_home() / "spool"


@dataclass(frozen=True)
class SpooledMessage:
    """One saved message: where it goes, its headers and its JSON body."""

    path: Path
    queue: str
    headers: dict[str, Any]
    message: Any


class Spool:
    """A directory of saved messages, oldest sent first."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or default_spool()

    def save(self, queue: str, message: Any, headers: dict[str, Any], *, label: str = "") -> Path:
        """Write one message atomically and return its file."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ZhpcError(f"cannot create spool directory {self.directory}: "
                            f"{exc.strerror}") from None
        safe = "".join(c for c in label if c.isalnum() or c in "-_")[:64]
        name = f"{time.time_ns():020d}-{safe or uuid.uuid4().hex}{SUFFIX}"
        final = self.directory / name
        temporary = self.directory / f".{name}.{os.getpid()}.tmp"
        data = json.dumps({"queue": queue, "headers": headers, "message": message}, indent=2)
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(data + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, final)
            _fsync_directory(self.directory)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise ZhpcError(f"cannot save request in spool {self.directory}: "
                            f"{exc.strerror}") from None
        return final

    def files(self) -> list[Path]:
        """Spooled files, oldest first (names start with the time they were saved)."""
        try:
            return sorted(p for p in self.directory.iterdir()
                          if p.name.endswith(SUFFIX) and not p.name.startswith("."))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ZhpcError(f"cannot read spool directory {self.directory}: "
                            f"{exc.strerror}") from None

    def send_all(
        self,
        send: Callable[[SpooledMessage], None],
        on_bad: Callable[[Path, str], None] | None = None,
    ) -> int:
        """Send every spooled message with ``send`` (which must confirm); return how many.

        A file is removed only after ``send`` returned. If ``send`` raises, the
        file stays and the exception propagates (the rest wait for next time).
        A file that is not a spooled message is renamed to ``*.bad`` and
        reported through ``on_bad``, so it does not block the others.
        """
        sent = 0
        for path in self.files():
            with self._claim(path) as handle:
                if handle is None:
                    continue  # another sender has it, or has sent it already
                try:
                    item = _parse(path, handle.read())
                except ValueError as exc:
                    with contextlib.suppress(OSError):
                        path.rename(path.with_name(path.name + BAD_SUFFIX))
                    if on_bad is not None:
                        on_bad(path, str(exc))
                    continue
                send(item)
                path.unlink()
                _fsync_directory(self.directory)
                sent += 1
        return sent

    @staticmethod
    @contextlib.contextmanager
    def _claim(path: Path) -> Iterator[Any]:
        """The open file, locked by us and still spooled; None if someone else has it."""
        try:
            handle = path.open("r", encoding="utf-8")
        except FileNotFoundError:
            yield None
            return
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None
                return
            try:
                current = path.stat()
            except FileNotFoundError:
                yield None  # sent and removed while we were opening it
                return
            if current.st_ino != os.fstat(handle.fileno()).st_ino:
                yield None
                return
            yield handle


def _parse(path: Path, text: str) -> SpooledMessage:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or "message" not in data:
        raise ValueError("not a spooled message (no 'message' key)")
    headers = data.get("headers") or {}
    queue = data.get("queue") or "processing_recipe"
    if not isinstance(headers, dict) or not isinstance(queue, str):
        raise ValueError("'headers' must be an object and 'queue' a string")
    return SpooledMessage(path, queue, headers, data["message"])


def _fsync_directory(directory: Path) -> None:
    """Make a rename or removal durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

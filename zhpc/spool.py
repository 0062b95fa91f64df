"""Spools of messages that could not be sent yet, kept on disk until the broker confirms them.

Two kinds, both written atomically (temporary file, fsync, rename:
:mod:`zhpc.atomic`), so a reader never sees half a file:

* ``zhpc go`` requests made while the broker is down (:class:`Spool`): one JSON
  file per message in ``$ZHPC_HOME/spool/``, in the layout of Zocalo's
  ``zocalo.go`` fall-back files (``{"headers": ..., "message": ...}``) plus the
  destination queue.
* the results of one ``zhpc wrap`` run (:func:`save_results`): every output
  message of the step in one file, next to the recipe-wrapper file or under
  ``$ZHPC_HOME/wrap-results``. It is kept apart from the ``zhpc go`` spool,
  whose pickup would not understand it, and sent with ``zhpc wrap --resend``.

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
import logging
import os
import stat
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zhpc.atomic import fsync_directory, write_atomic, write_new
from zhpc.config import zhpc_home
from zhpc.errors import ZhpcError
from zhpc.message import Outgoing

log = logging.getLogger(__name__)

SUFFIX = ".json"
BAD_SUFFIX = ".bad"
#: A wrap run's results file: ``<recipe-wrapper file stem>.results.json``.
RESULTS_SUFFIX = ".results.json"
#: Fallback folder (under $ZHPC_HOME) for results that cannot be written next to the FILE.
WRAP_RESULTS_DIR = "wrap-results"


def default_spool() -> Path:
    return zhpc_home() / "spool"


@dataclass(frozen=True)
class SpooledMessage:
    """One saved message: where it goes, its headers and its JSON body."""

    path: Path
    queue: str
    headers: dict[str, Any]
    message: Any
    #: The id the first attempt was published with (it may have got through): sent again
    #: under the same id, so that duplicates can be recognised. None in older files.
    message_id: str | None = None


class Spool:
    """A directory of saved messages, oldest sent first."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or default_spool()

    def save(
        self,
        queue: str,
        message: Any,
        headers: dict[str, Any],
        *,
        label: str = "",
        message_id: str | None = None,
    ) -> Path:
        """Write one message atomically and return its file."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ZhpcError(
                f"cannot create spool directory {self.directory}: {exc.strerror}"
            ) from None
        safe = "".join(c for c in label if c.isalnum() or c in "-_")[:64]
        name = f"{time.time_ns():020d}-{safe or uuid.uuid4().hex}{SUFFIX}"
        final = self.directory / name
        from zhpc import strictjson

        record = {"queue": queue, "headers": headers, "message": message}
        if message_id is not None:
            record["message_id"] = message_id
        data = strictjson.dumps(record, indent=2)
        try:
            write_atomic(final, data + "\n", mode=0o600)
        except OSError as exc:
            raise ZhpcError(
                f"cannot save request in spool {self.directory}: {exc.strerror}"
            ) from None
        return final

    def files(self) -> list[Path]:
        """Spooled files, oldest first (names start with the time they were saved)."""
        try:
            # Only regular files: a directory or a FIFO named *.json would block every pickup.
            return sorted(
                p
                for p in self.directory.iterdir()
                if p.name.endswith(SUFFIX) and not p.name.startswith(".") and _regular(p)
            )
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ZhpcError(
                f"cannot read spool directory {self.directory}: {exc.strerror}"
            ) from None

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
                fsync_directory(self.directory)
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


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def _parse(path: Path, text: str) -> SpooledMessage:
    from zhpc import strictjson

    try:
        data = strictjson.loads(text)
    except ValueError as exc:  # JSONDecodeError, NonFiniteNumber
        raise ValueError(f"not JSON: {exc}") from None
    except RecursionError:
        raise ValueError("not JSON: nested too deeply") from None
    if not isinstance(data, dict) or "message" not in data:
        raise ValueError("not a spooled message (no 'message' key)")
    headers = data.get("headers") or {}
    queue = data.get("queue") or "processing_recipe"
    message_id = data.get("message_id")
    if not isinstance(headers, dict) or not isinstance(queue, str):
        raise ValueError("'headers' must be an object and 'queue' a string")
    if message_id is not None and not (isinstance(message_id, str) and message_id):
        raise ValueError("'message_id' must be a non-empty string")
    return SpooledMessage(path, queue, headers, data["message"], message_id)


# -- the results of a zhpc wrap run --------------------------------------------------------


def save_results(
    outputs: Sequence[Outgoing], recipewrapper: Path, name: str, **fields: Any
) -> Path | None:
    """Keep a wrap run's outputs until the broker confirmed them; None if nowhere would take them.

    They go next to ``recipewrapper`` (where whoever looks at the job looks),
    else to ``$ZHPC_HOME/wrap-results/<name>.results.json``. ``fields`` (when
    the run ended, its job id) are recorded with them for whoever reads the file.
    """
    data = json.dumps({**fields, "outputs": [_outgoing_to_json(out) for out in outputs]})
    candidates = [
        (recipewrapper.parent, recipewrapper.stem),
        (zhpc_home() / WRAP_RESULTS_DIR, name),
    ]
    for directory, stem in candidates:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            return _write_unsent(directory, stem, data)
        except OSError as exc:
            log.warning("cannot write results to %s: %s", directory / (stem + RESULTS_SUFFIX), exc)
    return None


#: How many unsent results files of one recipe-wrapper file may wait side by side.
_MAX_UNSENT = 1000


def _write_unsent(directory: Path, stem: str, data: str) -> Path:
    """Write ``<stem>.results.json``, or ``<stem>.<n>.results.json`` if an earlier run's
    unsent results are there: they must be kept until they are sent (never replaced)."""
    for number in range(1, _MAX_UNSENT + 1):
        path = directory / (stem + (f".{number}" if number > 1 else "") + RESULTS_SUFFIX)
        try:
            write_new(path, data)
            return path
        except FileExistsError:
            if path.is_file() and not path.is_symlink():
                continue  # an earlier run's results, still unsent
            raise
    raise OSError(f"{_MAX_UNSENT} unsent results files are waiting already")


def load_results(path: Path) -> list[Outgoing]:
    """The outputs :func:`save_results` kept in ``path``; ZhpcError if it is not such a file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [_outgoing_from_json(item) for item in data["outputs"]]
    except OSError as exc:
        raise ZhpcError(f"{path}: cannot read: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ZhpcError(f"{path}: not a zhpc wrap results file ({exc})") from None


def results_sent(path: Path) -> None:
    """Mark a results file as sent (renamed ``*.sent``, kept for whoever checks the job)."""
    path.rename(path.with_name(path.name + ".sent"))


def _outgoing_to_json(out: Outgoing) -> dict[str, Any]:
    return {
        "destination": out.destination,
        "kind": out.kind,
        "headers": out.headers,
        "routing_key": out.routing_key,
        "delay": out.delay,
        "expiration": out.expiration,
        "message_id": out.message_id,
        "body": out.body.decode("utf-8"),
    }


def _outgoing_from_json(item: dict[str, Any]) -> Outgoing:
    return Outgoing(
        destination=item["destination"],
        body=item["body"].encode("utf-8"),
        kind=item["kind"],
        headers=dict(item["headers"]),
        routing_key=item["routing_key"],
        delay=item["delay"],
        expiration=item["expiration"],
        message_id=item["message_id"],
    )

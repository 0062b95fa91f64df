"""Durable, atomic file replacement: a reader sees the old file or the new one, never half.

Every file zhpc hands to another process (the recipe-wrapper file a job reads,
the results a job could not send, a spooled ``zhpc go`` request, the local
backend's job records) is written here: a temporary file beside the target,
fsynced, renamed over it, and the directory fsynced so that the rename
survives a crash of the machine too.

Imports only the standard library: ``zhpc wrap`` must start quickly.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path


def write_atomic(path: Path, data: str | bytes, *, mode: int = 0o666) -> None:
    """Replace ``path`` with ``data`` (text is UTF-8); OSError if it cannot be done.

    ``mode`` is that of a new file before the umask (the default is what
    ``open`` gives). The temporary name is unique per process and thread, so
    concurrent writers of one path never share a temporary file.
    """
    temporary = _temporary(path, "tmp")
    try:
        _write_synced(temporary, data, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    fsync_directory(path.parent)


def write_new(path: Path, data: str | bytes, *, mode: int = 0o666) -> None:
    """Like :func:`write_atomic`, but never over an existing file: FileExistsError then.

    For files that hold something not yet sent elsewhere (a wrap run's results):
    a second writer must not replace the first one's.
    """
    temporary = _temporary(path, "new")
    try:
        _write_synced(temporary, data, mode)
        os.link(temporary, path)  # atomic, and fails if ``path`` exists
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()
    fsync_directory(path.parent)


def _temporary(path: Path, suffix: str) -> Path:
    """A name beside ``path``, unique per process and thread."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{suffix}")


def _write_synced(path: Path, data: str | bytes, mode: int) -> None:
    """Write ``data`` (text as UTF-8) to ``path``, created or truncated, and fsync it."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(raw)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_directory(directory: Path) -> None:
    """Make a rename or removal in ``directory`` durable (best effort where it cannot be opened)."""
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

"""Copying files into and out of a job's working directory, only under allowed roots.

Paths in a recipe message come from the network. A job must never read, or
publish as a result, a file the site has not opened for processing: every
path is checked against ``staging.allowed_roots`` *after* symlinks are
resolved, and any path spelled with ``..`` is refused outright (even one that
would resolve inside a root), so a reader of the recipe sees what is staged.
Links met on the way are never trusted: inside a staged-in directory they are
followed only into the roots and copied as plain files; in a results directory
any link where a result would go refuses the stage-out, and results are written
without following links, so a link planted there cannot redirect a write.
Imports only the standard library: ``zhpc wrap`` must start quickly.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

from zhpc.errors import StagingError

TYPE_CHECKING = False  # not typing's: typing costs ms at zhpc wrap's start-up
if TYPE_CHECKING:  # pragma: no cover
    from typing import BinaryIO

__all__ = ["check_allowed", "stage_in", "stage_out"]

_COPY_BUFFER = 1 << 20
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _refuse_odd(text: str, what: str) -> None:
    if not text:
        raise StagingError(f"{what}: empty path")
    if "\0" in text or any(not c.isprintable() for c in text):
        raise StagingError(f"{what} {text!r}: control characters are not allowed in paths")
    if ".." in PurePosixPath(text).parts:
        raise StagingError(f"{what} {text!r}: '..' is not allowed in staged paths")


def resolved_roots(roots: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The allowed roots with ``~`` expanded and symlinks resolved."""
    return [Path(root).expanduser().resolve() for root in roots]


def check_allowed(
    path: str | os.PathLike[str], roots: Sequence[str | os.PathLike[str]], what: str = "path"
) -> Path:
    """The resolved ``path`` if it lies under one of ``roots``; StagingError says why not."""
    text = os.fspath(path)
    _refuse_odd(text, what)
    if not os.path.isabs(text):
        raise StagingError(f"{what} {text!r}: must be an absolute path")
    if not roots:
        raise StagingError(
            f"{what} {text}: no staging.allowed_roots are configured, so nothing may be staged"
        )
    resolved = Path(text).resolve()
    allowed = resolved_roots(roots)
    if _is_under(resolved, allowed):
        return resolved
    shown = ", ".join(str(root) for root in allowed)
    target = f" (resolves to {resolved})" if str(resolved) != os.path.normpath(text) else ""
    raise StagingError(f"{what} {text}{target} is outside the allowed roots ({shown})")


def _is_under(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def _plan_directory(top: Path, shown: str, roots: Sequence[Path]) -> list[tuple[Path, Path | None]]:
    """Every entry under directory ``top`` as (path relative to it, real file or None for a
    directory), following symlinks only where they stay inside the roots.

    A link out of the roots, a dangling link, a link back to a directory that contains it
    and anything that is not a file or directory refuse the whole input: the job must see
    neither a file the site has not opened nor a silently incomplete copy.
    """
    planned: list[tuple[Path, Path | None]] = []
    pending: list[tuple[Path, Path, frozenset[Path]]] = [(top, Path(), frozenset({top}))]
    while pending:
        directory, relative, ancestors = pending.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError as exc:
            raise StagingError(f"input {shown}/{relative}: cannot read: {exc.strerror}") from None
        for entry in entries:
            inner = relative / entry.name
            where = f"input {shown}/{inner}"
            real = Path(entry.path)
            if entry.is_symlink():
                real = real.resolve()
                if not _is_under(real, roots):
                    raise StagingError(
                        f"{where} is a symbolic link to {real}, outside the "
                        f"allowed roots ({', '.join(map(str, roots))})"
                    )
                if not real.exists():
                    raise StagingError(
                        f"{where} is a symbolic link to {real}, which does not exist"
                    )
            if real.is_dir():
                if real in ancestors:
                    raise StagingError(f"{where} links back to {real}, which contains it")
                planned.append((inner, None))
                pending.append((real, inner, ancestors | {real}))
            elif real.is_file():
                planned.append((inner, real))
            else:
                raise StagingError(f"{where} is not a regular file or directory")
    return planned


def _open_regular(source: Path) -> BinaryIO:
    """``source`` (a resolved path) opened for reading; OSError if it is a link or not a
    regular file, checked on the open file so that nothing swapped in since counts."""
    # O_NONBLOCK: opening a FIFO must not block the job forever.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    reader = os.fdopen(os.open(source, flags), "rb")
    if not stat.S_ISREG(os.fstat(reader.fileno()).st_mode):
        reader.close()
        raise OSError(errno.EINVAL, f"{source} is not a regular file")
    return reader


def _copy_file(source: Path, target: Path) -> None:
    """Copy contents, mode and times, refusing a source that became a link after the check."""
    with _open_regular(source) as reader:
        status = os.fstat(reader.fileno())
        with open(target, "wb") as writer:
            shutil.copyfileobj(reader, writer, _COPY_BUFFER)
            os.fchmod(writer.fileno(), stat.S_IMODE(status.st_mode) & 0o777)
            os.utime(writer.fileno(), ns=(status.st_atime_ns, status.st_mtime_ns))


def stage_in(
    sources: Iterable[str | os.PathLike[str]],
    workdir: Path,
    roots: Sequence[str | os.PathLike[str]],
) -> list[Path]:
    """Copy each source file or directory into ``workdir``; returns the copies.

    Every source, and every entry of a source directory, is checked before anything is
    copied, so a refused path leaves the working directory untouched. Links inside a
    directory are copied as the files they point to (never as links, which would point
    somewhere else from the job directory).
    """
    allowed = resolved_roots(roots)
    checked: dict[Path, list[tuple[Path, Path | None]] | None] = {}
    names: dict[str, Path] = {}
    for source in sources:
        path = check_allowed(source, roots, "input")
        if not path.exists():
            raise StagingError(f"input {os.fspath(source)}: no such file or directory")
        if path.name in names and names[path.name] != path:
            raise StagingError(
                f"inputs {names[path.name]} and {path} would both be staged as {path.name}"
            )
        names[path.name] = path
        if path.is_dir():
            checked[path] = _plan_directory(path, os.fspath(source), allowed)
        elif path.is_file():
            checked[path] = None
        else:
            raise StagingError(f"input {os.fspath(source)} is not a regular file or directory")
    copies = []
    for path, plan in checked.items():
        target = workdir / path.name
        if target.resolve() != path:
            try:
                if plan is None:
                    _copy_file(path, target)
                else:
                    target.mkdir(exist_ok=True)
                    for relative, real in plan:
                        if real is None:
                            (target / relative).mkdir(exist_ok=True)
                        else:
                            _copy_file(real, target / relative)
            except OSError as exc:
                raise StagingError(f"cannot stage {path} into {workdir}: {exc}") from None
        copies.append(target)
    return copies


def find_outputs(patterns: Iterable[str], workdir: Path) -> list[Path]:
    """Files in ``workdir`` matching relative glob ``patterns`` (never outside it)."""
    base = workdir.resolve()
    found: dict[Path, None] = {}
    for pattern in patterns:
        _refuse_odd(pattern, "output pattern")
        if os.path.isabs(pattern):
            raise StagingError(f"output pattern {pattern!r}: must be relative to the job directory")
        for match in sorted(base.glob(pattern)):
            real = match.resolve()
            if not real.is_relative_to(base):
                # A symlink the command made must not smuggle another file out.
                raise StagingError(f"output {match} points outside the job directory")
            if match.is_file():
                found[match] = None
    return list(found)


def stage_out(
    files: Iterable[Path],
    workdir: Path,
    destination: str | os.PathLike[str] | None,
    roots: Sequence[str | os.PathLike[str]],
) -> list[Path]:
    """Copy result ``files`` (inside ``workdir``) to ``destination``; returns the copies.

    With no destination the files stay where they are and their paths are returned.
    A symbolic link already in the results directory, where a result or one of its
    directories would go, refuses the whole stage-out before anything is written: it could
    lead outside the allowed roots. Each copy is written to a new file that then replaces
    the target, opening every directory without following links, so nothing is ever written
    through a link (or a hard link) even if one appears while copying.
    """
    base = workdir.resolve()
    files = list(files)
    resolved = [file.resolve() for file in files]
    for file, real in zip(files, resolved, strict=True):
        if not real.is_relative_to(base):
            raise StagingError(f"result {file} is outside the job directory {base}")
    if destination is None:
        return resolved
    target_dir = check_allowed(destination, roots, "results directory")
    relatives = [real.relative_to(base) for real in resolved]
    for relative in relatives:
        _refuse_links_on_the_way(target_dir, relative)
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StagingError(f"cannot create results directory {target_dir}: {exc}") from None
    copies = []
    for file, real, relative in zip(files, resolved, relatives, strict=True):
        try:
            _write_result(real, target_dir, relative)
        except OSError as exc:
            raise StagingError(f"cannot copy result {file} to {target_dir}: {exc}") from None
        copies.append(target_dir / relative)
    return copies


def _refuse_links_on_the_way(target_dir: Path, relative: Path) -> None:
    """StagingError if a link or a non-directory stands where ``relative`` will be written."""
    current = target_dir
    for number, part in enumerate(relative.parts, 1):
        current = current / part
        try:
            mode = current.lstat().st_mode
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StagingError(f"result target {current}: {exc.strerror}") from None
        if stat.S_ISLNK(mode):
            raise StagingError(
                f"result target {current} is a symbolic link (to "
                f"{os.readlink(current)}); refusing to write through it"
            )
        last = number == len(relative.parts)
        if not last and not stat.S_ISDIR(mode):
            raise StagingError(f"result target {current} is in the way: not a directory")
        if last and stat.S_ISDIR(mode):
            raise StagingError(f"result target {current} is a directory")


def _open_directory(name: str | Path, parent: int | None, shown: Path) -> int:
    try:
        return os.open(name, _DIRECTORY_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StagingError(
                f"result target {shown} is a symbolic link or not a directory; "
                "refusing to write through it"
            ) from None
        raise


def _write_result(source: Path, target_dir: Path, relative: Path) -> None:
    """Copy ``source`` to ``target_dir / relative`` without following any link on the way."""
    *folders, name = relative.parts
    directory = _open_directory(target_dir, None, target_dir)
    import uuid  # here: uuid imports platform, which wrap need not pay for

    temporary = f".zhpc-{uuid.uuid4().hex}.part"
    written = False
    try:
        shown = target_dir
        for folder in folders:
            shown = shown / folder
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder, dir_fd=directory)
            inner = _open_directory(folder, directory, shown)
            os.close(directory)
            directory = inner
        with _open_regular(source) as reader:
            status = os.fstat(reader.fileno())
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(temporary, flags, 0o600, dir_fd=directory)
            written = True
            with os.fdopen(fd, "wb") as writer:
                shutil.copyfileobj(reader, writer, _COPY_BUFFER)
                os.fchmod(writer.fileno(), stat.S_IMODE(status.st_mode) & 0o777)
                os.utime(writer.fileno(), ns=(status.st_atime_ns, status.st_mtime_ns))
        try:
            existing = os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode
        except FileNotFoundError:
            existing = None
        if existing is not None and not stat.S_ISREG(existing):
            raise StagingError(
                f"result target {shown / name} is a symbolic link or not a "
                "regular file; refusing to replace it"
            )
        # rename() replaces a link that appeared since the check instead of writing through it.
        os.replace(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)
        written = False
    finally:
        if written:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=directory)
        os.close(directory)

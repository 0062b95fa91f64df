"""Copying files into and out of a job's working directory, only under allowed roots.

Paths in a recipe message come from the network. A job must never read, or
publish as a result, a file the site has not opened for processing: every
path is checked against ``staging.allowed_roots`` *after* symlinks are
resolved, and any path spelled with ``..`` is refused outright (even one that
would resolve inside a root), so a reader of the recipe sees what is staged.
Imports only the standard library: ``zhpc wrap`` must start quickly.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

from zhpc.errors import StagingError

__all__ = ["check_allowed", "stage_in", "stage_out"]


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
    if any(resolved == root or resolved.is_relative_to(root) for root in allowed):
        return resolved
    shown = ", ".join(str(root) for root in allowed)
    target = f" (resolves to {resolved})" if str(resolved) != os.path.normpath(text) else ""
    raise StagingError(f"{what} {text}{target} is outside the allowed roots ({shown})")


def stage_in(
    sources: Iterable[str | os.PathLike[str]],
    workdir: Path,
    roots: Sequence[str | os.PathLike[str]],
) -> list[Path]:
    """Copy each source file or directory into ``workdir``; returns the copies.

    Every source is checked before anything is copied, so a refused path
    leaves the working directory untouched.
    """
    checked: list[Path] = []
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
        checked.append(path)
    copies = []
    for path in dict.fromkeys(checked):
        target = workdir / path.name
        if target.resolve() != path:
            try:
                if path.is_dir():
                    shutil.copytree(path, target, dirs_exist_ok=True, symlinks=True)
                else:
                    shutil.copy2(path, target)
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
    """
    base = workdir.resolve()
    files = list(files)
    for file in files:
        if not file.resolve().is_relative_to(base):
            raise StagingError(f"result {file} is outside the job directory {base}")
    if destination is None:
        return [file.resolve() for file in files]
    target_dir = check_allowed(destination, roots, "results directory")
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StagingError(f"cannot create results directory {target_dir}: {exc}") from None
    copies = []
    for file in files:
        relative = file.resolve().relative_to(base)
        target = target_dir / relative
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, target)
        except OSError as exc:
            raise StagingError(f"cannot copy result {file} to {target_dir}: {exc}") from None
        copies.append(target)
    return copies

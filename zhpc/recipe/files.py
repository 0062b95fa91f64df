"""Recipe files: JSON or YAML by suffix, found by name in a directory or zhpc's examples.

The only module of :mod:`zhpc.recipe` that touches the file system.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from importlib import resources
from pathlib import Path

from zhpc.errors import RecipeError
from zhpc.recipe.data import short
from zhpc.recipe.recipe import Recipe

__all__ = ["MAX_FILE_BYTES", "find_recipe", "load_recipe", "load_recipe_file"]

#: Largest recipe file read from disk, in bytes.
MAX_FILE_BYTES = 4 * 1024 * 1024

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*\Z")
#: Longest recipe name: a file name (255 bytes) less the longest suffix.
MAX_NAME = 200
_SUFFIXES = (".json", ".yaml", ".yml")


def load_recipe_file(path: str | Path) -> Recipe:
    """Read a JSON or YAML recipe (by suffix; other suffixes are tried as JSON then YAML)."""
    path = Path(path)
    where = str(path)
    raw = _read_regular(path, where)
    if len(raw) > MAX_FILE_BYTES:
        raise RecipeError(f"{where}: larger than {MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{where}: not UTF-8: {exc.reason} at byte {exc.start}") from None
    suffix = path.suffix.lower()
    if suffix == ".json":
        return Recipe.from_json(text, source=where)
    if suffix in (".yaml", ".yml"):
        return Recipe.from_yaml(text, source=where)
    try:
        return Recipe.from_json(text, source=where)
    except RecipeError:
        return Recipe.from_yaml(text, source=where)


def _read_regular(path: Path, where: str) -> bytes:
    """The bytes of a regular file; a FIFO, device or directory is refused without
    blocking (opened non-blocking, checked on the open descriptor, so no race)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise RecipeError(f"{where}: no such recipe file") from None
    except IsADirectoryError:
        raise RecipeError(f"{where}: is a directory, not a recipe file") from None
    except OSError as exc:
        raise RecipeError(f"{where}: cannot read: {exc.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise RecipeError(f"{where}: is a directory, not a recipe file")
        raise RecipeError(f"{where}: not a regular file (a pipe or device is never read)")
    os.set_blocking(fd, True)
    with os.fdopen(fd, "rb") as handle:
        try:
            return handle.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise RecipeError(f"{where}: cannot read: {exc.strerror}") from None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError as exc:  # e.g. a name too long for the file system
        if exc.errno in (errno.ENAMETOOLONG, errno.EACCES):
            return False
        raise RecipeError(f"cannot look for recipe {path.name!r}: {exc.strerror}") from None


def find_recipe(name: str, directory: str | Path | None = None) -> Path:
    """The file of recipe ``name`` (no suffix) in ``directory``, or among zhpc's examples.

    Names are plain file names: anything with a path separator or ``..`` is refused,
    so a message can never make zhpc read a file outside the recipe directory.
    """
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise RecipeError(
            f"invalid recipe name {short(name)}: use letters, digits, '_', '-', '.' and no path"
        )
    if len(name) > MAX_NAME:
        raise RecipeError(f"invalid recipe name {short(name)}: longer than {MAX_NAME} characters")
    if directory is None:
        base = Path(str(resources.files("zhpc.recipes")))
    else:
        base = Path(directory)
        if not base.is_dir():
            raise RecipeError(f"recipe directory {base} does not exist")
    found = [base / (name + suffix) for suffix in _SUFFIXES if _is_file(base / (name + suffix))]
    if not found:
        raise RecipeError(f"no recipe {name!r} in {base} (looked for .json, .yaml, .yml)")
    if len(found) > 1:
        raise RecipeError(
            f"recipe {name!r} is ambiguous in {base}: " + ", ".join(p.name for p in found)
        )
    return found[0]


def load_recipe(name: str, directory: str | Path | None = None) -> Recipe:
    """:func:`find_recipe` then :func:`load_recipe_file`."""
    return load_recipe_file(find_recipe(name, directory))

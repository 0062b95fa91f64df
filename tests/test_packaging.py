"""What ``pip install .`` installs: every package of the source tree (README's install)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_directory_is_listed_in_pyproject() -> None:
    # An editable install finds an unlisted package anyway; a wheel silently leaves it out
    # (zhpc.config and zhpc.transport.stomp once were, and every command using them failed).
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "zhpc").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert found - listed == set()
    for name, directory in setuptools["package-dir"].items():
        assert (ROOT / directory / "__init__.py").is_file(), name
        assert name in listed

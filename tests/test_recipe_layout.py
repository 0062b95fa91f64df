"""The shape of zhpc.recipe: imports point down, and only files.py touches the file system."""

from __future__ import annotations

import ast
from pathlib import Path

import zhpc.recipe

PACKAGE = Path(zhpc.recipe.__file__).parent
#: Lowest first; a module may import only modules before it.
ORDER = [
    "data",
    "encoding",
    "plans",
    "parameters",
    "links",
    "validate",
    "recipe",
    "steps",
    "wrapper",
    "files",
]
#: Standard modules that reach the file system, the network or other processes.
IO_MODULES = {
    "os",
    "io",
    "pathlib",
    "shutil",
    "tempfile",
    "socket",
    "subprocess",
    "importlib",
    "ssl",
    "asyncio",
    "threading",
    "pika",
    "sqlite3",
}


def imported(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_every_module_is_placed() -> None:
    assert sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__") == sorted(ORDER)


def test_imports_point_down() -> None:
    for index, module in enumerate(ORDER):
        inside = {
            name.removeprefix("zhpc.recipe.")
            for name in imported(module)
            if name.startswith("zhpc.recipe.")
        }
        assert inside <= set(ORDER[:index]), f"{module} imports {inside - set(ORDER[:index])}"


def test_only_files_touches_the_file_system_and_nothing_knows_a_transport() -> None:
    for module in ORDER:
        names = imported(module)
        assert not any(n.startswith(("zhpc.transport", "zhpc.cluster", "pika")) for n in names)
        if module != "files":
            roots = {name.split(".")[0] for name in names}
            assert not roots & IO_MODULES, f"{module} imports {roots & IO_MODULES}"
            tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
            assert not any(
                isinstance(node, ast.Name) and node.id == "open" for node in ast.walk(tree)
            ), f"{module} opens files"

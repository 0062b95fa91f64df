"""The command line itself: help, version, usage errors."""

from __future__ import annotations

import pytest

from zhpc import __version__
from zhpc.cli import COMMAND_MODULES, main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"zhpc {__version__}"


def test_help_lists_every_registered_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in COMMAND_MODULES:
        assert f"    {name}" in out


def test_unknown_command_is_a_one_line_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'frobnicate'" in err
    assert "Traceback" not in err


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: zhpc" in capsys.readouterr().err


_HEAVY = ("msgspec", "pika", "ssl", "asyncio", "yaml")


def _imported_by(*argv: str) -> set[str]:
    """The modules a fresh interpreter holds after ``zhpc ARGV`` (not a timing: a guard)."""
    import json
    import subprocess
    import sys

    probe = (
        "import atexit, json, sys\n"
        "atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=sys.stderr))\n"
        "from zhpc.cli import main\n"
        f"main({list(argv)!r})\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    return set(json.loads(proc.stderr.strip().splitlines()[-1]))


@pytest.mark.parametrize("argv", [("--version",), ("go", "--help"), ("-q", "wrap", "--", "true")])
def test_short_paths_import_no_heavy_module(argv: tuple[str, ...]) -> None:
    assert not _imported_by(*argv) & set(_HEAVY)


def test_a_command_imports_only_its_own_module() -> None:
    modules = _imported_by("go", "--help")
    commands = {m for m in modules if m.startswith("zhpc.commands.")}
    assert commands == {"zhpc.commands.go"}
    assert not {m for m in _imported_by("--version") if m.startswith("zhpc.commands.")}


@pytest.mark.parametrize(
    ("argv", "needed"),
    [
        (["--config", "go", "service", "-h"], ("service",)),
        (["--conf", "go", "service"], ("service",)),
        (["-e", "prod", "-v", "wrap", "--", "go"], ("wrap",)),
        (["--log-format=json", "go"], ("go",)),
        (["-v", "--help"], COMMAND_MODULES),
        (["frobnicate"], COMMAND_MODULES),
        ([], COMMAND_MODULES),
        (["--version"], ()),
    ],
)
def test_commands_needed_reads_the_command_word(argv: list[str], needed: tuple[str, ...]) -> None:
    from zhpc.cli import _commands_needed

    assert _commands_needed(argv) == needed


def test_a_service_process_does_not_load_pydantic() -> None:
    """Issue 18: a service's config, runner and RabbitMQ transport leave pydantic out (it
    cost ~20 MB of an idle service's ~40 MB); a guard against it creeping back."""
    import subprocess
    import sys

    code = (
        "import sys, zhpc.config, zhpc.runner, zhpc.commands.service, zhpc.transport.rabbitmq\n"
        "zhpc.config.parse_config({'broker': {'url': 'amqp://h/'}})\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'pydantic_core')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

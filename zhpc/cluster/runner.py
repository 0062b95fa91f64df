"""Running one scheduler command somewhere: here (:class:`LocalRunner`) or over SSH.

The Slurm backend builds argument vectors and parses what comes back; a
:class:`CommandRunner` only runs them, so that the same backend works on this
machine and, through :mod:`zhpc.cluster.ssh`, on a login node. Commands are
argument vectors, never shell strings.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from zhpc.errors import ClusterError


@dataclass(frozen=True, slots=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


class CommandTimeout(ClusterError):
    """A scheduler command did not answer in time."""


class TransientCommandError(ClusterError):
    """The scheduler answered with an error that usually goes away."""


class CommandRunner(Protocol):
    """Runs one scheduler command (an argument vector) somewhere."""

    def run(self, argv: Sequence[str], *, input: str | None, timeout: float) -> CommandResult:
        """Run ``argv`` with ``input`` on stdin; raise CommandTimeout after ``timeout`` s."""
        ...

    def describe(self) -> str:
        """Where commands run, for error messages."""
        ...

    def close(self) -> None: ...


class LocalRunner:
    """Runs scheduler commands as subprocesses on this machine."""

    def run(self, argv: Sequence[str], *, input: str | None, timeout: float) -> CommandResult:
        try:
            proc = subprocess.run(
                list(argv),
                input=input,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except FileNotFoundError:
            raise ClusterError(
                f"{argv[0]} not found: are the Slurm client tools installed and on PATH?"
            ) from None
        except subprocess.TimeoutExpired:
            raise CommandTimeout(f"{argv[0]} did not answer within {timeout:g} s") from None
        return CommandResult(proc.returncode, proc.stdout, proc.stderr)

    def describe(self) -> str:
        return "this machine"

    def close(self) -> None:
        pass

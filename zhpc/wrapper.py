"""The wrapper plug-in API: what ``zhpc wrap --wrap NAME`` runs inside a batch job.

A site writes a :class:`Wrapper` subclass in its own package and registers it
in the ``zhpc.wrappers`` entry point group; :class:`CommandWrapper` is the
default, which runs the command given after ``--``. ``zhpc.wrap`` still
exports both names for plug-ins written against it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from zhpc.errors import ZhpcError
from zhpc.process import ProcessResult, run_command

TYPE_CHECKING = False  # not typing's: typing costs ms at zhpc wrap's start-up
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

    from zhpc.recipe import RecipeWrapper


class Wrapper:
    """Base class of wrapper plug-ins: subclass it and implement :meth:`run`.

    Register subclasses in the ``zhpc.wrappers`` entry point group; ``zhpc wrap
    --wrap NAME`` runs one. A wrapper prepares input, runs its program (with
    :meth:`run_command`, which forwards signals and keeps output tails),
    parses what came out, and says whether the step succeeded. Result files
    go in :attr:`results` (staged out like ``cluster.stage_out``), extra
    result fields in :attr:`report`.
    """

    def __init__(
        self,
        name: str,
        *,
        command: Sequence[str] = (),
        workdir: Path,
        parameters: dict[str, Any] | None = None,
        allowed_roots: Sequence[Path] = (),
        launcher: Callable[..., ProcessResult] | None = None,
    ) -> None:
        self.name = name
        #: The command given after ``--`` (parameters substituted); may be empty.
        self.command = list(command)
        #: Where the command runs and where staged inputs are.
        self.workdir = workdir
        #: The step's ``parameters`` (``{payload...}`` substituted).
        self.parameters: dict[str, Any] = dict(parameters or {})
        self.allowed_roots = list(allowed_roots)
        #: Result files (inside :attr:`workdir`) to stage out and report.
        self.results: list[Path] = []
        #: Extra fields for the ``results`` key of the output payload.
        self.report: dict[str, Any] = {}
        #: How the last :meth:`run_command` ended.
        self.last_result: ProcessResult | None = None
        self._launcher = launcher or run_command

    def run(self, rw: RecipeWrapper | None) -> bool:
        """Do the work; True for ``success``, False for ``failure``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement run()")

    def run_command(
        self, argv: Sequence[str], *, env: dict[str, str] | None = None
    ) -> ProcessResult:
        """Run ``argv`` (no shell) in :attr:`workdir`, with signals forwarded to it."""
        result = self._launcher(list(argv), cwd=self.workdir, env=env)
        self.last_result = result
        return result

    def stage_in(self, path: str | os.PathLike[str]) -> Path:
        """Copy one more input (under the allowed roots) into :attr:`workdir`."""
        from zhpc.staging import stage_in

        return stage_in([path], self.workdir, self.allowed_roots)[0]


class CommandWrapper(Wrapper):
    """The default: run the command given after ``--``; success means exit code 0."""

    def run(self, rw: RecipeWrapper | None) -> bool:
        if not self.command:
            raise ZhpcError("no command to run: give one after --, or choose a plug-in with --wrap")
        return self.run_command(self.command).exit_code == 0

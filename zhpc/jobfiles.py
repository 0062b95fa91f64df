"""The contract between the cluster submission service and the job it submits.

The submitter checks the step's ``cluster`` section, writes the step's message
to a recipe-wrapper file and submits a job that starts zhpc with
:func:`zhpc_command`; inside the job ``zhpc wrap`` reads the file back and
reads the same section (after parameter substitution). Both sides use this
module, so they cannot disagree about the file or the section.

Importing it is cheap (``zhpc wrap`` reads the section on every run): the
message and recipe modules are imported only where a file is read or written.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from zhpc.atomic import write_atomic
from zhpc.errors import RecipeError, Rejected, ZhpcError

TYPE_CHECKING = False  # not typing's: typing costs ms at zhpc wrap's start-up
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

    from zhpc.config import Config
    from zhpc.recipe import RecipeWrapper

log = logging.getLogger(__name__)

#: The keys a step's ``cluster`` section may have.
CLUSTER_KEYS = frozenset(
    {
        "command",
        "wrapper",
        "time",
        "cpus",
        "memory",
        "partition",
        "stage_in",
        "stage_out",
        "results_directory",
    }
)


def zhpc_command(config: Config) -> list[str]:
    """How a batch job starts zhpc: this interpreter (same installation), same configuration."""
    argv = [sys.executable, "-m", "zhpc"]
    if config.source is not None:
        argv += ["--config", str(config.source.resolve())]
    if config.environment:
        argv += ["-e", config.environment]
    return argv


# -- the recipe-wrapper file ------------------------------------------------------------


def write_recipewrapper(path: Path, body: dict[str, Any], message_id: str | None) -> None:
    """Write a recipe-wrapper file atomically (a job never reads half a file).

    The input message's zhpc id goes in the file under the header's name, so
    that the outputs the job sends carry ids derived from it.
    """
    from zhpc import strictjson
    from zhpc.message import MESSAGE_ID_HEADER

    write_atomic(path, strictjson.dumps({**body, MESSAGE_ID_HEADER: message_id}))


def job_message_id(message_id: str) -> str:
    """The id the job's outputs derive from: not the input's own, which the submitter's
    outputs (``job_submitted``) derive from, so that no two messages share an id."""
    return f"{message_id}/job"


#: Written next to the recipe-wrapper file once the job's results are confirmed sent.
REPORTED_SUFFIX = ".reported"


def reported_marker(recipewrapper: Path) -> Path:
    """The file saying the step's results were sent (by the job, or by the job watch)."""
    return recipewrapper.with_name(recipewrapper.stem + REPORTED_SUFFIX)


def mark_reported(recipewrapper: Path) -> None:
    """Record that the step's results are sent: the job watch leaves the job alone."""
    try:
        write_atomic(reported_marker(recipewrapper), f"{time.time():.3f}\n")
    except OSError as exc:  # the watch then sends a duplicate failure: never a loss
        log.warning("cannot write %s: %s", reported_marker(recipewrapper), exc)


def read_recipewrapper(path: Path) -> RecipeWrapper:
    """The recipe step a recipe-wrapper file describes; ZhpcError if it cannot be one."""
    from zhpc import strictjson
    from zhpc.message import MESSAGE_ID_HEADER
    from zhpc.recipe import RecipeWrapper

    try:
        body = strictjson.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ZhpcError(f"recipe wrapper {path}: cannot read: {exc.strerror}") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, NonFiniteNumber
        raise ZhpcError(f"recipe wrapper {path}: not JSON: {exc}") from None
    except RecursionError:
        raise ZhpcError(f"recipe wrapper {path}: nested too deeply") from None
    if not isinstance(body, dict):
        raise ZhpcError(f"recipe wrapper {path}: must hold a JSON object")
    message_id = body.get(MESSAGE_ID_HEADER)
    try:
        return RecipeWrapper.from_body(
            body,
            message_id=job_message_id(str(message_id)) if message_id else None,
            decoded=True,
        )
    except RecipeError as exc:
        raise ZhpcError(f"recipe wrapper {path}: {exc}") from None


# -- the step's cluster section ------------------------------------------------------------


def cluster_section(step: dict[str, Any] | None) -> dict[str, Any]:
    """The step's ``cluster`` section as the submitter checks it; Rejected says what is wrong.

    The paths (``stage_in``, ``stage_out``, ``results_directory``) may hold
    ``{payload...}`` templates, so the job checks them, after substitution,
    with :func:`cluster_paths` and :func:`results_directory`.
    """
    section = (step or {}).get("cluster")
    if not isinstance(section, dict):
        raise Rejected("the step has no 'cluster' section")
    unknown = sorted(set(section) - CLUSTER_KEYS)
    if unknown:
        raise Rejected(f"cluster: unknown key(s) {', '.join(map(str, unknown))}")
    command = section.get("command", [])
    if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
        raise Rejected("cluster.command must be a list of strings (one per argument)")
    wrapper = section.get("wrapper")
    if wrapper is not None and not (isinstance(wrapper, str) and wrapper.isidentifier()):
        raise Rejected("cluster.wrapper must be the name of a wrapper plug-in")
    if not command and not wrapper:
        raise Rejected("cluster: needs a command, a wrapper, or both")
    cpus = section.get("cpus")
    if cpus is not None and (isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1):
        raise Rejected("cluster.cpus must be a whole number >= 1")
    memory = section.get("memory")
    if memory is not None and (isinstance(memory, bool) or not isinstance(memory, str | int)):
        raise Rejected("cluster.memory must be a size such as 8G or a number of megabytes")
    for key in ("partition",):
        if section.get(key) is not None and not isinstance(section[key], str):
            raise Rejected(f"cluster.{key} must be a string")
    return section


def cluster_paths(section: dict[str, Any], key: str) -> list[str]:
    """``cluster.stage_in`` or ``cluster.stage_out``: one path or pattern, or a list of them."""
    value = section.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise Rejected(f"cluster.{key} must be a list of strings, not {value!r:.80}")
    return value


def results_directory(section: dict[str, Any]) -> str | None:
    """``cluster.results_directory``: where the job stages its results out to, if anywhere."""
    destination = section.get("results_directory")
    if destination is not None and not isinstance(destination, str):
        raise Rejected("cluster.results_directory must be a path string")
    return destination

"""Finding installed plug-ins through entry points: services, wrappers, lookups, backends.

Sites add their own by declaring entry points in the groups below in their
own packages; zhpc never needs editing. Installed entry points are read once
per process (one pass over the installed distributions serves every group)
and an entry point's object is imported only when it is loaded, so that
knowing the names (e.g. to validate a configuration) imports no backend.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, TypeVar

from zhpc.errors import ZhpcError

if TYPE_CHECKING:  # pragma: no cover
    from importlib.metadata import EntryPoint, EntryPoints

_T = TypeVar("_T")

SERVICES = "zhpc.services"
WRAPPERS = "zhpc.wrappers"
LOOKUPS = "zhpc.dispatcher.lookups"
#: Message transports, by URL scheme (``amqp``, ``amqps``, ``sqlite``).
TRANSPORTS = "zhpc.transports"
#: Batch scheduler backends, by ``cluster.backend`` name (``local``, ``slurm``, ``ssh``).
CLUSTERS = "zhpc.clusters"
#: The same backends, by the variable whose presence says "this process runs in one of my
#: jobs" (``SLURM_JOB_ID``...): a job imports only the backend it runs under.
JOB_ENVIRONMENTS = "zhpc.job_environments"


@functools.cache
def _installed() -> EntryPoints:
    from importlib.metadata import entry_points

    return entry_points()


def available(group: str) -> dict[str, EntryPoint]:
    """Entry points of ``group`` by name (the first one wins if a name repeats)."""
    found: dict[str, EntryPoint] = {}
    for point in _installed().select(group=group):
        found.setdefault(point.name, point)
    return dict(sorted(found.items()))


def names(group: str) -> list[str]:
    """The names registered in ``group``, sorted; nothing is imported."""
    return list(available(group))


def load(group: str, name: str) -> Any:
    """Import the object registered as ``name`` in ``group``, with a clear error if it can't be."""
    points = available(group)
    point = points.get(name)
    if point is None:
        known = ", ".join(points) or "none installed"
        kind = group.rsplit(".", 1)[-1].rstrip("s")
        raise ZhpcError(f"no {kind} named {name!r} (available: {known})")
    try:
        return point.load()
    except Exception as exc:  # a broken plug-in must not crash the CLI with a traceback
        raise ZhpcError(f"cannot load {name!r} from {point.value}: {exc}") from exc


def load_class(
    group: str, name: str, base: type[_T], error: type[ZhpcError], what: str
) -> type[_T]:
    """:func:`load`, and check that the object is a subclass of ``base`` (``error`` if not)."""
    try:
        cls = load(group, name)
    except ZhpcError as exc:
        raise error(str(exc)) from exc.__cause__
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise error(f"{what} {name!r} is not a zhpc {base.__name__} class")
    return cls

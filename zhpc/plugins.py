"""Finding installed services and wrappers through entry points.

Sites add their own by declaring entry points in the groups below in their
own packages; zhpc never needs editing.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

from zhpc.errors import ZhpcError

SERVICES = "zhpc.services"
WRAPPERS = "zhpc.wrappers"
LOOKUPS = "zhpc.dispatcher.lookups"


def available(group: str) -> dict[str, EntryPoint]:
    """Entry points of ``group`` by name (the first one wins if a name repeats)."""
    found: dict[str, EntryPoint] = {}
    for point in entry_points(group=group):
        found.setdefault(point.name, point)
    return dict(sorted(found.items()))


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

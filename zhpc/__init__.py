"""zhpc: automated data processing on HPC batch clusters, in the style of Zocalo.

Heavy modules are imported lazily so that short-lived commands (``zhpc wrap``)
start quickly.
"""

from __future__ import annotations

#: ``typing`` costs a few ms at start-up and is needed here only by type checkers.
TYPE_CHECKING = False

__version__ = "0.1.0"

__all__ = ["Recipe", "RecipeWrapper", "Service", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

    from zhpc.recipe import Recipe, RecipeWrapper
    from zhpc.service import Service

_LAZY = {
    "Recipe": "zhpc.recipe",
    "RecipeWrapper": "zhpc.recipe",
    "Service": "zhpc.service",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'zhpc' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)

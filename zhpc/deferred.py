"""Standard modules that a dependency imports but a process may never use, loaded on first use.

pika imports ``ssl`` and ``asyncio`` (its asyncio adapter) at import time, and
tenacity imports ``asyncio``: about 9 MB of every service's memory, although
a service on ``amqp://`` uses neither. :func:`defer` puts a placeholder module
into ``sys.modules``; the first attribute read from it (``ssl.SSLContext``,
``asyncio.run``) imports the real module and fills the placeholder with its
contents, so every name bound to the placeholder works from then on.

Why not :class:`importlib.util.LazyLoader`: on Python 3.11 a later ``import ssl``
reads ``ssl.__spec__``, which makes the lazy module load at once. The
placeholder carries the real spec and loads on any other attribute.

The limit, and why only ``zhpc service`` defers (after importing the service's
own modules): importing a *submodule* of a deferred package by its full name
first (``import asyncio.events`` before any use of ``asyncio``) loads that
submodule a second time, as the import system reads the package's ``__path__``
before it could notice. ``from asyncio import events`` and attribute access are fine.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any


def defer(*names: str) -> None:
    """Make each of ``names`` (top-level modules) load on first use, unless already imported."""
    for name in names:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None:  # not installed: an import will say so where it matters
            continue
        sys.modules[name] = _placeholder(name, spec)


def is_loaded(name: str) -> bool:
    """Whether ``name`` is imported for real (not only a placeholder)."""
    module = sys.modules.get(name)
    return module is not None and "__getattr__" not in vars(module)


def _placeholder(name: str, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
    placeholder = types.ModuleType(name)
    placeholder.__spec__ = spec
    placeholder.__file__ = spec.origin
    placeholder.__loader__ = spec.loader
    lock = threading.RLock()

    def load(attribute: str) -> Any:
        with lock:
            if "__getattr__" in vars(placeholder):
                if sys.modules.get(name) is placeholder:
                    del sys.modules[name]  # so that the import below runs the real module
                real = importlib.import_module(name)
                del placeholder.__getattr__
                vars(placeholder).update(vars(real))
        try:
            return vars(placeholder)[attribute]
        except KeyError:
            raise AttributeError(f"module {name!r} has no attribute {attribute!r}") from None

    placeholder.__getattr__ = load  # type: ignore[method-assign]
    return placeholder

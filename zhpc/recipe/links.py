"""Reading a step's ``output`` or ``error`` value: the one parser of recipe links.

A link value is a node number, a list of them, or (for ``output``) a mapping of
named channels to either. :func:`parse_links` says what shape a value has and
keeps targets as written; each reader decides what is wrong and how to say it:
validation lists problems, a running step refuses to send, ``zhpc recipe show``
draws whatever makes sense.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zhpc.recipe.data import is_node_number

__all__ = ["Channel", "Links", "parse_links"]


@dataclass(frozen=True, slots=True)
class Channel:
    """One channel of a link value: unnamed (``name`` None) or one named output."""

    name: Any
    #: The value as written.
    raw: Any
    #: The targets as written, a single node number made a list; None if neither.
    targets: list[Any] | None

    @property
    def node_numbers(self) -> bool:
        """Whether every target is a node number (the only thing a message can go to)."""
        return self.targets is not None and all(is_node_number(t) for t in self.targets)


@dataclass(frozen=True, slots=True)
class Links:
    """A parsed link value."""

    channels: list[Channel]
    #: The value was a mapping of named outputs.
    named: bool = False
    #: The value was a node number, a list or a mapping (anything else links nowhere).
    shaped: bool = True

    def by_channel(self) -> dict[Any, list[Any]]:
        """Targets by channel name, leaving out channels whose targets have no shape."""
        return {c.name: list(c.targets) for c in self.channels if c.targets is not None}


def _targets(value: Any) -> list[Any] | None:
    if is_node_number(value):
        return [value]
    return list(value) if isinstance(value, list) else None


def parse_links(value: Any) -> Links:
    """The channels of an ``output`` or ``error`` value, whatever it holds."""
    if isinstance(value, dict):
        return Links([Channel(name, raw, _targets(raw)) for name, raw in value.items()], named=True)
    targets = _targets(value)
    if targets is None:
        return Links([], shaped=False)
    return Links([Channel(None, value, targets)])

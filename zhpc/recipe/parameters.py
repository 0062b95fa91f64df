"""Parameter substitution, with python-workflows' results wherever workflows succeeds.

``{name}``, ``{name[key]}`` and ``{$REPLACE:name}`` in strings are filled in from a
mapping of parameters, each string on its own. Where workflows would crash, a
:class:`~zhpc.errors.RecipeError` names the place instead.
"""

from __future__ import annotations

import _string  # the field-name splitter str.format itself uses
import copy
import re
import string
from collections.abc import Callable, Mapping
from typing import Any

from zhpc.errors import RecipeError
from zhpc.recipe.data import is_node_number, plain, short

__all__ = ["substitute"]


#: Longest string a substitution may produce, and the widest format field
#: (``{p:>100000000}`` would otherwise build 100 MB from a 20-byte template).
MAX_SUBSTITUTED_CHARS = 1_000_000

_DIGIT_RUN = re.compile(r"[0-9]+")


def substitute(
    value: Any,
    parameters: Mapping[str, Any],
    *,
    where: str = "value",
    strict: bool = True,
    max_chars: int | None = None,
) -> Any:
    """A copy of ``value`` with the templates in its strings filled in from ``parameters``.

    Each string is formatted on its own, so a value can never spill into its
    neighbours (a command argument stays one argument, whatever a payload holds),
    and values are inserted literally: braces in a value are never templates.
    Names missing from ``parameters`` are left as written, so values can be filled
    in stages. ``value`` itself is not modified. A malformed template, or a result
    JSON cannot carry, raises :class:`~zhpc.errors.RecipeError` naming the place
    below ``where`` (``value[0]: ...``, ``value.key: ...``). ``strict=False`` is for
    a later stage: text that is not a valid template there (braces an earlier stage
    inserted from a value, such as ``out{1}.jsonl``) is kept exactly as it is.
    """
    return _substituted(
        plain(value, where),
        parameters,
        where,
        f"{where} after substitution",
        strict=strict,
        max_chars=max_chars,
    )


def substitute_recipe(
    data: dict[Any, Any],
    parameters: Mapping[str, Any],
    *,
    unfilled: list[str] | None = None,
    max_chars: int | None = None,
) -> dict[Any, Any]:
    """:func:`substitute` for a whole recipe: errors name the node (``node 2: ...``).

    The templates no parameter filled are appended to ``unfilled`` (``{name}`` each).
    """
    return _substituted(
        data, parameters, None, "recipe after substitution", unfilled=unfilled, max_chars=max_chars
    )


def template_problems(data: Any) -> list[str]:
    """Templates in ``data`` that no parameters can ever make work, one line each."""
    problems: list[str] = []
    _Substitution({}, problems).apply(data, ())
    return problems


def _substituted(
    value: Any,
    parameters: Mapping[str, Any],
    root: str | None,
    result_where: str,
    *,
    strict: bool = True,
    unfilled: list[str] | None = None,
    max_chars: int | None = None,
) -> Any:
    if not isinstance(parameters, Mapping):
        raise RecipeError(f"parameters must be a mapping, not {type(parameters).__name__}")
    substitution = _Substitution(
        parameters, root=root, strict=strict, max_chars=max_chars or MAX_SUBSTITUTED_CHARS
    )
    try:
        result = substitution.apply(value, ())
    except RecursionError:
        raise RecipeError("parameters are nested too deeply") from None
    if unfilled is not None:
        unfilled.extend(dict.fromkeys(substitution.unfilled))
    return plain(result, result_where)


class _Malformed(Exception):
    """A template that cannot be applied; the caller adds where it is."""


class _TooLarge(_Malformed):
    """A substitution that would build a string beyond the limit: refused even when
    not strict, and before the string is built."""


class _Unknown:
    """Stands for a name missing from the parameters, as workflows' placeholder does.

    It formats back to ``{name}`` (and ``{name[key]}`` after item lookups), so
    the result equals python-workflows' wherever workflows succeeds.
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return "{" + self.text + "}"

    __repr__ = __str__

    def __getitem__(self, key: Any) -> _Unknown:
        if not isinstance(key, str):
            raise TypeError("numeric index on an unknown name")
        return _Unknown(f"{self.text}[{key}]")

    def __format__(self, spec: str) -> str:
        if spec:
            raise TypeError("format specification on an unknown name")
        return str(self)


_NOTHING = object()
_FORMATTER = string.Formatter()
_CONVERSIONS: dict[str, Callable[[Any], str]] = {"r": repr, "s": str, "a": ascii}


def _parse(text: str) -> list[tuple[str, str | None, str | None, str | None]]:
    try:
        return list(_FORMATTER.parse(text))
    except ValueError as exc:
        raise _Malformed(f"{exc} (write '{{{{' and '}}}}' for literal braces)") from None


def _parse_field(field: str) -> tuple[str, list[str | int]]:
    """Split ``name[key][0]`` into the name and item keys; refuse what workflows mishandles."""
    if field == "":
        raise _Malformed("'{}' names no parameter (write '{{}}' for literal braces)")
    try:
        first, rest = _string.formatter_field_name_split(field)
        parts = list(rest)
    except ValueError as exc:
        raise _Malformed(f"{exc} in '{{{field}}}'") from None
    if not isinstance(first, str):
        raise _Malformed(f"'{{{field}}}' is positional; parameters are looked up by name")
    if first == "":
        raise _Malformed(f"'{{{field}}}' names no parameter")
    keys: list[str | int] = []
    for is_attribute, key in parts:
        if is_attribute:
            raise _Malformed(f"attribute access '.{key}' in '{{{field}}}' is not allowed")
        keys.append(key)
    return first, keys


def _check_conversion(conversion: str | None) -> None:
    if conversion is not None and conversion not in _CONVERSIONS:
        raise _Malformed(f"unknown conversion '!{conversion}' (use !r, !s or !a)")


def _convert(value: Any, conversion: str | None) -> Any:
    return value if conversion is None else _CONVERSIONS[conversion](value)


class _Substitution:
    """Applies parameters the way python-workflows' ``Recipe.apply_parameters`` does.

    Where workflows crashes, this raises :class:`_Malformed` instead; where the
    crash comes only from an unknown name (``{x:>5}``, ``{x[0]}``), the field is
    left exactly as written, so parameters can be applied in stages.
    """

    def __init__(
        self,
        parameters: Mapping[str, Any],
        problems: list[str] | None = None,
        root: str | None = None,
        *,
        strict: bool = True,
        max_chars: int = MAX_SUBSTITUTED_CHARS,
    ):
        self.parameters = parameters
        self.problems = problems
        self.root = root  # None: paths start at a recipe node ("node 2: ...")
        self.strict = strict
        self.max_chars = max_chars
        #: Templates left because no parameter had their name, as written.
        self.unfilled: list[str] = []

    def apply(self, item: Any, path: tuple[Any, ...]) -> Any:
        if isinstance(item, str):
            try:
                return self.string(item)
            except _TooLarge as exc:
                return self._fail(path, short(item), str(exc))
            except _Malformed as exc:
                if not self.strict:
                    return item  # not a template at this stage: literal text
                return self._fail(path, item, str(exc))
        if isinstance(item, dict):
            out = {}
            for key, value in item.items():
                new_key = self.apply(key, (*path, "<key>")) if isinstance(key, str) else key
                if isinstance(key, str) and not isinstance(new_key, str):
                    # JSON keys are strings; workflows would build an unsendable recipe
                    self._fail(
                        (*path, key),
                        key,
                        f"a key must stay a string, but $REPLACE made it {short(new_key, 30)}",
                    )
                    new_key = key
                out[new_key] = self.apply(value, (*path, key))
            return out
        if isinstance(item, list):
            return [self.apply(value, (*path, index)) for index, value in enumerate(item)]
        if isinstance(item, tuple):
            return tuple(self.apply(list(item), path))
        return item

    def _fail(self, path: tuple[Any, ...], item: Any, reason: str) -> Any:
        shown = short(item)
        message = f"{_where(path, self.root)}: {reason}"
        if str(item) not in reason:
            message += f" (in {shown})"
        if self.problems is None:
            raise RecipeError(message)
        self.problems.append(message)
        return item

    def string(self, text: str) -> Any:
        if text.startswith("{$REPLACE") and text.endswith("}"):
            # Same slicing as workflows, so "{$REPLACE:x}" names "x".
            try:
                value = self._replace_walk("{" + text[10:-1] + "}", 2)
            except KeyError:
                return None  # workflows: an unknown name replaces the string by None
            if value is _NOTHING:
                raise _Malformed("'{$REPLACE:...}' names no parameter")
            return copy.deepcopy(value)
        return self._format(text, 2)[0]

    def _replace_walk(self, text: str, depth: int) -> Any:
        """Value of the last field in ``text``; KeyError when a name or item is missing."""
        if depth < 0:
            raise _Malformed("format specifications nested too deeply")
        last: Any = _NOTHING
        for _literal, field, spec, conversion in _parse(text):
            if field is None:
                continue
            name, keys = _parse_field(field)
            _check_conversion(conversion)
            value = self.parameters[name]
            for key in keys:
                value = self._index(value, key, missing_raises=True)
            value = _convert(value, conversion)
            self._replace_walk(spec or "", depth - 1)
            last = value
        return last

    @staticmethod
    def _index(value: Any, key: str | int, *, missing_raises: bool) -> Any:
        try:
            return value[key]
        except KeyError:
            if missing_raises:
                raise
            raise _Malformed(f"no item [{key}] in {short(value, 40)}") from None
        except IndexError:
            raise _Malformed(f"index [{key}] out of range for {short(value, 40)}") from None
        except TypeError:
            if isinstance(value, _Unknown):
                raise
            raise _Malformed(
                f"cannot look up [{key}] in {type(value).__name__} {short(value, 40)}"
            ) from None

    def _format(self, text: str, depth: int) -> tuple[str, bool]:
        """Format ``text``; the flag says whether an unknown name took part."""
        if depth < 0:
            raise _Malformed("format specifications nested too deeply")
        out: list[str] = []
        unknown = False
        for literal, field, spec, conversion in _parse(text):
            out.append(literal)
            if field is None:
                continue
            name, keys = _parse_field(field)
            _check_conversion(conversion)
            spec_text, spec_unknown = self._format(spec or "", depth - 1)
            self._check_spec(spec_text)
            if name in self.parameters:
                value, field_unknown = self.parameters[name], False
            else:
                value, field_unknown = _Unknown(name), True
                self.unfilled.append(_verbatim(field, spec, conversion))
            try:
                for key in keys:
                    value = self._index(value, key, missing_raises=False)
                value = _convert(value, conversion)
                out.append(format(value, spec_text))
            except (TypeError, ValueError, _Malformed) as exc:
                if isinstance(exc, _Malformed) and not (field_unknown or spec_unknown):
                    raise
                if not (field_unknown or spec_unknown):
                    raise _Malformed(f"cannot format {short(value, 40)}: {exc}") from None
                # Only an unknown name stands in the way: keep the field as written.
                out.append(_verbatim(field, spec, conversion))
            unknown = unknown or field_unknown or spec_unknown
            self._check_size(sum(map(len, out)))
        return "".join(out), unknown

    def _check_spec(self, spec: str) -> None:
        """Refuse a width or precision that alone makes a string beyond the limit."""
        for run in _DIGIT_RUN.findall(spec):
            if len(run) > 9 or int(run) > self.max_chars:
                raise _TooLarge(
                    f"format width or precision {run[:12]} is larger than "
                    f"{self.max_chars} characters"
                )

    def _check_size(self, length: int) -> None:
        if length > self.max_chars:
            raise _TooLarge(f"substitution makes a string of more than {self.max_chars} characters")


def _verbatim(field: str, spec: str | None, conversion: str | None) -> str:
    text = "{" + field
    if conversion:
        text += "!" + conversion
    if spec:
        text += ":" + spec
    return text + "}"


def _where(path: tuple[Any, ...], root: str | None = None) -> str:
    """Human location of a value: ``node 2: parameters.files[0]``, or ``root[0]``."""
    if root is not None:
        return _path_text(root, path)
    if not path:
        return "recipe"
    head, rest = path[0], path[1:]
    if not is_node_number(head):
        return _path_text(str(head), rest)
    tail = _path_text("", rest)
    return f"node {head}: {tail}" if tail else f"node {head}"


def _path_text(tail: str, path: tuple[Any, ...]) -> str:
    for part in path:
        if isinstance(part, int):
            tail += f"[{part}]"
        elif part == "<key>":
            tail += " (a key)"
        else:
            tail += f".{part}" if tail else str(part)
    return tail

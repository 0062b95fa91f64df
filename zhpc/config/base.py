"""What every configuration section shares: strict validation, the state directory, secrets.

A section is a :class:`msgspec.Struct`: msgspec checks types, bounds and unknown keys
while it converts the parsed YAML (:func:`build`), and each section's ``checks`` run
what types cannot say (:mod:`zhpc.config.checks`). msgspec rather than pydantic
because every service process loads this: pydantic and its models cost a service
~20 MB of its ~40 MB, msgspec ~3 MB (issue 18).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar, get_args, get_origin

import msgspec
import msgspec.structs

from zhpc.config.checks import check_bounded_numbers
from zhpc.errors import ConfigError
from zhpc.masking import mask_url


def zhpc_home() -> Path:
    """Where zhpc keeps local state (embedded broker, spool, local jobs)."""
    return Path(os.environ.get("ZHPC_HOME") or Path.home() / ".local/share/zhpc").expanduser()


class Invalid(ValueError):
    """A value a section's check refuses; ``key`` names it, so the one-line error can."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A YAML section: unknown keys, NaN, infinity and integers beyond 64 bits are errors.

    Subclasses list per-key checks in ``checks`` (each returns the value to keep and
    raises ``ValueError`` with a message that never repeats a secret); they run on
    every instance, the defaults included, as the file is read and when code builds one.
    """

    #: key -> check; a check may return a normalised value.
    checks: ClassVar[dict[str, Callable[[Any], Any]]] = {}

    def __post_init__(self) -> None:
        for key in self.__struct_fields__:
            value = getattr(self, key)
            try:
                check_bounded_numbers(value)
                check = self.checks.get(key)
                if check is not None:
                    setattr(self, key, check(value))
            except Invalid:
                raise
            except ValueError as exc:
                raise Invalid(key, str(exc)) from None
        self.check()

    def check(self) -> None:
        """Checks across keys; raise :class:`Invalid` naming the key to change."""

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes``, checked as the file is (:class:`ConfigError` if refused)."""
        data = msgspec.to_builtins(self, enc_hook=str)
        return build(type(self), {**data, **msgspec.to_builtins(changes, enc_hook=str)})

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{key}={_masked(key, getattr(self, key))!r}" for key in self.__struct_fields__
        )
        return f"{type(self).__name__}({fields})"


def _masked(key: str, value: Any) -> Any:
    """A URL's password is never shown, not even by ``repr``."""
    if key.endswith("url") and isinstance(value, str):
        return mask_url(value)
    if key.endswith("url") and isinstance(value, list):
        return [mask_url(item) if isinstance(item, str) else item for item in value]
    return value


S = TypeVar("S", bound=Section)


def one_of(words: list[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    return " or ".join(filter(None, [", ".join(words[:-1]), words[-1]])) if words else "nothing"


def check_choice(value: Any, choices: tuple[str, ...] | list[str]) -> Any:
    if value not in choices:
        raise ValueError(f"must be {one_of([repr(choice) for choice in choices])}")
    return value


#: msgspec's type names, as a user reads them.
_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "empty",
}
_EXPECTED = re.compile(r"Expected `([^`]+)`(?:, got `([^`]+)`)?(.*)")
_UNKNOWN = re.compile(r"Object contains unknown field `([^`]+)`")


def _words(message: str) -> str:
    """msgspec's ``Expected `int` >= 1`` as ``must be an integer >= 1``."""
    if message == "Number out of range":
        return "must be a finite number"
    match = _EXPECTED.fullmatch(message)
    if not match:
        return message[:1].lower() + message[1:]
    wanted = " or ".join(_TYPE_WORDS.get(name, name) for name in match.group(1).split(" | "))
    got = f", not {_TYPE_WORDS.get(match.group(2), match.group(2))}" if match.group(2) else ""
    return f"must be {wanted}{match.group(3)}{got}"


def _path_from(exc: msgspec.ValidationError, where: str) -> tuple[str, str]:
    """The dotted key an error is about, and what is wrong with it."""
    message, at, location = str(exc).rpartition(" - at `")
    if not at:
        message, location = str(exc), "$`"
    location = location.rstrip("`").removeprefix("$").lstrip(".")
    cause = exc.__cause__
    if isinstance(cause, Invalid):
        location = f"{location}.{cause.key}" if location else cause.key
        message = str(cause)
    else:
        unknown = _UNKNOWN.fullmatch(message)
        if unknown:
            location = f"{location}.{unknown.group(1)}" if location else unknown.group(1)
        message = "unknown key" if unknown else _words(message)
    key = ".".join(filter(None, [where, location])) or "(top level)"
    return key.replace(".[", "["), message


def _decode(kind: type, value: Any) -> Any:
    if kind is Path:
        if isinstance(value, str | os.PathLike):
            return Path(value)
        raise ValueError("must be a path")
    raise NotImplementedError


def build(kind: type[S], data: Any, where: str = "") -> S:
    """``data`` (parsed YAML) as a checked ``kind``, or :class:`ConfigError` naming the key.

    A mapping of sections (``services:``, ``scaler:``) is built entry by entry, so its
    errors name the entry (msgspec's own path would say ``services[...]``).
    """
    keyed: dict[str, tuple[type[Section], Any]] = {}
    if isinstance(data, dict):
        for field in msgspec.structs.fields(kind):
            value_type = _section_values(field.type)
            if value_type is not None and field.name in data:
                keyed[field.name] = (value_type, data[field.name])
        data = {**data, **{name: {} for name in keyed}}
    try:
        section = msgspec.convert(data, kind, strict=False, dec_hook=_decode)
    except msgspec.ValidationError as exc:
        key, message = _path_from(exc, where)
        raise ConfigError(f"{key}: {message}") from None
    for name, (value_type, raw) in keyed.items():
        at = f"{where}.{name}" if where else name
        if not isinstance(raw, dict):
            raise ConfigError(f"{at}: must be a mapping")
        entries = {str(key): build(value_type, value, f"{at}.{key}") for key, value in raw.items()}
        setattr(section, name, entries)
    return section


def _section_values(annotation: Any) -> type[Section] | None:
    """``X`` of a ``dict[str, X]`` field where X is a section, else None."""
    if get_origin(annotation) is not dict:
        return None
    value_type = get_args(annotation)[1]
    return value_type if isinstance(value_type, type) and issubclass(value_type, Section) else None


def read_secret_file(path: Path) -> str:
    """Read a secret, refusing a file that group or others may read or write."""
    path = path.expanduser()
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"password file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"password file {path} has mode {stat.S_IMODE(mode):04o}; "
            "it must be readable by its owner only (chmod 600)"
        )
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"password file {path}: cannot read: {exc}") from None

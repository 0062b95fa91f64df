"""What every configuration section shares: strict validation, the state directory, secrets."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from zhpc.config.checks import check_bounded_numbers
from zhpc.errors import ConfigError


def zhpc_home() -> Path:
    """Where zhpc keeps local state (embedded broker, spool, local jobs)."""
    return Path(os.environ.get("ZHPC_HOME") or Path.home() / ".local/share/zhpc").expanduser()


class Section(BaseModel):
    """A YAML section: unknown keys, NaN and infinity are errors, defaults are validated."""

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _bounded_numbers(cls, value: Any) -> Any:
        """Free values too (``parameters``): no NaN, no infinity, no integer beyond 64 bits."""
        return check_bounded_numbers(value)


def one_of(words: list[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``: as pydantic lists a Literal's values."""
    return " or ".join(filter(None, [", ".join(words[:-1]), words[-1]])) if words else "nothing"


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

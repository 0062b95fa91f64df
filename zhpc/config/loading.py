"""Finding, reading and validating the configuration file, with its named environments.

Search order: ``--config FILE``, ``$ZHPC_CONFIG``, ``./zhpc.yaml``,
``~/.config/zhpc/config.yaml``; with none, the embedded default. An environment
(``-e NAME`` or ``$ZHPC_ENV``) is a partial configuration deep-merged over the
base before validation, like Zocalo's ``--environment``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
import yaml

from zhpc.config.base import build
from zhpc.config.model import Config
from zhpc.errors import ConfigError
from zhpc.masking import mask_secrets, mask_url


def find_config_file(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The configuration file to use, following the documented search order."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"configuration file {path} does not exist")
        return path
    env = os.environ.get("ZHPC_CONFIG")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise ConfigError(f"configuration file {path} (from ZHPC_CONFIG) does not exist")
        return path
    for candidate in (Path("zhpc.yaml"), Path.home() / ".config/zhpc/config.yaml"):
        if candidate.is_file():
            return candidate.resolve()
    return None


def _deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader whose too-long integers are YAML errors with a line, not a traceback."""

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"integer with {len(str(node.value))} digits is too large",
                node.start_mark,
            ) from None


_ConfigLoader.add_constructor("tag:yaml.org,2002:int", _ConfigLoader.construct_yaml_int)


def parse_config(
    data: Any, *, source: Path | None = None, environment: str | None = None
) -> Config:
    """Validate already-parsed YAML, overlaying ``environment`` if given."""
    where = str(source) if source else "configuration"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of sections")
    if environment:
        environments = data.get("environments") or {}
        if not isinstance(environments, dict) or environment not in environments:
            known = ", ".join(sorted(environments)) if isinstance(environments, dict) else ""
            raise ConfigError(
                f"{where}: environment {environment!r} is not defined"
                + (f" (known: {known})" if known else "")
            )
        overlay = environments[environment]
        if not isinstance(overlay, dict):
            raise ConfigError(f"{where}: environments.{environment}: must be a mapping")
        data = _deep_merge(data, overlay)
    for key in Config.not_from_file:
        if key in data:
            raise ConfigError(f"{where}: {key}: unknown key")
    try:
        config = build(Config, data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    config.source = source
    config.environment = environment
    return config


def load_config(
    path: str | os.PathLike[str] | None = None, environment: str | None = None
) -> Config:
    """Find, read and validate the configuration (the embedded default if there is none)."""
    environment = environment or os.environ.get("ZHPC_ENV") or None
    source = find_config_file(path)
    if source is None:
        if environment:
            raise ConfigError(
                f"environment {environment!r} requested but no configuration file was found"
            )
        return Config()
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read: {exc}") from None
    import yaml  # only where a file is read: the embedded default needs no YAML parser

    try:
        data = yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{source}: invalid YAML{where}: {problem}") from None
    config = parse_config(data, source=source, environment=environment)
    from zhpc.logs import apply_config

    apply_config(config.logging.level, config.logging.format, config.logging.gelf)
    if config.broker.password_file is not None:
        config.broker.password()  # fail early on a world-readable password file
    return config


def masked_dump(config: Config) -> dict[str, Any]:
    """The effective configuration as plain data, with every secret masked."""
    data = msgspec.to_builtins(config, enc_hook=str)
    for key in ("environments", *Config.not_from_file):
        data.pop(key, None)
    data = mask_secrets(data)
    data["broker"]["url"] = config.broker.display_url()
    data["quarantine"]["url"] = mask_url(config.quarantine.url)
    if config.broker.management_url:
        data["broker"]["management_url"] = mask_url(config.broker.management_url)
    return data

"""The whole configuration (:class:`Config`), and its small sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from zhpc.config.base import Section, check_choice
from zhpc.config.broker import BrokerConfig
from zhpc.config.checks import check_allowed_roots, check_existing_directory
from zhpc.config.cluster import ClusterConfig
from zhpc.config.services import LimitsConfig, ScalerConfig, ServiceConfig
from zhpc.config.stores import EventsConfig, QuarantineConfig


class RecipesConfig(Section, kw_only=True):
    #: Directory of ``*.json``/``*.yaml`` recipes; None means the examples shipped with zhpc.
    directory: Path | None = None

    checks = {"directory": check_existing_directory}


class StagingConfig(Section, kw_only=True):
    #: Only files under these roots may be staged into or out of a job: absolute directories,
    #: checked as written (an empty entry would mean ``.``), then kept as paths.
    allowed_roots: list[str] = []

    checks = {"allowed_roots": lambda roots: [Path(root) for root in check_allowed_roots(roots)]}


def _check_gelf_url(url: str) -> str:
    if url and (urlsplit(url).scheme not in ("udp", "tcp") or not urlsplit(url).hostname):
        raise ValueError("must be udp://host:port or tcp://host:port")
    return url


class LoggingConfig(Section, kw_only=True):
    #: DEBUG, INFO, WARNING or ERROR.
    level: str = "WARNING"
    #: text or json.
    format: str = "text"
    #: Also send log records to Graylog: ``udp://host:port`` (GELF, needs graypy).
    gelf: str = ""

    checks = {
        "level": lambda level: check_choice(level, ("DEBUG", "INFO", "WARNING", "ERROR")),
        "format": lambda form: check_choice(form, ("text", "json")),
        "gelf": _check_gelf_url,
    }


class Config(Section, kw_only=True):
    broker: BrokerConfig = msgspec.field(default_factory=BrokerConfig)
    cluster: ClusterConfig = msgspec.field(default_factory=ClusterConfig)
    recipes: RecipesConfig = msgspec.field(default_factory=RecipesConfig)
    staging: StagingConfig = msgspec.field(default_factory=StagingConfig)
    services: dict[str, ServiceConfig] = {}
    scaler: dict[str, ScalerConfig] = {}
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)
    quarantine: QuarantineConfig = msgspec.field(default_factory=QuarantineConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    events: EventsConfig = msgspec.field(default_factory=EventsConfig)
    #: Named partial configurations, overlaid by ``-e NAME``; not part of the result.
    environments: dict[str, dict[str, Any]] = {}

    #: Where this configuration came from (None: the embedded default); not a YAML key.
    source: Path | None = None
    environment: str | None = None

    #: Set by the loader, never read from the file (:func:`~zhpc.config.loading.parse_config`).
    not_from_file = ("source", "environment")

    def service(self, name: str) -> ServiceConfig:
        return self.services.get(name) or ServiceConfig()

    def scaler_for(self, name: str) -> ScalerConfig:
        return self.scaler.get(name) or ScalerConfig()

"""The whole configuration (:class:`Config`), and its small sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from zhpc.config.base import Section
from zhpc.config.broker import BrokerConfig
from zhpc.config.checks import check_allowed_roots, check_existing_directory
from zhpc.config.cluster import ClusterConfig
from zhpc.config.services import LimitsConfig, ScalerConfig, ServiceConfig
from zhpc.config.stores import EventsConfig, QuarantineConfig


class RecipesConfig(Section):
    #: Directory of ``*.json``/``*.yaml`` recipes; None means the examples shipped with zhpc.
    directory: Path | None = None

    @field_validator("directory")
    @classmethod
    def _existing(cls, path: Path | None) -> Path | None:
        return check_existing_directory(path)


class StagingConfig(Section):
    #: Only files under these roots may be staged into or out of a job.
    allowed_roots: list[Path] = []

    @field_validator("allowed_roots", mode="before")
    @classmethod
    def _absolute_roots(cls, roots: Any) -> Any:
        return check_allowed_roots(roots)


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    format: Literal["text", "json"] = "text"
    #: Also send log records to Graylog: ``udp://host:port`` (GELF, needs graypy).
    gelf: str = ""

    @field_validator("gelf")
    @classmethod
    def _gelf_url(cls, url: str) -> str:
        if url and (urlsplit(url).scheme not in ("udp", "tcp") or not urlsplit(url).hostname):
            raise ValueError("must be udp://host:port or tcp://host:port")
        return url


class Config(Section):
    broker: BrokerConfig = BrokerConfig()
    cluster: ClusterConfig = ClusterConfig()
    recipes: RecipesConfig = RecipesConfig()
    staging: StagingConfig = StagingConfig()
    services: dict[str, ServiceConfig] = {}
    scaler: dict[str, ScalerConfig] = {}
    logging: LoggingConfig = LoggingConfig()
    quarantine: QuarantineConfig = QuarantineConfig()
    limits: LimitsConfig = LimitsConfig()
    events: EventsConfig = EventsConfig()
    #: Named partial configurations, overlaid by ``-e NAME``; not part of the result.
    environments: dict[str, dict[str, Any]] = {}

    #: Where this configuration came from (None: the embedded default); not a YAML key.
    source: Path | None = Field(None, exclude=True)
    environment: str | None = Field(None, exclude=True)

    def service(self, name: str) -> ServiceConfig:
        return self.services.get(name) or ServiceConfig()

    def scaler_for(self, name: str) -> ScalerConfig:
        return self.scaler.get(name) or ScalerConfig()

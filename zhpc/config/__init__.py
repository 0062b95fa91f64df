"""Configuration: YAML files checked by msgspec (zhpc.config.base), with named environments.

Search order: ``--config FILE``, ``$ZHPC_CONFIG``, ``./zhpc.yaml``,
``~/.config/zhpc/config.yaml``; with none, the embedded default (SQLite broker
and local process backend, state under ``$ZHPC_HOME``). An environment
(``-e NAME`` or ``$ZHPC_ENV``) is a partial configuration deep-merged over the
base before validation, like Zocalo's ``--environment``.

* :mod:`~zhpc.config.base`: what every section shares (strictness, ``zhpc_home``, secrets);
* :mod:`~zhpc.config.checks`: the checks behind the validators;
* :mod:`~zhpc.config.broker`, :mod:`~zhpc.config.cluster`, :mod:`~zhpc.config.services`,
  :mod:`~zhpc.config.stores`: the sections, one area each;
* :mod:`~zhpc.config.model`: :class:`Config`, the whole file;
* :mod:`~zhpc.config.loading`: finding, reading and validating it (``load_config``).

Callers import every name from ``zhpc.config``.
"""

from __future__ import annotations

from zhpc.config.base import read_secret_file, zhpc_home
from zhpc.config.broker import DEFAULT_DELIVERY_LIMIT, BrokerConfig, TLSConfig
from zhpc.config.cluster import ClusterConfig, DRMAAConfig, SlurmRestConfig, SSHConfig
from zhpc.config.loading import find_config_file, load_config, masked_dump, parse_config
from zhpc.config.model import Config, LoggingConfig, RecipesConfig, StagingConfig
from zhpc.config.services import LimitsConfig, ScalerConfig, ServiceConfig
from zhpc.config.stores import EventsConfig, QuarantineConfig
from zhpc.masking import mask_secrets, mask_url

__all__ = [
    "DEFAULT_DELIVERY_LIMIT",
    "BrokerConfig",
    "ClusterConfig",
    "Config",
    "DRMAAConfig",
    "EventsConfig",
    "LimitsConfig",
    "LoggingConfig",
    "QuarantineConfig",
    "RecipesConfig",
    "SSHConfig",
    "ScalerConfig",
    "ServiceConfig",
    "SlurmRestConfig",
    "StagingConfig",
    "TLSConfig",
    "find_config_file",
    "load_config",
    "mask_secrets",
    "mask_url",
    "masked_dump",
    "parse_config",
    "read_secret_file",
    "zhpc_home",
]

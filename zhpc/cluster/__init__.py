"""Batch schedulers behind one interface, found by name: ``local`` processes, ``slurm``, ``ssh``.

A backend is a :class:`Cluster` registered in the ``zhpc.clusters`` entry-point
group under its ``cluster.backend`` name. Use :func:`get_cluster` with the
``cluster`` section of the configuration; backends are imported only when
chosen (or, by :func:`job_identity`, when a job of theirs asks who it is), so
importing this package stays cheap.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from zhpc.cluster.base import (
    DEFAULT_NAME_PREFIX,
    Cluster,
    JobIdentity,
    JobInfo,
    JobSpec,
    JobState,
    format_time_limit,
    time_limit_seconds,
)

if TYPE_CHECKING:
    from zhpc.config import ClusterConfig

__all__ = [
    "DEFAULT_NAME_PREFIX",
    "Cluster",
    "JobIdentity",
    "JobInfo",
    "JobSpec",
    "JobState",
    "backend_class",
    "backend_names",
    "format_time_limit",
    "get_cluster",
    "job_identity",
    "time_limit_seconds",
]

log = logging.getLogger(__name__)


def backend_names() -> list[str]:
    """The installed backends' names, as ``cluster.backend`` accepts them (none imported)."""
    from zhpc import plugins

    return plugins.names(plugins.CLUSTERS)


def backend_class(name: str) -> type[Cluster]:
    """The backend class registered as ``name``; ZhpcError if there is none or it is broken."""
    from zhpc import plugins
    from zhpc.errors import ClusterError

    return plugins.load_class(plugins.CLUSTERS, name, Cluster, ClusterError, "cluster backend")


def get_cluster(config: ClusterConfig) -> Cluster:
    """The scheduler backend that ``config.backend`` names, set up from ``config``."""
    if config.backend not in backend_names():
        from zhpc.errors import ConfigError

        raise ConfigError(f"cluster.backend: unknown backend {config.backend!r}")
    return backend_class(config.backend).from_config(config)


def job_identity(environ: Mapping[str, str]) -> tuple[type[Cluster], JobIdentity] | None:
    """Which installed backend's job ``environ`` belongs to, and who the job is; None outside one.

    Only the backends whose marker variable (their ``zhpc.job_environments``
    entry point) is set are imported and asked; if several recognise the job,
    the lowest :attr:`Cluster.environment_rank` wins. A backend that cannot be
    imported is skipped: a job must not fail because a plug-in is broken.
    """
    from zhpc import plugins
    from zhpc.errors import ZhpcError

    found: list[tuple[int, type[Cluster], JobIdentity]] = []
    for variable in plugins.names(plugins.JOB_ENVIRONMENTS):
        if not environ.get(variable):
            continue
        try:
            cls = plugins.load(plugins.JOB_ENVIRONMENTS, variable)
        except ZhpcError as exc:
            log.debug("job environment %s skipped: %s", variable, exc)
            continue
        if not (isinstance(cls, type) and issubclass(cls, Cluster)):
            log.debug("job environment %s skipped: %r is not a Cluster class", variable, cls)
            continue
        identity = cls.job_identity(environ)
        if identity is not None:
            found.append((cls.environment_rank, cls, identity))
    if not found:
        return None
    _, cls, identity = min(found, key=lambda item: item[0])
    return cls, identity

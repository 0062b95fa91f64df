"""Batch schedulers behind one interface: ``local`` processes, ``slurm``, ``ssh``.

Use :func:`get_cluster` with the ``cluster`` section of the configuration;
backends are imported only when chosen, so importing this package stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zhpc.cluster.base import (
    DEFAULT_NAME_PREFIX,
    Cluster,
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
    "JobInfo",
    "JobSpec",
    "JobState",
    "format_time_limit",
    "get_cluster",
    "time_limit_seconds",
]


def get_cluster(config: ClusterConfig) -> Cluster:
    """The scheduler backend that ``config.backend`` names, set up from ``config``."""
    if config.backend == "local":
        from zhpc.cluster.local import LocalCluster

        return LocalCluster(config.job_workdir() / "local")
    slurm_options = {
        "partition": config.partition,
        "account": config.account,
        "extra_sbatch_args": config.extra_sbatch_args,
        "command_timeout": config.command_timeout,
    }
    if config.backend == "slurm":
        from zhpc.cluster.slurm import SlurmCluster

        return SlurmCluster(**slurm_options)  # type: ignore[arg-type]
    if config.backend == "ssh":
        from zhpc.cluster.ssh import SSHCluster

        return SSHCluster(config.ssh, **slurm_options)
    from zhpc.errors import ConfigError

    raise ConfigError(f"cluster.backend: unknown backend {config.backend!r}")

"""``cluster:``: the batch scheduler backend and how jobs are shaped."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from zhpc import plugins
from zhpc.config.base import Section, check_choice, zhpc_home
from zhpc.config.checks import check_time_limit


class SSHConfig(Section, kw_only=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=1, le=65535)] = 22
    user: str | None = None
    key_file: Path | None = None
    known_hosts: Path | None = None
    strict_host_key_checking: bool = True
    timeout: Annotated[float, Meta(gt=0)] = 30.0


class SlurmRestConfig(Section, kw_only=True):
    """``cluster.slurmrestd``: where slurmrestd listens and whose token to send."""

    url: str = "http://127.0.0.1:6820"
    #: The token's user (X-SLURM-USER-NAME); None: the user running zhpc.
    user: str | None = None
    #: A file holding the JWT, readable by its owner only; None: the SLURM_JWT variable.
    token_file: Path | None = None
    api_version: Annotated[str, Meta(pattern=r"^v\d+\.\d+\.\d+$")] = "v0.0.38"


class DRMAAConfig(Section, kw_only=True):
    """``cluster.drmaa``: the DRMAA library and Grid Engine queue."""

    #: libdrmaa.so; None: DRMAA_LIBRARY_PATH, or Debian's Grid Engine library.
    library: Path | None = None
    #: Grid Engine queue (``-q``); None: the scheduler's choice. cluster.partition also sets it.
    queue: str | None = None
    #: Extra qsub options (DRMAA's native specification), one argument per item.
    native_args: list[str] = []


def _check_backend(backend: Any) -> Any:
    return check_choice(backend, plugins.names(plugins.CLUSTERS))


class ClusterConfig(Section, kw_only=True):
    #: An installed backend (the ``zhpc.clusters`` entry points): local, slurm, ssh...
    backend: str = "local"
    partition: str | None = None
    account: str | None = None
    default_time: str = "01:00:00"
    extra_sbatch_args: list[str] = []
    command_timeout: Annotated[float, Meta(gt=0)] = 30.0
    #: Where job scripts, recipe-wrapper files and job output go (shared filesystem on a cluster).
    workdir: Path | None = None
    ssh: SSHConfig = msgspec.field(default_factory=SSHConfig)
    slurmrestd: SlurmRestConfig = msgspec.field(default_factory=SlurmRestConfig)
    drmaa: DRMAAConfig = msgspec.field(default_factory=DRMAAConfig)

    checks = {
        "backend": _check_backend,
        "default_time": check_time_limit,
    }

    def job_workdir(self) -> Path:
        return (self.workdir or zhpc_home() / "jobs").expanduser()

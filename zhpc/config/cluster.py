"""``cluster:``: the batch scheduler backend and how jobs are shaped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from zhpc import plugins
from zhpc.config.base import Section, one_of, zhpc_home
from zhpc.config.checks import check_time_limit


class SSHConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(22, ge=1, le=65535)
    user: str | None = None
    key_file: Path | None = None
    known_hosts: Path | None = None
    strict_host_key_checking: bool = True
    timeout: float = Field(30.0, gt=0)


class SlurmRestConfig(Section):
    """``cluster.slurmrestd``: where slurmrestd listens and whose token to send."""

    url: str = "http://127.0.0.1:6820"
    #: The token's user (X-SLURM-USER-NAME); None: the user running zhpc.
    user: str | None = None
    #: A file holding the JWT, readable by its owner only; None: the SLURM_JWT variable.
    token_file: Path | None = None
    api_version: str = Field("v0.0.38", pattern=r"^v\d+\.\d+\.\d+$")


class DRMAAConfig(Section):
    """``cluster.drmaa``: the DRMAA library and Grid Engine queue."""

    #: libdrmaa.so; None: DRMAA_LIBRARY_PATH, or Debian's Grid Engine library.
    library: Path | None = None
    #: Grid Engine queue (``-q``); None: the scheduler's choice. cluster.partition also sets it.
    queue: str | None = None
    #: Extra qsub options (DRMAA's native specification), one argument per item.
    native_args: list[str] = []


class ClusterConfig(Section):
    #: An installed backend (the ``zhpc.clusters`` entry points): local, slurm, ssh...
    backend: str = "local"
    partition: str | None = None
    account: str | None = None
    default_time: str = "01:00:00"
    extra_sbatch_args: list[str] = []
    command_timeout: float = Field(30.0, gt=0)
    #: Where job scripts, recipe-wrapper files and job output go (shared filesystem on a cluster).
    workdir: Path | None = None
    ssh: SSHConfig = SSHConfig()
    slurmrestd: SlurmRestConfig = SlurmRestConfig()
    drmaa: DRMAAConfig = DRMAAConfig()

    @field_validator("backend", mode="before")
    @classmethod
    def _known_backend(cls, backend: Any) -> Any:
        names = plugins.names(plugins.CLUSTERS)
        if backend not in names:
            expected = one_of([repr(name) for name in names])
            raise PydanticCustomError(
                "literal_error", "Input should be {expected}", {"expected": expected}
            )
        return backend

    @field_validator("default_time")
    @classmethod
    def _time_limit(cls, value: str) -> str | None:
        return check_time_limit(value)

    def job_workdir(self) -> Path:
        return (self.workdir or zhpc_home() / "jobs").expanduser()

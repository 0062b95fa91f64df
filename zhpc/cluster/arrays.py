"""Services as job arrays: the one job that runs N copies of a service.

Shared by ``zhpc submit-services`` and a scaler: both ask for "N more tasks of
this service" and get the same :class:`~zhpc.cluster.base.JobSpec`. Each task
runs ``zhpc service -s NAME`` from the batch script template
``slurm/service-array.sh``, with the interpreter that builds the spec (so the
job uses the same installation) and the same ``--config``/``-e``. Tasks drain
before their wall-clock limit twice over: the scheduler sends USR1
(``--signal=B:USR1@M``, forwarded to the service by the script) and the service
also watches the job's end time itself, because Slurm may send the signal up
to a minute early or late.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from zhpc.cluster.base import JobSpec, time_limit_seconds

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.config import Config

#: Service jobs are named ``zhpc-svc-<service>``, so the scaler can find them with one listing.
NAME_PREFIX = "zhpc-svc-"
TEMPLATE = "service-array.sh"
PLACEHOLDER = "@ZHPC_COMMAND@"


def service_command(config: Config, service: str) -> list[str]:
    """The argument vector each task runs: this interpreter, this configuration, and
    ``-v`` so that the job's log says when and why the service drained."""
    from zhpc.jobfiles import zhpc_command

    return [*zhpc_command(config), "-v", "service", "-s", service]


def batch_script(command: list[str]) -> str:
    """The service-array template with ``command`` quoted for the shell."""
    from importlib import resources

    template = resources.files("zhpc.slurm").joinpath(TEMPLATE).read_text(encoding="utf-8")
    if template.count(PLACEHOLDER) != 1:
        from zhpc.errors import ZhpcError

        raise ZhpcError(f"slurm/{TEMPLATE} must contain {PLACEHOLDER} exactly once")
    return template.replace(PLACEHOLDER, shlex.join(command))


def service_array_spec(
    config: Config,
    service: str,
    count: int,
    *,
    time: str | None = None,
    partition: str | None = None,
    hold: bool = False,
) -> JobSpec:
    """The job array running ``count`` copies of ``service``."""
    settings = config.service(service)
    scaler = config.scaler_for(service)
    time_limit = time or scaler.time or config.cluster.default_time
    seconds = time_limit_seconds(time_limit)
    # USR1 this long before the limit: time to finish or hand back the message in hand
    # (drain_grace) and to exit (end_margin); never more than half the job.
    margin = max(1, min(int(settings.end_margin + settings.drain_grace), int(seconds // 2)))
    workdir = config.cluster.job_workdir()
    return JobSpec(
        name=f"{NAME_PREFIX}{service}",
        script=batch_script(service_command(config, service)),
        time_limit=time_limit,
        partition=partition or scaler.partition,
        array=count,
        comment=f"zhpc-service:{service}",
        workdir=workdir,
        output=workdir / f"{NAME_PREFIX}{service}-%A_%a.out",
        signal=f"B:USR1@{margin}",
        extra_args=["--hold"] if hold else [],
    )

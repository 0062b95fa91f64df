"""``zhpc submit-services``: run N copies of a service as ONE Slurm job array.

Each array task runs ``zhpc service -s NAME`` from the batch script template
``slurm/service-array.sh``, with the interpreter that runs this command (so the
job uses the same installation) and the same ``--config``/``-e``. Tasks drain
before their wall-clock limit twice over: Slurm sends USR1 (``--signal=B:USR1@M``,
forwarded to the service by the script) and the service also watches the job's
end time itself, because Slurm may send the signal up to a minute early or late.
"""

from __future__ import annotations

import argparse
import shlex
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.cluster import JobSpec
    from zhpc.config import Config

#: Service jobs are named ``zhpc-svc-<service>``, so the scaler can find them with one listing.
NAME_PREFIX = "zhpc-svc-"
TEMPLATE = "service-array.sh"
PLACEHOLDER = "@ZHPC_COMMAND@"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "submit-services",
        help="submit a service as one Slurm job array of N tasks",
        description="Submit ONE job array whose N tasks each run `zhpc service -s NAME` and "
        "drain before the time limit. Prints the job id (--dry-run: the batch script).",
    )
    parser.add_argument("-s", "--service", metavar="NAME", help="the service to run")
    parser.add_argument("--count", "-n", type=int, default=1, metavar="N",
                        help="number of array tasks (default: 1)")
    parser.add_argument("--time", metavar="HH:MM:SS",
                        help="wall-clock limit per task (default: scaler/cluster config)")
    parser.add_argument("--partition", metavar="P", help="Slurm partition")
    parser.add_argument("--hold", action="store_true",
                        help="submit held (release with scontrol release)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the sbatch command and script instead of submitting")
    parser.set_defaults(handler=_run)


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
    """The job array running ``count`` copies of ``service`` (also usable by a scaler)."""
    from zhpc.cluster import JobSpec, time_limit_seconds

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


def _run(args: argparse.Namespace) -> int:
    from zhpc import plugins
    from zhpc.config import load_config
    from zhpc.errors import ZhpcError

    if not args.service:
        raise ZhpcError("name a service with -s NAME (zhpc service --list shows them)")
    if args.count < 1:
        raise ZhpcError(f"--count must be at least 1, not {args.count}")
    known = plugins.available(plugins.SERVICES)
    if args.service not in known:
        raise ZhpcError(f"no service named {args.service!r} "
                        f"(available: {', '.join(known) or 'none installed'})")
    config = load_config(args.config, args.environment)
    spec = service_array_spec(config, args.service, args.count, time=args.time,
                              partition=args.partition, hold=args.hold)
    from zhpc.cluster import get_cluster

    if args.dry_run:
        from zhpc.cluster.slurm import sbatch_argv

        print(f"# {config.cluster.backend} backend: "
              + shlex.join(sbatch_argv(spec, site_args=config.cluster.extra_sbatch_args)))
        print(spec.script, end="")
        return 0
    config.cluster.job_workdir().mkdir(parents=True, exist_ok=True)
    with get_cluster(config.cluster) as cluster:
        job_id = cluster.submit(spec)
    print(job_id)
    return 0

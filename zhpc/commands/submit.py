"""``zhpc submit-services``: run N copies of a service as ONE Slurm job array.

The job array itself (the batch script, the drain signal before the time
limit) is :func:`zhpc.cluster.arrays.service_array_spec`, which a scaler
shares; this command checks its arguments, submits it, and prints the job id.
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from zhpc.commands.argtypes import bounded_count

#: Most tasks in one array: Slurm's own MaxArraySize is usually far lower (default 1001).
MAX_COUNT = 10_000


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "submit-services",
        help="submit a service as one Slurm job array of N tasks",
        description="Submit ONE job array whose N tasks each run `zhpc service -s NAME` and "
        "drain before the time limit. Prints the job id (--dry-run: the batch script).",
    )
    parser.add_argument("-s", "--service", metavar="NAME", help="the service to run")
    parser.add_argument(
        "--count",
        "-n",
        type=bounded_count(MAX_COUNT),
        default=1,
        metavar="N",
        help=f"number of array tasks, 1 to {MAX_COUNT} (default: 1)",
    )
    parser.add_argument(
        "--time",
        metavar="HH:MM:SS",
        help="wall-clock limit per task (default: scaler/cluster config)",
    )
    parser.add_argument("--partition", metavar="P", help="Slurm partition")
    parser.add_argument(
        "--hold", action="store_true", help="submit held (release with scontrol release)"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the sbatch command and script instead of submitting",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from zhpc import plugins
    from zhpc.cluster.arrays import service_array_spec
    from zhpc.config import load_config
    from zhpc.errors import ZhpcError

    if not args.service:
        raise ZhpcError("name a service with -s NAME (zhpc service --list shows them)")
    if args.count < 1:
        raise ZhpcError(f"--count must be at least 1, not {args.count}")
    known = plugins.available(plugins.SERVICES)
    if args.service not in known:
        raise ZhpcError(
            f"no service named {args.service!r} (available: {', '.join(known) or 'none installed'})"
        )
    config = load_config(args.config, args.environment)
    spec = service_array_spec(
        config, args.service, args.count, time=args.time, partition=args.partition, hold=args.hold
    )
    from zhpc.cluster import get_cluster

    if args.dry_run:
        if config.cluster.backend == "local":
            print(_local_plan(spec, config))
        else:
            from zhpc.cluster.slurm import sbatch_argv

            print(
                f"# {config.cluster.backend} backend: "
                + shlex.join(sbatch_argv(spec, site_args=config.cluster.extra_sbatch_args))
            )
        print(spec.script, end="")
        return 0
    config.cluster.job_workdir().mkdir(parents=True, exist_ok=True)
    with get_cluster(config.cluster) as cluster:
        job_id = cluster.submit(spec)
    print(job_id)
    return 0


def _local_plan(spec: Any, config: Any) -> str:
    """What the local backend does with ``spec`` (it runs no sbatch), as comment lines."""
    signal = spec.signal_parts()
    lines = [
        f"# local backend (no sbatch): {spec.array or 1} detached local process(es) run the "
        "script below",
        f"#   job directories: {config.cluster.job_workdir() / 'local'}/<job id>_<task>",
        f"#   working directory: {spec.workdir}; output: {spec.output}",
        f"#   time limit: {spec.time_limit} ({spec.time_limit_seconds:.0f} s), then killed",
    ]
    if signal:
        lines.append(f"#   SIG{signal[0]} to the script {signal[1]:.0f} s before the limit")
    return "\n".join(lines)

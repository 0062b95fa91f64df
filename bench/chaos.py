"""Chaos benchmark: N messages through a 3-step recipe on Slurm while faults hit everything.

Starts a PRIVATE RabbitMQ node (127.0.0.1:5690; the shared broker is never
touched), services as Slurm job arrays kept up by ``zhpc scale``, publishes
N messages at ``--rate`` and runs a seeded fault plan meanwhile (SIGKILL of
service processes, scancel and requeue of array tasks, tasks running into
their time limit, slurmd SIGKILL + restart, broker stop_app/start_app, cut
connections, a poison message every 1,000). Waits until every message is
accounted for (bounded by --drain-timeout), cleans up and prints one JSON
line: sent, arrived, duplicates, quarantined, lost (must be 0), drain time,
throughput, faults by kind, max service RSS. ``--soak MINUTES``: constant load
with a fault every few seconds, RSS and open files sampled per service process.

Needs root (slurmd restart, ``ss -K``), the test cluster's Slurm and
``/usr/lib/rabbitmq``. Example: ``python bench/chaos.py -n 10000 --faults all``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from chaoslib import faults
from chaoslib.run import ChaosRun, Settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--messages", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=100.0, help="messages/s published")
    parser.add_argument("--repeats", type=int, default=3, help="faults of each kind")
    parser.add_argument(
        "--faults",
        default="default",
        help="comma-separated kinds, 'all', or 'default' (all but slurmd): "
        + ", ".join(faults.KINDS),
    )
    parser.add_argument(
        "--count",
        action="append",
        default=[],
        metavar="KIND=N",
        help="this many faults of KIND instead of --repeats (repeatable)",
    )
    parser.add_argument("--tasks", type=int, default=2, help="array tasks per service")
    parser.add_argument("--task-time", default="00:10:00")
    parser.add_argument("--drain-timeout", type=float, default=900.0)
    parser.add_argument("--soak", type=float, metavar="MINUTES")
    parser.add_argument("--fault-every", type=float, default=5.0, help="soak: seconds")
    parser.add_argument("--port", type=int, default=5690, help="private AMQP port")
    parser.add_argument(
        "--workflows",
        default="",
        metavar="MODES",
        help="then the same against python-workflows under zocalo.service: "
        "comma-separated plain,transactional",
    )
    parser.add_argument("--no-zhpc", action="store_true", help="only the workflows runs")
    parser.add_argument("--base", type=Path, help="run directory (default: a new /tmp dir)")
    args = parser.parse_args()
    # SIGTERM (timeout, kill) still cleans up: jobs cancelled, private broker stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.faults == "all":
        kinds = list(faults.KINDS)
    elif args.faults == "default":
        kinds = [k for k in faults.KINDS if k != "slurmd"]
    else:
        kinds = [k for k in args.faults.split(",") if k]
    counts = {}
    for item in args.count:
        kind, _, number = item.partition("=")
        if not number.isdigit():
            parser.error(f"--count {item!r}: expected KIND=N")
        counts[kind] = int(number)
    unknown = sorted((set(kinds) | set(counts)) - set(faults.KINDS))
    if unknown:
        parser.error(f"unknown fault kind(s): {', '.join(unknown)}")
    settings = Settings(
        messages=args.messages,
        seed=args.seed,
        rate=args.rate,
        kinds=kinds,
        repeats=args.repeats,
        counts=counts,
        tasks=args.tasks,
        task_time=args.task_time,
        drain_timeout=args.drain_timeout,
        soak_minutes=args.soak,
        fault_every=args.fault_every,
        base=args.base,
        port=args.port,
    )
    report: dict = {"bench": "chaos", "ok": True} if args.no_zhpc else ChaosRun(settings).run()
    modes = [m for m in args.workflows.split(",") if m]
    if modes:
        from chaoslib.workflows_run import WorkflowsRun

        report["workflows"] = {mode: WorkflowsRun(settings, mode).run() for mode in modes}
    print(json.dumps(report, separators=(",", ":")))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

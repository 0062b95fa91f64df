"""Fuzz benchmark: 10,000 hypothesis-generated hostile messages (``-n``), a quarter each at a
service and at the Dispatcher on the embedded broker and on a private RabbitMQ node.

Prints one JSON line: per broker and target the cases, how many were processed
and quarantined (by reason), the problems found (must be none: every input is
processed with all its outputs confirmed, or quarantined with a reason), and the time.
``tests/services/test_fuzz.py`` runs the same with 1,000 cases.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from chaoslib.fuzz import fuzz, good_recipe
from chaoslib.rabbit import PrivateRabbit

from zhpc.config import BrokerConfig
from zhpc.transport import Transport, get_transport


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--port", type=int, default=5692, help="private AMQP port")
    args = parser.parse_args()
    logging.disable(logging.ERROR)  # every quarantined case logs an error: not the output
    per_run = max(1, args.cases // 4)
    results = []
    with tempfile.TemporaryDirectory(prefix="zfuzz-") as tmp:
        base = Path(tmp)
        recipes = base / "recipes"
        recipes.mkdir()
        rabbit = PrivateRabbit(
            base / "rabbit", port=args.port, dist_port=args.port + 20000, management_port=None
        )
        rabbit.start()
        try:
            for kind, url in (
                ("embedded", f"sqlite://{base / 'broker.sqlite'}"),
                ("rabbitmq", rabbit.url),
            ):
                for target in ("service", "dispatcher"):
                    out = f"fuzz.out.{uuid.uuid4().hex[:8]}"
                    (recipes / "fuzz.json").write_text(json.dumps(good_recipe(out, out)))

                    def connect(url: str = url) -> Transport:
                        transport = get_transport(BrokerConfig(url=url, delivery_limit=1))
                        transport.connect()
                        return transport

                    started = time.monotonic()
                    report = fuzz(
                        target,
                        connect,
                        f"fuzz.{target}.{uuid.uuid4().hex[:8]}",
                        out,
                        per_run,
                        args.seed,
                        recipes_dir=recipes,
                    )
                    report.update(broker=kind, seconds=round(time.monotonic() - started, 1))
                    results.append(report)
        finally:
            rabbit.stop()
    summary = {
        "bench": "fuzz",
        "cases": sum(r["cases"] for r in results),
        "problems": sum(r["problem_count"] for r in results),
        "runs": results,
    }
    print(json.dumps(summary, separators=(",", ":")))
    return 0 if summary["problems"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

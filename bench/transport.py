"""Transport benchmark: prints ONE JSON line (not a test; targets are judged by reading it).

Embedded broker (this file): N persistent ~200-byte messages through a fresh
SQLite file: ``publish()`` one at a time, ``publish_many()`` in batches, then
consume+ack with prefetch 100, and consume+commit (one output per input).
Target: consume+ack >= 5,000 msg/s in one process.

RabbitMQ (``bench/transport_rabbitmq.py``) and ActiveMQ over STOMP
(``bench/transport_stomp.py``: zhpc against raw stomp.py, target ratio >= 0.7):
if such a file exists, its ``run(n: int) -> dict`` runs in the same process and
its keys are merged into the same line.

Usage: ``python bench/transport.py [-n 20000] [--only embedded|rabbitmq|stomp] [--dir DIR]``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from zhpc.message import Message, Outgoing
from zhpc.transport.embedded import EmbeddedTransport

BODY_SIZE = 200
PREFETCH = 100
BATCH = 100


def _body(i: int) -> bytes:
    head = json.dumps({"i": i, "pad": ""}).encode()
    return head[:-2] + b"x" * max(0, BODY_SIZE - len(head)) + b'"}'


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else float("inf")


def _consume(transport: EmbeddedTransport, queue: str, n: int, settle: Any) -> float:
    """Seconds to consume ``n`` messages from ``queue``, settling each with ``settle``."""
    done = 0

    def on_message(message: Message) -> None:
        nonlocal done
        settle(message)
        done += 1

    start = time.perf_counter()
    subscription = transport.subscribe(queue, on_message, prefetch=PREFETCH)
    while done < n:
        if transport.poll(1.0) == 0 and done < n:
            raise RuntimeError(f"stalled after {done} of {n} messages")
    elapsed = time.perf_counter() - start
    transport.unsubscribe(subscription)
    return elapsed


def measure_embedded(n: int, directory: str | None) -> dict[str, Any]:
    """Rates of the embedded broker on a fresh file in ``directory``."""
    with tempfile.TemporaryDirectory(dir=directory, prefix="zhpc-bench-") as tmp:
        path = Path(tmp) / "broker.sqlite"
        bodies = [_body(i) for i in range(n)]
        with EmbeddedTransport(path) as transport:
            start = time.perf_counter()
            for body in bodies:
                transport.publish(Outgoing(destination="one", body=body))
            publish_s = time.perf_counter() - start

            start = time.perf_counter()
            for i in range(0, n, BATCH):
                transport.publish_many(
                    [Outgoing(destination="many", body=b) for b in bodies[i : i + BATCH]]
                )
            publish_many_s = time.perf_counter() - start

            consume_s = _consume(transport, "one", n, transport.ack)

            def commit(message: Message) -> None:
                transport.commit([Outgoing(destination="out", body=message.body)], ack=message)

            commit_s = _consume(transport, "many", n, commit)
            transport.flush()
            if transport.queue_depth("out").ready != n:
                raise RuntimeError("commit benchmark lost messages")
    return {
        "n": n,
        "body_bytes": len(bodies[0]),
        "embedded_publish_per_s": _rate(n, publish_s),
        "embedded_publish_many_per_s": _rate(n, publish_many_s),
        "embedded_consume_ack_per_s": _rate(n, consume_s),
        "embedded_consume_commit_per_s": _rate(n, commit_s),
        "embedded_target_met": n / consume_s >= 5000,
    }


def measure_rabbitmq(n: int, name: str = "rabbitmq") -> dict[str, Any] | None:
    """Run bench/transport_<name>.py's ``run(n)`` if that file exists."""
    path = Path(__file__).with_name(f"transport_{name}.py")
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(f"bench_transport_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run(n)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20_000, help="messages per measurement")
    parser.add_argument("--only", choices=("embedded", "rabbitmq", "stomp"))
    parser.add_argument("--dir", help="where to put the SQLite file (default: $TMPDIR)")
    args = parser.parse_args()

    result: dict[str, Any] = {"benchmark": "transport"}
    if args.only in (None, "embedded"):
        result.update(measure_embedded(args.n, args.dir))
    if args.only in (None, "rabbitmq"):
        try:
            rabbit = measure_rabbitmq(args.n)
        except Exception as exc:  # one line for the whole run, even when RabbitMQ fails
            result["rabbitmq_error"] = f"{type(exc).__name__}: {exc}"
        else:
            if rabbit is None:
                result["rabbitmq_error"] = "bench/transport_rabbitmq.py not present"
            else:
                result.update(rabbit)
    if args.only in (None, "stomp"):
        try:
            stomp = measure_rabbitmq(min(args.n, 5000), "stomp")  # ActiveMQ is slower
        except Exception as exc:
            result["stomp_error"] = f"{type(exc).__name__}: {exc}"
        else:
            result.update(stomp or {"stomp_error": "bench/transport_stomp.py not present"})
    result["benchmark"] = "transport"  # the RabbitMQ module names itself too
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Many consumer processes on one embedded-broker file: prints ONE JSON line.

For 1, 8 and 32 consumer processes sharing one SQLite file (issue 12, item 4):
a producer keeps ``4 x processes`` messages in flight (closed loop), every
consumer takes one at a time (prefetch 1) and acks it. Reported per count:
throughput (messages acked per second), p50/p99 latency from publish to ack
(ms), and how often a consumer met the busy timeout ("database is locked"
errors, raised or logged by poll), which must be 0.

Not a test: targets are judged by reading the line. ``-n`` messages per count.

Usage: ``python bench/embedded_consumers.py [-n 2000] [--counts 1,8,32] [--dir DIR]``
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

QUEUE = "bench.consumers"


class _LockedCounter(logging.Handler):
    """Counts the embedded broker's 'database is locked' warnings in a consumer."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "locked" in record.getMessage():
            self.count += 1


def _consume(path: str, acked: Any, stop: Any, results: Any) -> None:
    from zhpc.errors import TransportError
    from zhpc.message import Message
    from zhpc.transport.embedded import EmbeddedTransport

    counter = _LockedCounter()
    logging.getLogger("zhpc.transport.embedded").addHandler(counter)
    latencies: list[float] = []
    errors = 0
    with EmbeddedTransport(path) as transport:

        def on_message(message: Message) -> None:
            sent = json.loads(message.body)["t"]
            transport.ack(message)
            latencies.append(time.time() - sent)
            with acked.get_lock():
                acked.value += 1

        transport.subscribe(QUEUE, on_message, prefetch=1)
        while not stop.is_set():
            try:
                transport.poll(0.05)
            except TransportError as exc:
                errors += "locked" in str(exc)
    results.put((latencies, errors + counter.count))


def run(count: int, messages: int, directory: Path) -> dict[str, Any]:
    from zhpc.message import Outgoing
    from zhpc.transport.embedded import EmbeddedTransport

    path = directory / f"consumers-{count}.sqlite"
    with EmbeddedTransport(path) as transport:
        transport.declare_queue(QUEUE)
    context = mp.get_context("fork")
    acked, stop, results = context.Value("i", 0), context.Event(), context.Queue()
    workers = [
        context.Process(target=_consume, args=(str(path), acked, stop, results))
        for _ in range(count)
    ]
    for worker in workers:
        worker.start()
    window = 4 * count
    with EmbeddedTransport(path) as transport:
        started = time.monotonic()
        sent = 0
        while acked.value < messages:
            room = min(window - (sent - acked.value), messages - sent)
            if room > 0:
                transport.publish_many(
                    [Outgoing.json(QUEUE, {"t": time.time(), "i": sent + i}) for i in range(room)]
                )
                sent += room
            else:
                time.sleep(0.001)
        took = time.monotonic() - started
    stop.set()
    latencies: list[float] = []
    locked = 0
    for _worker in workers:
        got, errors = results.get(timeout=120)
        latencies += got
        locked += errors
    for worker in workers:
        worker.join(30)
    latencies.sort()
    return {
        "processes": count,
        "messages": len(latencies),
        "msg_per_s": round(messages / took, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 2),
        "busy_timeout_errors": locked,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="messages per process count")
    parser.add_argument("--counts", default="1,8,32")
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows = [run(count, args.n, Path(tmp)) for count in counts]
    print(json.dumps({"bench": "embedded_consumers", "results": rows}))


if __name__ == "__main__":
    main()

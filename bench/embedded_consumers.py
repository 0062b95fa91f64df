"""Many consumer processes on one embedded-broker file: prints ONE JSON line.

For 1, 8 and 32 consumer processes sharing one SQLite file (issue 12, item 4;
issue 18): every consumer takes one message at a time (prefetch 1) and commits
it as a service does (one output published and the input acked in one
``Transport.commit``). Two loads, one after the other, per process count:

* ``closed_loop``: a producer keeps ``4 x processes`` messages in flight;
  throughput, and p50/p99 latency from publish to committed (ms).
* ``backlog`` (``--backlog N``, 0 to skip): N messages are queued first, then the
  consumers start; throughput from the first commit to the last, and p50/p99 of
  one step per consumer (take the next message and commit it: from one commit
  returning to the next, ms), as the backlog drains.

Both count how often a consumer met the busy timeout ("database is locked"
errors, raised or logged by poll), which must be 0.

Not a test: targets are judged by reading the line. ``-n`` messages per count
in the closed loop.

Usage: ``python bench/embedded_consumers.py [-n 2000] [--backlog 100000] [--counts 1,8,32]
[--dir DIR]``
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import tempfile
import time
from pathlib import Path
from typing import Any

QUEUE = "bench.consumers"
OUTPUT = "bench.consumers.out"


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
    from zhpc.message import Message, Outgoing
    from zhpc.transport.embedded import EmbeddedTransport

    counter = _LockedCounter()
    logging.getLogger("zhpc.transport.embedded").addHandler(counter)
    latencies: list[float] = []  # publish to committed
    steps: list[float] = []  # one take and commit: from the last commit to this one
    errors = 0
    with EmbeddedTransport(path) as transport:
        previous: list[float] = []  # when this consumer's last commit returned

        def on_message(message: Message) -> None:
            sent = json.loads(message.body)["t"]
            transport.commit([Outgoing(OUTPUT, message.body)], ack=message).result()
            done = time.monotonic()
            if previous:  # take + commit, back to back while a backlog lasts
                steps.append(done - previous[0])
            previous[:] = [done]
            latencies.append(time.time() - sent)
            with acked.get_lock():
                acked.value += 1

        transport.subscribe(QUEUE, on_message, prefetch=1)
        while not stop.is_set():
            try:
                transport.poll(0.05)
            except TransportError as exc:
                errors += "locked" in str(exc)
    results.put((latencies, steps, errors + counter.count))


def _percentile_ms(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return round(ordered[int(fraction * (len(ordered) - 1))] * 1000, 2)


def run(count: int, messages: int, directory: Path, *, backlog: bool) -> dict[str, Any]:
    """One load (``backlog``: all queued first) with ``count`` consumer processes."""
    from zhpc.message import Outgoing
    from zhpc.transport.embedded import EmbeddedTransport

    path = directory / f"consumers-{count}-{'backlog' if backlog else 'loop'}.sqlite"
    with EmbeddedTransport(path) as transport:
        transport.declare_queue(QUEUE)
        transport.declare_queue(OUTPUT)
        if backlog:
            for start in range(0, messages, 5000):
                transport.publish_many(
                    [
                        Outgoing.json(QUEUE, {"t": time.time(), "i": i})
                        for i in range(start, min(start + 5000, messages))
                    ]
                )
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
        sent = messages if backlog else 0
        while backlog and acked.value == 0:
            time.sleep(0.001)
        started, first = time.monotonic(), acked.value
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
    steps: list[float] = []
    locked = 0
    for _worker in workers:
        got, took_steps, errors = results.get(timeout=120)
        latencies += got
        steps += took_steps
        locked += errors
    for worker in workers:
        worker.join(30)
    row: dict[str, Any] = {
        "processes": count,
        "messages": messages,
        "msg_per_s": round((messages - first) / took, 1),
    }
    if backlog:
        row |= {
            "step_p50_ms": _percentile_ms(steps, 0.5),
            "step_p99_ms": _percentile_ms(steps, 0.99),
        }
    else:
        row |= {"p50_ms": _percentile_ms(latencies, 0.5), "p99_ms": _percentile_ms(latencies, 0.99)}
    row["busy_timeout_errors"] = locked
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="messages per process count")
    parser.add_argument("--backlog", type=int, default=100_000, help="0: no backlog load")
    parser.add_argument("--counts", default="1,8,32")
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    line: dict[str, Any] = {"bench": "embedded_consumers"}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        line["closed_loop"] = [run(count, args.n, Path(tmp), backlog=False) for count in counts]
        if args.backlog:
            line["backlog"] = [
                run(count, args.backlog, Path(tmp), backlog=True) for count in counts
            ]
    print(json.dumps(line))


if __name__ == "__main__":
    main()

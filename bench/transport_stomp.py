"""Benchmark: the zhpc STOMP transport on ActiveMQ against raw stomp.py doing the same work.

Both sides publish N persistent ~200-byte messages (confirmed: a receipt per SEND,
or one STOMP transaction whose COMMIT is receipted), consume them with
client-individual acks at prefetch 100, and run one service step per message
(consume, send one output, ack once the output is receipted). The step is timed
with both commit modes of zhpc, which is how the default (receipts) was chosen.
Prints one JSON line; ``run(n)`` returns the same dict so that ``bench/transport.py``
can merge it.

Usage: python bench/transport_stomp.py [N] [--url stomp://127.0.0.1:61613]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any

import stomp

from zhpc.message import Message, Outgoing
from zhpc.transport.stomp import StompTransport

DEFAULT_URL = os.environ.get("ZHPC_BENCH_STOMP_URL", "stomp://127.0.0.1:61613")
PREFETCH = 100
BODY = json.dumps({"payload": "x" * (200 - len('{"payload":""}'))}, separators=(",", ":")).encode()


class _Raw(stomp.ConnectionListener):
    """A raw stomp.py connection with receipts as events and deliveries counted."""

    def __init__(self, host: str, port: int) -> None:
        self.conn = stomp.Connection12([(host, port)], auto_decode=False)
        self.conn.set_listener("bench", self)
        self.conn.connect(wait=True)
        # As zhpc does (stomp.py does not): otherwise Nagle's algorithm and delayed ACKs
        # cost the raw side up to 40 ms per round trip, and the ratio would flatter zhpc.
        self.conn.transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.receipts: set[str] = set()
        self.cond = threading.Condition()
        self.handler: Any = None

    def on_receipt(self, frame: Any) -> None:
        with self.cond:
            self.receipts.add(frame.headers["receipt-id"])
            self.cond.notify_all()

    def on_message(self, frame: Any) -> None:
        self.handler(frame)

    def wait(self, receipt: str) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: receipt in self.receipts, 60):
                raise RuntimeError(f"no receipt {receipt}")

    def send(self, queue: str, **headers: str) -> None:
        self.conn.send("/queue/" + queue, BODY, headers={"persistent": "true", **headers})


def raw_publish(raw: _Raw, queue: str, n: int, *, transaction: bool) -> float:
    start = time.perf_counter()
    if transaction:
        tx = raw.conn.begin()
        for _ in range(n):
            raw.send(queue, transaction=tx)
        raw.conn.commit(tx, headers={"receipt": f"c-{queue}"})
        raw.wait(f"c-{queue}")
    else:  # pipelined: every SEND receipted, wait for the last ones
        for i in range(n):
            raw.send(queue, receipt=f"{queue}-{i}")
        for i in range(n):
            raw.wait(f"{queue}-{i}")
    return n / (time.perf_counter() - start)


def raw_consume(raw: _Raw, queue: str, n: int, *, out: str | None) -> float:
    """Ack each (or, with ``out``, send an output and ack in a receipted transaction)."""
    done = threading.Event()
    count = [0]

    def handle(frame: Any) -> None:
        if out is None:
            raw.conn.ack(frame.headers["ack"])
        else:
            tx = raw.conn.begin()
            raw.send(out, transaction=tx)
            raw.conn.ack(frame.headers["ack"], transaction=tx)
            raw.conn.commit(tx, headers={"receipt": f"s-{count[0]}"})
        count[0] += 1
        if count[0] >= n:
            done.set()

    raw.handler = handle
    start = time.perf_counter()
    raw.conn.subscribe(
        "/queue/" + queue,
        "bench",
        ack="client-individual",
        headers={"activemq.prefetchSize": str(PREFETCH)},
    )
    if not done.wait(300):
        raise RuntimeError(f"raw consume stalled at {count[0]} of {n}")
    if out is not None:
        raw.wait(f"s-{n - 1}")
    elapsed = time.perf_counter() - start
    raw.conn.unsubscribe("bench")
    return n / elapsed


def zhpc_consume(transport: StompTransport, queue: str, n: int, *, out: str | None) -> float:
    done = 0

    def on_message(message: Message) -> None:
        nonlocal done
        if out is None:
            transport.ack(message)
        else:
            transport.commit([Outgoing(destination=out, body=message.body)], ack=message)
        done += 1

    start = time.perf_counter()
    sub = transport.subscribe(queue, on_message, prefetch=PREFETCH)
    while done < n:
        if transport.poll(5.0) == 0:
            raise RuntimeError(f"zhpc consume stalled at {done} of {n}")
    transport.flush(60)
    elapsed = time.perf_counter() - start
    transport.unsubscribe(sub)
    return n / elapsed


def run(n: int, url: str = DEFAULT_URL) -> dict[str, Any]:
    host_port = url.split("://", 1)[1].split("/")[0]
    host, _, port = host_port.rpartition(":")
    tag = f"zbench.stomp.{uuid.uuid4().hex[:8]}"
    raw = _Raw(host or "127.0.0.1", int(port or 61613))
    result: dict[str, Any] = {"stomp_n": n}
    queues: list[str] = []

    def q(name: str) -> str:
        queues.append(f"{tag}.{name}")
        return queues[-1]

    warm = q("warm")  # the broker's JIT: whichever side runs first must not pay for it
    raw_publish(raw, warm, min(n, 2000), transaction=True)
    raw_consume(raw, warm, min(n, 2000), out=None)
    result["stomp_raw_publish_receipts_per_s"] = round(
        raw_publish(raw, q("raw-r"), n, transaction=False), 1
    )
    result["stomp_raw_publish_tx_per_s"] = round(
        raw_publish(raw, q("raw-t"), n, transaction=True), 1
    )
    result["stomp_raw_consume_ack_per_s"] = round(raw_consume(raw, queues[1], n, out=None), 1)
    result["stomp_raw_step_per_s"] = round(raw_consume(raw, queues[2], n, out=q("raw-o")), 1)

    transports = {
        mode: StompTransport(url, commit_mode=mode) for mode in ("transaction", "receipts")
    }
    for transport in transports.values():
        transport.connect()
    zhpc = transports["transaction"]
    acked, stepped_tx, stepped_r = q("z-ack"), q("z-tx"), q("z-r")
    start = time.perf_counter()
    zhpc.publish_many([Outgoing(destination=acked, body=BODY) for _ in range(n)])
    result["stomp_zhpc_publish_many_per_s"] = round(n / (time.perf_counter() - start), 1)
    start = time.perf_counter()
    for _ in range(min(n, 1000)):
        zhpc.publish(Outgoing(destination=stepped_tx, body=BODY))
    result["stomp_zhpc_publish_one_per_s"] = round(min(n, 1000) / (time.perf_counter() - start), 1)
    zhpc.publish_many(
        [Outgoing(destination=stepped_tx, body=BODY) for _ in range(n - min(n, 1000))]
    )
    zhpc.publish_many([Outgoing(destination=stepped_r, body=BODY) for _ in range(n)])
    result["stomp_zhpc_consume_ack_per_s"] = round(zhpc_consume(zhpc, acked, n, out=None), 1)
    result["stomp_zhpc_step_tx_per_s"] = round(
        zhpc_consume(zhpc, stepped_tx, n, out=q("z-out-t")), 1
    )
    result["stomp_zhpc_step_receipts_per_s"] = round(
        zhpc_consume(transports["receipts"], stepped_r, n, out=q("z-out-r")), 1
    )
    result["stomp_publish_ratio"] = round(
        result["stomp_zhpc_publish_many_per_s"] / result["stomp_raw_publish_tx_per_s"], 2
    )
    result["stomp_consume_ratio"] = round(
        result["stomp_zhpc_consume_ack_per_s"] / result["stomp_raw_consume_ack_per_s"], 2
    )
    result["stomp_step_ratio"] = round(
        result["stomp_zhpc_step_tx_per_s"] / result["stomp_raw_step_per_s"], 2
    )
    result["stomp_target_met"] = (
        min(
            result["stomp_publish_ratio"], result["stomp_consume_ratio"], result["stomp_step_ratio"]
        )
        >= 0.7
    )
    for name in queues:  # leave nothing behind on the shared broker
        zhpc.delete_queue(name)
    for transport in transports.values():
        transport.close()
    raw.conn.disconnect()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=5000)
    parser.add_argument("--url", default=DEFAULT_URL)
    args = parser.parse_args()
    print(json.dumps({"benchmark": "transport_stomp", **run(args.n, args.url)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

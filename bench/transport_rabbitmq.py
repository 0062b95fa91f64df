"""Benchmark: the zhpc RabbitMQ transport against raw pika doing the same work.

Both sides publish N persistent ~200-byte messages to a fresh quorum queue with
publisher confirms (waiting for every confirm), then consume them with manual
acks at prefetch 100. It also times one zhpc service step alone (consume,
commit one confirmed output, ack). Prints one JSON line; ``run(n)`` returns the
same dict so that ``bench/transport.py`` can merge it with the embedded broker's.

Usage: python bench/transport_rabbitmq.py [N] [--url amqp://guest:guest@127.0.0.1:5672/%2F]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from typing import Any

import pika

from zhpc.message import Message, Outgoing
from zhpc.transport.rabbitmq import RabbitMQTransport

DEFAULT_URL = os.environ.get("ZHPC_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
PREFETCH = 100
#: A valid JSON body of exactly 200 bytes.
BODY = json.dumps({"payload": "x" * (200 - len('{"payload":""}'))}, separators=(",", ":")).encode()


def _queue_arguments() -> dict[str, Any]:
    return {"x-queue-type": "quorum"}


def raw_publish(url: str, queue: str, n: int) -> float:
    """Raw pika, asynchronous confirms: publish everything, wait for the last confirm."""
    state = {"acked": 0, "nacked": 0, "t0": 0.0, "t1": 0.0}
    props = pika.BasicProperties(delivery_mode=2)

    def on_open(conn: pika.SelectConnection) -> None:
        conn.channel(on_open_callback=on_channel)

    def on_channel(ch: Any) -> None:
        ch.queue_declare(
            queue, durable=True, arguments=_queue_arguments(), callback=lambda _f: start(ch)
        )

    def start(ch: Any) -> None:
        ch.confirm_delivery(on_confirm, callback=lambda _f: publish_all(ch))

    def publish_all(ch: Any) -> None:
        state["t0"] = time.perf_counter()
        for _ in range(n):
            ch.basic_publish("", queue, BODY, props, mandatory=True)

    def on_confirm(frame: Any) -> None:
        method = frame.method
        done = method.delivery_tag if method.multiple else state["acked"] + state["nacked"] + 1
        key = "acked" if isinstance(method, pika.spec.Basic.Ack) else "nacked"
        state[key] += done - (state["acked"] + state["nacked"])
        if state["acked"] + state["nacked"] >= n:
            state["t1"] = time.perf_counter()
            conn.close()

    conn = pika.SelectConnection(
        pika.URLParameters(url),
        on_open_callback=on_open,
        on_close_callback=lambda _c, _r: conn.ioloop.stop(),
    )
    conn.ioloop.start()
    if state["nacked"] or state["acked"] < n:
        raise RuntimeError(f"raw pika publish: {state['acked']} acked, {state['nacked']} nacked")
    return n / (state["t1"] - state["t0"])


def raw_consume(url: str, queue: str, n: int) -> float:
    """Raw pika, manual acks one by one at prefetch 100."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=PREFETCH)
    count = 0

    def on_message(ch: Any, method: Any, _props: Any, _body: bytes) -> None:
        nonlocal count
        ch.basic_ack(method.delivery_tag)
        count += 1
        if count >= n:
            ch.stop_consuming()

    ch.basic_consume(queue, on_message)
    t0 = time.perf_counter()
    ch.start_consuming()
    elapsed = time.perf_counter() - t0
    ch.queue_delete(queue)
    conn.close()
    return n / elapsed


def zhpc_publish(transport: RabbitMQTransport, queue: str, n: int) -> float:
    transport.declare_queue(queue)
    messages = [Outgoing(destination=queue, body=BODY) for _ in range(n)]
    t0 = time.perf_counter()
    transport.publish_many(messages)
    return n / (time.perf_counter() - t0)


def zhpc_consume(transport: RabbitMQTransport, queue: str, n: int) -> float:
    count = 0

    def on_message(message: Message) -> None:
        nonlocal count
        transport.ack(message)
        count += 1

    t0 = time.perf_counter()
    sub_id = transport.subscribe(queue, on_message, prefetch=PREFETCH)
    deadline = time.monotonic() + 300
    while count < n and time.monotonic() < deadline:
        transport.poll(1.0)
    elapsed = time.perf_counter() - t0
    transport.unsubscribe(sub_id)
    if count < n:
        raise RuntimeError(f"zhpc consume: only {count} of {n} messages arrived")
    return n / elapsed


def zhpc_commit(transport: RabbitMQTransport, inq: str, outq: str, n: int) -> float:
    """A service step: consume, commit one confirmed output, ack; many commits in flight."""
    transport.declare_queue(outq)
    transport.publish_many([Outgoing(destination=inq, body=BODY) for _ in range(n)])
    count = 0

    def on_message(message: Message) -> None:
        nonlocal count
        transport.commit([Outgoing(destination=outq, body=message.body)], message)
        count += 1

    t0 = time.perf_counter()
    sub_id = transport.subscribe(inq, on_message, prefetch=PREFETCH)
    deadline = time.monotonic() + 300
    while count < n and time.monotonic() < deadline:
        transport.poll(1.0)
    transport.flush(60)
    elapsed = time.perf_counter() - t0
    transport.unsubscribe(sub_id)
    return n / elapsed


def run(n: int = 20_000, url: str = DEFAULT_URL, rounds: int = 3) -> dict[str, Any]:
    """Measure both in one run, alternating, ``rounds`` times; medians in messages per second.

    Alternating rounds and medians keep one noisy moment on a shared machine
    from deciding the ratio.
    """
    samples: dict[str, list[float]] = {
        k: [] for k in ("raw_pub", "raw_con", "zhpc_pub", "zhpc_con", "zhpc_step")
    }
    transport = RabbitMQTransport(url)
    transport.connect()
    try:
        for _ in range(rounds):
            tag = uuid.uuid4().hex[:8]
            raw_queue, zhpc_queue = f"bench.raw.{tag}", f"bench.zhpc.{tag}"
            samples["raw_pub"].append(raw_publish(url, raw_queue, n))
            samples["zhpc_pub"].append(zhpc_publish(transport, zhpc_queue, n))
            samples["raw_con"].append(raw_consume(url, raw_queue, n))
            samples["zhpc_con"].append(zhpc_consume(transport, zhpc_queue, n))
            step_in, step_out = f"{zhpc_queue}.step", f"{zhpc_queue}.out"
            samples["zhpc_step"].append(zhpc_commit(transport, step_in, step_out, n))
            for queue in (zhpc_queue, step_in, step_out):
                for name in (queue, f"dlq.{queue}"):
                    transport.delete_queue(name)
    finally:
        transport.close()
    med = {k: statistics.median(v) for k, v in samples.items()}
    return {
        "benchmark": "transport_rabbitmq",
        "n": n,
        "rounds": rounds,
        "body_bytes": len(BODY),
        "prefetch": PREFETCH,
        "raw_pika_publish_per_s": round(med["raw_pub"]),
        "raw_pika_consume_ack_per_s": round(med["raw_con"]),
        "zhpc_publish_per_s": round(med["zhpc_pub"]),
        "zhpc_consume_ack_per_s": round(med["zhpc_con"]),
        "publish_ratio": round(med["zhpc_pub"] / med["raw_pub"], 3),
        "consume_ack_ratio": round(med["zhpc_con"] / med["raw_con"], 3),
        "zhpc_consume_commit_per_s": round(med["zhpc_step"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=20_000)
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.n, args.url, args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Service hop benchmark: prints ONE JSON line (not a test; targets are judged by reading it).

One service on a 2-node recipe (step 1: the service doubles ``payload.value``;
step 2: a plain queue) over real RabbitMQ (or, with ``--broker stomp``, ActiveMQ
over STOMP with workflows' StompTransport), in the same run for:

* ``zhpc``: a zhpc ``ServiceRunner`` (its only mode: outputs confirmed, then the ack);
* ``workflows_plain``: a python-workflows ``CommonService`` that acks, then sends
  (a crash between the two loses the message);
* ``workflows_tx``: the same service with one transaction per message (ack + send
  committed together; workflows' safe mode, as its Dispatcher does);
* ``raw_pika_safe_hop``: the broker's limit for a safe hop, raw pika in one process
  (``SelectConnection``): consume, publish the input's body to step 2 with
  publisher confirms, ack the input once its output's confirm arrived (a confirm
  for many outputs acks their inputs with one ``multiple=True`` ack). No JSON, no
  recipe: what any safe service costs at least.
* ``zhpc_events`` (with ``--only``): ``zhpc`` with step events on (``zhpc.events``,
  a listening queue bound to it, as when a recorder runs); ``events_cost`` is
  its throughput loss against ``zhpc`` (the target: below 0.10), ``events_cpu_cost``
  the extra CPU per message (``cpu_us_per_msg``: steadier on a shared machine).

The workflows service runs under workflows' ``Frontend`` in its own process,
which is what ``zocalo.service`` does after reading the site configuration
(``zocalo.service`` itself can only start services registered as
``workflows.services`` entry points; this benchmark's is not).

Per implementation:
* ``msgs_per_s``: a backlog of ``-n`` messages is queued first, then the service
  started; rate between the first and the last output arriving on step 2.
* ``p50_ms``/``p99_ms``: one message in flight, publish to step 1 until it is
  consumed from step 2 (raw pika client, same for all), ``--samples`` times.
* ``cpu_us_per_msg``: the service's CPU time per message while draining: on a
  loaded machine a steadier comparison than the rate; ``main_thread_cpu_us_per_msg``
  and ``other_threads_cpu_us_per_msg`` split it (zhpc: the service's thread, and its
  transport's I/O thread, which does the pika work raw pika does on its one thread).
* ``idle_rss_mb``: all processes of the service (workflows: frontend + service)
  once it consumes, before any message; ``peak_rss_mb``: their VmHWM after the backlog.

On STOMP the latency client is zhpc's own transport (a raw pika client on RabbitMQ),
and workflows' StompTransport has no prefetch option (ActiveMQ's default, 1000).

Usage: ``python bench/service_hop.py [-n 5000] [--samples 300] [--only zhpc,...]
[--broker rabbitmq|stomp]``
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

AMQP_URL = os.environ.get("ZHPC_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
STOMP_URL = os.environ.get("ZHPC_BENCH_STOMP_URL", "stomp://127.0.0.1:61613")
#: Which broker this run (and its children, through the environment) uses.
BROKER = os.environ.get("ZHPC_BENCH_BROKER", "rabbitmq")


def broker_url() -> str:
    return STOMP_URL if BROKER == "stomp" else AMQP_URL


IMPLEMENTATIONS = ("raw_pika_safe_hop", "zhpc", "workflows_plain", "workflows_tx")
PREFETCH = 100


# == the services (run as children of this script) ==========================
def child_zhpc(queue: str, events: bool = False) -> int:
    from typing import Any as _Any

    from zhpc.config import BrokerConfig, Config, ServiceConfig
    from zhpc.recipe import RecipeWrapper
    from zhpc.service import Service, ServiceRunner
    from zhpc.transport import get_transport

    class Double(Service):
        def process(self, rw: RecipeWrapper, payload: _Any) -> None:
            rw.send({"value": payload["value"] * 2})

    config = Config(broker=BrokerConfig(url=broker_url()))
    settings = ServiceConfig(queue=queue, prefetch=PREFETCH)
    with get_transport(config.broker) as transport:
        emitter = None
        if events:
            from zhpc.events import emitter_for

            emitter = emitter_for(config, "double")
        return ServiceRunner(Double("double", settings, config), transport, events=emitter).run()


def child_raw_pika(queue: str) -> int:
    """The safe hop in raw pika: ack an input only when its output is confirmed."""
    import collections

    import pika

    outq = queue.removesuffix(".in") + ".out"
    properties = pika.BasicProperties(headers={"workflows-recipe": True}, delivery_mode=2)
    # publish sequence number -> input delivery tag, in publish order
    waiting: collections.OrderedDict[int, int] = collections.OrderedDict()
    state = {"seq": 0}

    def on_message(channel: Any, method: Any, _props: Any, body: bytes) -> None:
        channel.basic_publish("", outq, body, properties, mandatory=True)
        state["seq"] += 1
        waiting[state["seq"]] = method.delivery_tag

    def on_confirm(frame: Any) -> None:
        confirm = frame.method
        if confirm.multiple:
            inputs = []
            while waiting and next(iter(waiting)) <= confirm.delivery_tag:
                inputs.append(waiting.popitem(last=False)[1])
        else:
            one = waiting.pop(confirm.delivery_tag, None)
            inputs = [] if one is None else [one]
        if not inputs:
            return
        if not isinstance(confirm, pika.spec.Basic.Ack):
            for tag in inputs:
                channel.basic_reject(tag, requeue=True)
            return
        top = max(inputs)
        if not waiting or waiting[next(iter(waiting))] > top:
            channel.basic_ack(top, multiple=True)  # nothing older is still unconfirmed
        else:
            for tag in inputs:
                channel.basic_ack(tag)

    def on_channel(ch: Any) -> None:
        nonlocal channel
        channel = ch
        ch.confirm_delivery(on_confirm, callback=lambda _f: start(ch))

    def start(ch: Any) -> None:
        ch.basic_qos(prefetch_count=PREFETCH)
        ch.basic_consume(queue, on_message)

    channel: Any = None
    conn = pika.SelectConnection(
        pika.URLParameters(AMQP_URL),
        on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
    )
    signal.signal(signal.SIGTERM, lambda *_: conn.ioloop.stop())
    conn.ioloop.start()
    return 0


def child_workflows(queue: str, transactional: bool) -> int:
    import workflows.recipe
    from workflows.frontend import Frontend
    from workflows.services.common_service import CommonService
    from workflows.transport.pika_transport import PikaTransport
    from workflows.transport.stomp_transport import StompTransport

    class Double(CommonService):
        _service_name = "bench double"
        _logger_name = "bench.double"

        def initializing(self) -> None:
            workflows.recipe.wrap_subscribe(
                self._transport,
                queue,
                self.receive,
                acknowledgement=True,
                prefetch_count=PREFETCH,
            )

        def receive(self, rw: Any, header: dict, message: Any) -> None:
            result = {"value": message["value"] * 2}
            if transactional:
                txn = rw.transport.transaction_begin(subscription_id=header["subscription"])
                rw.transport.ack(header, transaction=txn)
                rw.send(result, transaction=txn)
                rw.transport.transaction_commit(txn)
            else:
                rw.transport.ack(header)
                rw.send(result)

    transport: type = PikaTransport
    if BROKER == "stomp":
        StompTransport.defaults["--stomp-host"] = "127.0.0.1"
        transport = StompTransport
    Frontend(transport=transport, service=Double, environment={"live": False}).run()
    return 0


# == measuring ===============================================================
def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def _rss_mb(pid: int, field: str) -> float:
    total = 0
    for proc in _descendants(pid):
        try:
            for line in Path(f"/proc/{proc}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return round(total / 1024, 1)


def _stat_ticks(stat: Path) -> int:
    """User + system clock ticks in a /proc ``stat`` file (0 if it is gone)."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants so far."""
    ticks = sum(_stat_ticks(Path(f"/proc/{proc}/stat")) for proc in _descendants(pid))
    return ticks / os.sysconf("SC_CLK_TCK")


def _main_thread_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid``'s main thread alone (where zhpc's service runs;
    the rest of a zhpc service's CPU is its transport's I/O thread)."""
    return _stat_ticks(Path(f"/proc/{pid}/task/{pid}/stat")) / os.sysconf("SC_CLK_TCK")


class Client:
    """Raw pika publisher/consumer of the benchmark itself (the same for every service)."""

    def __init__(self) -> None:
        import pika

        from zhpc.config import BrokerConfig
        from zhpc.transport import get_transport

        self.transport = get_transport(BrokerConfig(url=broker_url()))
        self.transport.connect()
        if BROKER == "stomp":
            return
        self.conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        self.channel = self.conn.channel()
        self.properties = pika.BasicProperties(headers={"workflows-recipe": True}, delivery_mode=2)

    def recipe_body(self, inq: str, outq: str) -> bytes:
        from zhpc.recipe import RecipeWrapper

        recipe = {
            "1": {"service": "double", "queue": inq, "output": 2},
            "2": {"service": "sink", "queue": outq},
            "start": [[1, {"value": 21}]],
        }
        return RecipeWrapper.from_recipe(recipe).start()[0].body

    def backlog(self, inq: str, outq: str, count: int) -> None:
        from zhpc.message import Outgoing

        body = self.recipe_body(inq, outq)
        self.transport.publish_many(
            [Outgoing(inq, body, headers={"workflows-recipe": True}) for _ in range(count)]
        )

    def wait_consuming(self, inq: str, proc: subprocess.Popen, timeout: float = 60) -> float:
        began = time.monotonic()
        while self.transport.queue_depth(inq).consumers < 1:
            if proc.poll() is not None or time.monotonic() - began > timeout:
                raise RuntimeError(f"the service did not start consuming {inq}")
            time.sleep(0.01)
        return time.monotonic() - began

    def drain_rate(
        self, outq: str, count: int, pid: int, timeout: float = 300
    ) -> tuple[float, float, float]:
        """Outputs per second between the first and the count-th arriving on ``outq``, and
        the service's CPU time per message over the same span (what load does not skew),
        all of it and its main thread's alone."""
        deadline = time.monotonic() + timeout
        first: tuple[float, int, float, float] | None = None
        while True:
            depth = self.transport.queue_depth(outq).ready
            now = time.monotonic()
            if first is None and depth > 0:
                first = (now, depth, _cpu_s(pid), _main_thread_cpu_s(pid))
            if depth >= count and first is not None:
                done = count - first[1]
                rate = done / (now - first[0]) if now > first[0] else 0.0
                cpu_us = (_cpu_s(pid) - first[2]) / done * 1e6 if done else 0.0
                main_us = (_main_thread_cpu_s(pid) - first[3]) / done * 1e6 if done else 0.0
                return rate, cpu_us, main_us
            if now > deadline:
                raise RuntimeError(f"only {depth} of {count} outputs after {timeout} s")
            time.sleep(0.005)

    def latencies(self, inq: str, outq: str, samples: int, warmup: int = 20) -> list[float]:
        if BROKER == "stomp":
            return self.stomp_latencies(inq, outq, samples, warmup)
        body = self.recipe_body(inq, outq)
        results = []
        consumer = self.channel.consume(outq, auto_ack=True, inactivity_timeout=30)
        for i in range(samples + warmup):
            began = time.perf_counter()
            self.channel.basic_publish("", inq, body, self.properties)
            method, _props, _body = next(consumer)
            if method is None:
                raise RuntimeError("no output within 30 s")
            if i >= warmup:
                results.append((time.perf_counter() - began) * 1000)
        self.channel.cancel()
        return results

    def listen_to_events(self) -> str:
        """A queue bound to ``zhpc.events`` (as a recorder's), so events are really routed."""
        from zhpc.events import EVENTS_TOPIC

        self.channel.exchange_declare(EVENTS_TOPIC, exchange_type="fanout", durable=True)
        name = f"bench.hop.events.{uuid.uuid4().hex[:8]}"
        self.channel.queue_declare(name, auto_delete=True, arguments={"x-max-length": 100000})
        self.channel.queue_bind(name, EVENTS_TOPIC)
        return name

    def stomp_latencies(self, inq: str, outq: str, samples: int, warmup: int) -> list[float]:
        from zhpc.message import Outgoing

        body = self.recipe_body(inq, outq)
        got: list[object] = []

        def arrived(message: Any) -> None:
            got.append(message)
            self.transport.ack(message)

        sub = self.transport.subscribe(outq, arrived, prefetch=1)
        results = []
        for i in range(samples + warmup):
            began = time.perf_counter()
            self.transport.publish(Outgoing(inq, body, headers={"workflows-recipe": True}))
            deadline = time.monotonic() + 30
            while not got:
                if time.monotonic() > deadline:
                    raise RuntimeError("no output within 30 s")
                self.transport.poll(0.001)
            got.clear()
            if i >= warmup:
                results.append((time.perf_counter() - began) * 1000)
        self.transport.unsubscribe(sub)
        return results

    def queues(self) -> tuple[str, str]:
        tag = uuid.uuid4().hex[:8]
        inq, outq = f"bench.hop.{tag}.in", f"bench.hop.{tag}.out"
        for queue in (inq, outq):
            self.transport.declare_queue(queue)
        return inq, outq

    def delete(self, *queues: str) -> None:
        for queue in queues:
            for name in (queue, f"retry.{queue}", f"dlq.{queue}"):
                self.transport.delete_queue(name)

    def close(self) -> None:
        if BROKER != "stomp":
            self.conn.close()
        self.transport.close()


def start(kind: str, queue: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, "--child", kind, queue],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def measure(client: Client, kind: str, messages: int, samples: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    # 1. idle RSS and one-in-flight latency on an empty queue
    inq, outq = client.queues()
    proc = start(kind, inq)
    try:
        result["startup_s"] = round(client.wait_consuming(inq, proc), 3)
        time.sleep(1.0)  # let start-up allocations settle before reading RSS
        result["idle_rss_mb"] = _rss_mb(proc.pid, "VmRSS")
        result["processes"] = len(_descendants(proc.pid))
        lat = sorted(client.latencies(inq, outq, samples))
        result["p50_ms"] = round(statistics.median(lat), 3)
        result["p99_ms"] = round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 3)
    finally:
        stop(proc)
        client.delete(inq, outq)
    # 2. draining a backlog queued before the service starts
    inq, outq = client.queues()
    client.backlog(inq, outq, messages)
    proc = start(kind, inq)
    try:
        rate, cpu_us, main_us = client.drain_rate(outq, messages, proc.pid)
        result["msgs_per_s"] = round(rate, 1)
        result["cpu_us_per_msg"] = round(cpu_us, 1)
        # zhpc: the service's thread, and (the rest) its transport's I/O thread
        result["main_thread_cpu_us_per_msg"] = round(main_us, 1)
        result["other_threads_cpu_us_per_msg"] = max(0.0, round(cpu_us - main_us, 1))
        result["peak_rss_mb"] = _rss_mb(proc.pid, "VmHWM")
    finally:
        stop(proc)
        client.delete(inq, outq)
    return result


def _workflows_version() -> str | None:
    try:
        import workflows
    except ImportError:
        return None
    return str(workflows.__version__)


def main() -> int:
    global BROKER
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--messages", type=int, default=5000)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--only", default=",".join(IMPLEMENTATIONS))
    parser.add_argument("--broker", choices=("rabbitmq", "stomp"), default=BROKER)
    parser.add_argument("--child", nargs=2, metavar=("KIND", "QUEUE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, queue = args.child
        if kind in ("zhpc", "zhpc_events"):
            return child_zhpc(queue, events=kind == "zhpc_events")
        if kind == "raw_pika_safe_hop":
            return child_raw_pika(queue)
        return child_workflows(queue, transactional=kind == "workflows_tx")

    BROKER = os.environ["ZHPC_BENCH_BROKER"] = args.broker  # the children inherit it
    client = Client()
    results: dict[str, Any] = {}
    listener = client.listen_to_events() if "zhpc_events" in args.only else None
    try:
        for kind in args.only.split(","):
            results[kind] = measure(client, kind, args.messages, args.samples)
    finally:
        if listener:
            client.channel.queue_delete(listener)
        client.close()
    line: dict[str, Any] = {
        "benchmark": "service_hop",
        "broker": BROKER,
        "messages": args.messages,
        "samples": args.samples,
        "prefetch": PREFETCH,
        "workflows": _workflows_version(),
        **results,
    }
    raw = results.get("raw_pika_safe_hop")
    if "zhpc" in results and raw:
        line["zhpc_vs_raw_pika_safe_hop"] = round(
            results["zhpc"]["msgs_per_s"] / raw["msgs_per_s"], 2
        )
        line["cpu_raw_over_zhpc"] = round(
            raw["cpu_us_per_msg"] / results["zhpc"]["cpu_us_per_msg"], 2
        )
    if "zhpc" in results and "zhpc_events" in results:
        line["events_cost"] = round(
            1 - results["zhpc_events"]["msgs_per_s"] / results["zhpc"]["msgs_per_s"], 3
        )
        line["events_cpu_cost"] = round(
            results["zhpc_events"]["cpu_us_per_msg"] / results["zhpc"]["cpu_us_per_msg"] - 1, 3
        )
    wf = [results[k] for k in ("workflows_plain", "workflows_tx") if k in results]
    if "zhpc" in results and wf:
        zhpc = results["zhpc"]
        line["zhpc_vs_fastest_workflows"] = round(
            zhpc["msgs_per_s"] / max(r["msgs_per_s"] for r in wf), 2
        )
        line["targets"] = {
            "throughput_2x_workflows": line["zhpc_vs_fastest_workflows"] >= 2.0,
            "throughput_0.8_raw": line.get("zhpc_vs_raw_pika_safe_hop", 0) >= 0.8,
            "p50_le_1.2ms": zhpc["p50_ms"] <= 1.2,
            "p50_le_workflows_tx": "workflows_tx" in results
            and zhpc["p50_ms"] <= results["workflows_tx"]["p50_ms"],
            "idle_rss_le_half": zhpc["idle_rss_mb"] <= min(r["idle_rss_mb"] for r in wf) / 2,
        }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())

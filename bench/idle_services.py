"""How cost grows with the number of services on one broker: prints ONE JSON line (not a test).

A site runs ~100 services. This starts real ``zhpc service -s double`` processes,
all consuming one queue on the real RabbitMQ, in steps (default 10, 50, 100;
each step adds processes to the previous ones) and per step reports:

* ``broker_cpu_cores``: CPU time of the broker process (beam.smp, read from
  /proc) per wall second while the services idle, and ``baseline_broker_cpu_cores``
  before any started (the broker is shared: that is everybody else's load);
* ``broker_mem_mb``: the node's memory as the management API reports it;
* ``client_io_bytes_per_s``: bytes per second between the broker and the services'
  connections while idle (AMQP heartbeats, status broadcasts, retry-lane looks; the
  management API's per-connection counters, refreshed every few seconds), and per service;
* ``services_rss_mb``: their total RSS;
* ``hop_msgs_per_s``: the drain rate of a backlog of ``-n`` messages through all
  of them (every service consumes the one queue, prefetch 100).

Usage: ``python bench/idle_services.py [--steps 10,50,100] [-n 5000] [--idle 30]``
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

AMQP_URL = os.environ.get("ZHPC_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
MANAGEMENT_URL = os.environ.get("ZHPC_BENCH_MANAGEMENT_URL", "http://127.0.0.1:15672/api")


def _broker_pid(port: int = 5672) -> int | None:
    """The process listening on the AMQP port (several brokers may run on one machine)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                return int(entry.name)
        except OSError:
            continue
    return None


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _local_ports(pids: list[int]) -> set[int]:
    """Local TCP ports of the sockets these processes hold (their broker connections)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
        except OSError:
            continue
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                fields = row.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _io_bytes(pids: list[int]) -> int:
    """Bytes the broker received from and sent to these processes' connections, as its
    management API counts them (socket traffic is not in /proc/PID/io)."""
    if not pids:
        return 0
    ports = _local_ports(pids)
    total = 0
    for connection in _api("connections?columns=peer_port,recv_oct,send_oct") or []:
        if connection.get("peer_port") in ports:
            total += connection.get("recv_oct", 0) + connection.get("send_oct", 0)
    return total


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return round(total / 1024, 1)


def _api(path: str) -> Any:
    request = urllib.request.Request(f"{MANAGEMENT_URL}/{path}")
    request.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return json.load(response)
    except OSError:
        return None


def _broker_mem_mb() -> float | None:
    nodes = _api("nodes")
    if nodes is None:
        return None
    return round(sum(node.get("mem_used", 0) for node in nodes) / 1e6, 1)


def _window(broker: int | None, pids: list[int], seconds: float) -> dict[str, Any]:
    """Broker CPU and the services' I/O over an idle window of ``seconds``."""
    cpu0 = _cpu_s(broker) if broker else 0.0
    io0, t0 = _io_bytes(pids), time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    cpu = (_cpu_s(broker) - cpu0) / elapsed if broker else None
    io = (_io_bytes(pids) - io0) / elapsed
    return {
        "broker_cpu_cores": None if cpu is None else round(cpu, 3),
        "client_io_bytes_per_s": round(io, 1),
        "client_io_bytes_per_s_per_service": round(io / len(pids), 1) if pids else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="10,50,100")
    parser.add_argument("-n", "--messages", type=int, default=5000)
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of each idle window")
    args = parser.parse_args()
    steps = [int(step) for step in args.steps.split(",")]

    from zhpc.config import BrokerConfig
    from zhpc.message import Outgoing
    from zhpc.recipe import RecipeWrapper
    from zhpc.transport import get_transport

    tag = uuid.uuid4().hex[:8]
    inq, outq = f"bench.idle.{tag}.in", f"bench.idle.{tag}.out"
    transport = get_transport(BrokerConfig(url=AMQP_URL))
    transport.connect()
    for queue in (inq, outq):
        transport.declare_queue(queue)
    recipe = {
        "1": {"service": "double", "queue": inq, "output": 2},
        "2": {"service": "sink", "queue": outq},
        "start": [[1, {"value": 21}]],
    }
    body = RecipeWrapper.from_recipe(recipe).start()[0].body
    broker = _broker_pid()
    procs: list[subprocess.Popen] = []
    line: dict[str, Any] = {
        "benchmark": "idle_services",
        "broker": "rabbitmq",
        "broker_pid_found": broker is not None,
        "messages": args.messages,
        "idle_window_s": args.idle,
    }
    tmp = tempfile.TemporaryDirectory()
    config = Path(tmp.name) / "zhpc.yaml"
    config.write_text(f"broker: {{url: '{AMQP_URL}'}}\n")
    env = {**os.environ, "ZHPC_HOME": tmp.name}
    zhpc = [
        sys.executable,
        "-m",
        "zhpc",
        "--config",
        str(config),
        "-q",
        "service",
        "-s",
        "double",
        "--queue",
        inq,
    ]
    try:
        line["baseline"] = {**_window(broker, [], args.idle), "broker_mem_mb": _broker_mem_mb()}
        results = []
        for step in steps:
            began = time.monotonic()
            while len(procs) < step:
                procs.append(
                    subprocess.Popen(
                        zhpc, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                    )
                )
            deadline = time.monotonic() + 60 + 5 * step
            while transport.queue_depth(inq).consumers < step:
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise SystemExit(f"the services of step {step} did not all start consuming")
                time.sleep(0.5)
            started_s = time.monotonic() - began
            time.sleep(2.0)  # settle
            pids = [p.pid for p in procs]
            result: dict[str, Any] = {
                "services": step,
                "start_s": round(started_s, 1),
                **_window(broker, pids, args.idle),
                "broker_mem_mb": _broker_mem_mb(),
                "services_rss_mb": _rss_mb(pids),
            }
            transport.publish_many(
                [
                    Outgoing(inq, body, headers={"workflows-recipe": True})
                    for _ in range(args.messages)
                ]
            )
            first = None
            deadline = time.monotonic() + 600
            while True:
                depth = transport.queue_depth(outq).ready
                now = time.monotonic()
                if first is None and depth > 0:
                    first = (now, depth)
                if depth >= args.messages and first is not None:
                    done = args.messages - first[1]
                    result["hop_msgs_per_s"] = round(done / (now - first[0]), 1)
                    break
                if now > deadline:
                    raise SystemExit(f"only {depth} of {args.messages} outputs")
                time.sleep(0.01)
            transport.delete_queue(outq)
            transport.declare_queue(outq)
            results.append(result)
        line["steps"] = results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        lanes = [f"{lane}.{q}" for q in (inq, outq) for lane in ("retry", "dlq")]
        for queue in (inq, outq, *lanes):
            try:
                transport.delete_queue(queue)
            except Exception as exc:  # report, but do not hide the result line
                print(f"could not delete {queue}: {exc}", file=sys.stderr)
        transport.close()
        tmp.cleanup()
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())

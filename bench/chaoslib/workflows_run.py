"""The comparison run: the same stream and the faults that apply, against python-workflows
services started by ``zocalo.service`` (plain: ack then send; or transactional).

Two steps (``ChaosWfDouble`` -> ``ChaosWfSink``, two processes each, local: there is
no workflows counterpart of zhpc's Slurm service arrays) on a private RabbitMQ node,
with durable classic queues as a Zocalo site has them. Faults: SIGKILL of a service's
process group (a killed job), SIGTERM of one (what scancel and requeue deliver),
broker stop_app/start_app, cut connections, a poison message every 1,000 (which the
workflows step rejects, so it is dropped: ``quarantined`` stays 0).
Killed or exited services are started again, as a batch system would.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from chaoslib import faults
from chaoslib.rabbit import PrivateRabbit
from chaoslib.run import Settings, is_poison
from chaoslib.wf_services import entry_points

KINDS = ("sigkill", "sigterm", "broker_restart", "netcut")
WORK, SINK = "wf.work", "wf.sink"
ROLES = ("ChaosWfDouble", "ChaosWfDouble", "ChaosWfSink", "ChaosWfSink")


class WorkflowsRun:
    def __init__(self, settings: Settings, mode: str) -> None:
        self.s, self.mode = settings, mode
        self.base = (settings.base or Path(f"/tmp/zchaos-{uuid.uuid4().hex[:8]}")) / f"wf-{mode}"
        self.base.mkdir(parents=True, exist_ok=True)
        self.output = self.base / "sink.jsonl"
        self.broker = PrivateRabbit(
            self.base / "rabbit",
            port=settings.port,
            dist_port=settings.port + 20000,
            management_port=None,
        )
        bench = Path(__file__).resolve().parents[1]
        extra = entry_points(self.base / "entry")
        self.env = {
            **os.environ,
            "ZCHAOS_WF_MODE": mode,
            "ZCHAOS_WF_WORK": WORK,
            "ZCHAOS_WF_SINK": SINK,
            "ZCHAOS_WF_OUTPUT": str(self.output),
            "PYTHONPATH": os.pathsep.join([str(bench), str(extra)]),
        }
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * len(ROLES)
        self.rng = random.Random(settings.seed + 2)
        self.done: Counter[str] = Counter()
        self.sent: set[int] = set()
        self.poison: set[int] = set()
        self._restarts = 0

    def _start(self, index: int) -> None:
        log = (self.base / f"{ROLES[index]}-{index}.log").open("ab")
        zocalo = Path(sys.executable).with_name("zocalo.service")
        self.procs[index] = subprocess.Popen(
            [
                str(zocalo),
                "-s",
                ROLES[index],
                "--rabbit-host",
                "127.0.0.1",
                "--rabbit-port",
                str(self.broker.port),
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def _keep(self) -> None:
        for index, proc in enumerate(self.procs):
            if proc is None or proc.poll() is not None:
                if proc is not None:
                    self._restarts += 1
                self._start(index)

    def _signal(self, sig: int) -> bool:
        alive = [p for p in self.procs if p is not None and p.poll() is None]
        if not alive:
            return False
        victim = self.rng.choice(alive)
        os.killpg(victim.pid, sig)
        victim.wait(30)
        return True

    def inject(self, kind: str) -> None:
        if kind == "sigkill":
            ok = self._signal(signal.SIGKILL)
        elif kind == "sigterm":
            ok = self._signal(signal.SIGTERM)
        elif kind == "broker_restart":
            self.broker.stop_app()
            time.sleep(self.rng.uniform(2, 5))
            self.broker.start_app()
            ok = True
        else:
            ok = self.broker.cut_connections() > 0
        if ok:
            self.done[kind] += 1

    def _topology(self) -> None:
        """What a Zocalo site has: durable classic queues, and the broadcast exchanges a
        zocalo.service frontend binds to. (zhpc's own quorum queues would move a returned
        message to its retry lane ``retry.Q``, which workflows never reads.)"""
        import pika

        connection = pika.BlockingConnection(pika.URLParameters(self.broker.url))
        channel = connection.channel()
        for queue in (WORK, SINK):
            channel.queue_declare(queue, durable=True)
        for name in ("command", "transient.status"):
            channel.exchange_declare(name, exchange_type="fanout", durable=True)
        connection.close()

    def _publish(self) -> None:
        from zhpc.config import BrokerConfig
        from zhpc.recipe import RecipeWrapper
        from zhpc.transport import get_transport

        transport = get_transport(BrokerConfig(url=self.broker.url))
        transport.connect()
        start, batch = time.monotonic(), max(1, int(self.s.rate / 10))
        for first in range(0, self.s.messages, batch):
            last = min(self.s.messages, first + batch)
            out = []
            for i in range(first, last):
                value: Any = "poison" if is_poison(i, self.s) else i
                recipe = {
                    "1": {"service": "double", "queue": WORK, "output": 2},
                    "2": {"service": "sink", "queue": SINK},
                    "start": [[1, {"value": value}]],
                }
                out += RecipeWrapper.from_recipe(recipe, environment={"ID": f"wf-{i}"}).start()
            while True:
                try:
                    transport.publish_many(out)
                    break
                except Exception:  # the broker is restarting: reconnect, publish again
                    time.sleep(0.5)
                    transport = get_transport(BrokerConfig(url=self.broker.url))
                    try:
                        transport.connect()
                    except Exception:
                        continue
            for i in range(first, last):
                (self.poison if is_poison(i, self.s) else self.sent).add(i)
            pause = start + last / self.s.rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        self._depths = transport

    def arrivals(self) -> tuple[set[int], int]:
        if not self.output.exists():
            return set(), 0
        text = self.output.read_text(errors="replace")
        ids = Counter(
            int(json.loads(line)["recipe_id"].removeprefix("wf-"))
            for line in text[: text.rfind("\n") + 1].splitlines()
        )
        return set(ids), sum(n - 1 for n in ids.values())

    def run(self) -> dict[str, Any]:
        try:
            return self._run()
        finally:
            for proc in self.procs:
                if proc is not None and proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(30)
            self.broker.stop()

    def _run(self) -> dict[str, Any]:
        from zhpc.config import BrokerConfig
        from zhpc.transport import get_transport

        self.broker.start()
        self._topology()
        kinds = [k for k in KINDS if k in self.s.kinds or k == "sigterm"]
        span = self.s.messages / self.s.rate
        plan = faults.plan(kinds, self.s.repeats, span, self.s.seed, start=min(10.0, span / 4))
        self._keep()
        publisher = threading.Thread(target=self._publish, daemon=True)
        flow_start = time.monotonic()
        publisher.start()
        while publisher.is_alive() or plan:
            now = time.monotonic() - flow_start
            while plan and plan[0].at <= now:
                self.inject(plan.pop(0).kind)
            self._keep()
            time.sleep(0.5)
        publisher.join()
        sent_done, last_change, seen = time.monotonic(), time.monotonic(), -1
        deadline = sent_done + self.s.drain_timeout
        quiet = 30.0  # no new line for this long: what is missing is lost
        with get_transport(BrokerConfig(url=self.broker.url)) as transport:
            while time.monotonic() < deadline:
                arrived, duplicates = self.arrivals()
                if len(arrived) != seen:
                    seen, last_change = len(arrived), time.monotonic()
                if self.sent <= arrived:
                    break
                if time.monotonic() - last_change > quiet:  # a poison message may circulate
                    break
                self._keep()
                time.sleep(1)
            drained = time.monotonic()
            quarantined = 0  # classic queues, no dead-letter exchange: rejected is dropped
            circulating = transport.queue_depth(WORK).ready
        lost = sorted(self.sent - arrived)
        return {
            "bench": "chaos-workflows",
            "mode": self.mode,
            "seed": self.s.seed,
            "sent": len(self.sent) + len(self.poison),
            "good": len(self.sent),
            "arrived_unique": len(arrived & self.sent),
            "duplicates": duplicates,
            "poison": len(self.poison),
            "quarantined": quarantined,
            "lost": len(lost),
            "lost_ids": lost[:20],
            "drain_s": round(drained - sent_done, 1),
            "total_s": round(drained - flow_start, 1),
            "throughput_msg_s": round(len(arrived) / max(drained - flow_start, 1e-9), 1),
            "faults": dict(sorted(self.done.items())),
            "restarts": self._restarts,
            "workflows_version": _version("workflows"),
            "zocalo_version": _version("zocalo"),
            "queues": "classic durable",
            "left_in_work_queue": circulating,
        }


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)

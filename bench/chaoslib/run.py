"""One chaos run: a private broker, services as Slurm arrays kept up by ``zhpc scale``, a
seeded fault plan while messages flow, and an account of every message at the end.

The recipe: step 1 ``double`` -> (every ``wrap_every``-th message) step 2, a
cluster step that ``cluster_submission`` turns into an sbatch job running
``zhpc wrap -- /bin/echo`` -> step 3 ``jsonlines``. Each recipe instance gets
the id ``chaos-<index>``, which the sink writes on every line, so arrivals,
duplicates (same message id twice) and losses are counted per instance; a
poison message (``value: "poison"``, which ``double`` refuses) every
``poison_every`` must end in the quarantine store, and nothing else may.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chaoslib import faults
from chaoslib.cluster import cancel_all, my_jobs, rss_and_fds, service_processes
from chaoslib.rabbit import PrivateRabbit

QUEUES = {
    "double": "chaos.work",
    "cluster_submission": "chaos.submission",
    "jsonlines": "chaos.sink",
}
SINK = "chaos.jsonl"


@dataclass
class Settings:
    messages: int = 10_000
    seed: int = 1
    rate: float = 100.0  #: messages per second published
    wrap_every: int = 100
    poison_every: int = 1_000
    kinds: list[str] = field(default_factory=lambda: [k for k in faults.KINDS if k != "slurmd"])
    repeats: int = 3  #: faults of each kind
    counts: dict[str, int] = field(default_factory=dict)  #: per-kind override of ``repeats``
    tasks: int = 2  #: array tasks per service (min_jobs = max_jobs of the scaler)
    task_time: str = "00:10:00"
    drain_timeout: float = 900.0
    soak_minutes: float | None = None
    fault_every: float = 5.0  #: soak: seconds between faults
    base: Path | None = None
    port: int = 5690


def is_poison(index: int, settings: Settings) -> bool:
    """Every ``poison_every``-th message, half-way through each block (never a cluster step)."""
    return (index + 1) % settings.poison_every == settings.poison_every // 2 + 1


def recipe(index: int, settings: Settings) -> dict[str, Any]:
    """The recipe of message ``index`` (with or without the cluster step)."""
    sink = {
        "service": "jsonlines",
        "queue": QUEUES["jsonlines"],
        "parameters": {"output_filename": "{output}"},
    }
    value: Any = "poison" if is_poison(index, settings) else index
    if (index + 1) % settings.wrap_every == 0:
        return {
            "1": {"service": "double", "queue": QUEUES["double"], "output": 2},
            "2": {
                "service": "wrapped echo",
                "queue": QUEUES["cluster_submission"],
                "cluster": {"command": ["/bin/echo", "chaos"], "time": "00:05:00"},
                "output": {"success": 3, "failure": 3},
            },
            "3": sink,
            "start": [[1, {"value": value}]],
        }
    return {
        "1": {"service": "double", "queue": QUEUES["double"], "output": 3},
        "3": sink,
        "start": [[1, {"value": value}]],
    }


class ChaosRun:
    """Set up, run, account, tear down. :meth:`run` returns the report (one JSON object)."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.base = settings.base or Path(f"/tmp/zchaos-{uuid.uuid4().hex[:8]}")
        self.base.mkdir(parents=True, exist_ok=True)
        self.config = self.base / "zhpc.yaml"
        self.output = self.base / "out" / SINK
        self.broker = PrivateRabbit(
            self.base / "rabbit",
            port=settings.port,
            dist_port=settings.port + 20000,
            management_port=settings.port + 10000,
        )
        self.env = {**os.environ, "ZHPC_HOME": str(self.base / "home")}
        self.sent: set[int] = set()
        self.poison: set[int] = set()
        self.samples: dict[int, list[tuple[str, int, int]]] = defaultdict(list)
        self._stop = threading.Event()
        self._helpers: list[subprocess.Popen[bytes]] = []
        self._schlock: subprocess.Popen[bytes] | None = None

    # -- set-up -----------------------------------------------------------------------

    def write_config(self) -> None:
        service = {
            "prefetch": 10,
            "drain_grace": 2,
            "end_margin": 10,
            "heartbeat_interval": 5,
            "retry_interval": 0.5,
        }
        data = {
            "broker": {
                "url": self.broker.url,
                "management_url": self.broker.management_url,
                "delivery_limit": 5,
                "heartbeat": 10,
                "retry_delay": 0.5,
                "connection_attempts": 60,
            },
            "cluster": {
                "backend": "slurm",
                "workdir": str(self.base / "jobs"),
                "default_time": self.s.task_time,
            },
            "staging": {"allowed_roots": [str(self.base / "out")]},
            "services": {
                **{name: {**service, "queue": queue} for name, queue in QUEUES.items()},
                "cluster_submission": {
                    **service,
                    "queue": QUEUES["cluster_submission"],
                    "prefetch": 1,
                },
                "schlockmeister": {"heartbeat_interval": 5},
            },
            "scaler": {
                name: {
                    "min_jobs": self.s.tasks,
                    "max_jobs": self.s.tasks,
                    "time": self.s.task_time,
                    "cooldown": 1,
                    "crash_limit": 1000,
                    "max_pending": self.s.tasks,
                    "interval": 3,
                }
                for name in QUEUES
            },
            "quarantine": {
                "url": f"sqlite:///{self.base / 'quarantine.sqlite'}",
                "queues": [f"dlq.{q}" for q in QUEUES.values()],
                "discover": False,
                "management_url": "",
                "rescan_interval": 5,
                "notify_queue": "",
            },
        }
        (self.base / "jobs").mkdir(exist_ok=True)
        (self.base / "out").mkdir(exist_ok=True)
        self.config.write_text(yaml.safe_dump(data))

    def zhpc(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "zhpc", "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            check=False,
        )

    def submit(self, service: str, time_limit: str) -> str | None:
        proc = self.zhpc("submit-services", "-s", service, "--count", "1", "--time", time_limit)
        return proc.stdout.strip() if proc.returncode == 0 else None

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.base / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "zhpc", "--config", str(self.config), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        log.close()
        self._helpers.append(proc)
        return proc

    def _keep_schlockmeister(self) -> None:
        """Schlockmeister runs next to the bench (it is infrastructure); restarted if killed."""
        if self._schlock is None or self._schlock.poll() is not None:
            self._schlock = self._spawn("schlockmeister", "-v", "service", "-s", "schlockmeister")

    # -- the stream ---------------------------------------------------------------------

    def _publish(self, count: int | None, seconds: float | None) -> None:
        from zhpc.config import BrokerConfig
        from zhpc.recipe import RecipeWrapper
        from zhpc.transport import get_transport

        transport = None
        start, index, batch = time.monotonic(), 0, max(1, int(self.s.rate / 10))
        while not self._stop.is_set():
            if count is not None and index >= count:
                break
            if seconds is not None and time.monotonic() - start > seconds:
                break
            upto = index + batch if count is None else min(count, index + batch)
            outgoing = []
            for i in range(index, upto):
                rw = RecipeWrapper.from_recipe(
                    recipe(i, self.s),
                    {"output": str(self.output)},
                    environment={"ID": f"chaos-{i}"},
                )
                outgoing += rw.start()
            while not self._stop.is_set():
                try:
                    if transport is None:
                        transport = get_transport(BrokerConfig(url=self.broker.url))
                        transport.connect()
                    transport.publish_many(outgoing)
                    break
                except Exception:  # broker restarting or cut: publish again (at-least-once)
                    if transport is not None:
                        with contextlib.suppress(Exception):
                            transport.close()
                    transport = None
                    time.sleep(0.5)
            for i in range(index, upto):
                (self.poison if is_poison(i, self.s) else self.sent).add(i)
            index = upto
            pause = start + index / self.s.rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        if transport is not None:
            transport.close()

    def _sample(self) -> None:
        for proc in service_processes(self.config):
            found = rss_and_fds(proc.pid)
            if found:
                self.samples[proc.pid].append((proc.service, *found))

    def arrivals(self) -> tuple[set[int], int, int]:
        """(instances arrived, lines, duplicate lines by message id) in the sink file."""
        if not self.output.exists():
            return set(), 0, 0
        text = self.output.read_text(errors="replace")
        ids: Counter[str] = Counter()
        arrived = set()
        for line in text[: text.rfind("\n") + 1].splitlines():
            record = json.loads(line)
            ids[record["message_id"]] += 1
            arrived.add(int(str(record["recipe_id"]).removeprefix("chaos-")))
        return arrived, sum(ids.values()), sum(n - 1 for n in ids.values())

    def quarantined(self) -> list[int]:
        from zhpc.config import load_config
        from zhpc.quarantine import open_store

        if not (self.base / "quarantine.sqlite").exists():
            return []
        with open_store(load_config(self.config).quarantine) as store:
            return [
                int(str(e.recipe_id).removeprefix("chaos-")) for e in store.entries() if e.recipe_id
            ]

    # -- the run ----------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        try:
            return self._run(started)
        finally:
            self.teardown()

    def _run(self, started: float) -> dict[str, Any]:
        self.broker.start()
        self.write_config()
        self._keep_schlockmeister()
        self._spawn("scaler", "-v", "scale", "--daemon", "--interval", "3")
        soak = self.s.soak_minutes
        span = soak * 60 if soak else self.s.messages / self.s.rate
        repeats = (
            max(1, int(span / self.s.fault_every / len(self.s.kinds))) if soak else self.s.repeats
        )
        plan = faults.plan(
            self.s.kinds,
            repeats,
            span,
            self.s.seed,
            start=min(10.0, span / 4),
            counts=self.s.counts,
        )
        injector = faults.Injector(self.base, self.config, self.broker, self.submit, self.s.seed)
        publisher = threading.Thread(
            target=self._publish,
            args=(None if soak else self.s.messages, span if soak else None),
            daemon=True,
        )
        flow_start = time.monotonic()
        publisher.start()
        pending = list(plan)
        while publisher.is_alive() or pending:
            now = time.monotonic() - flow_start
            while pending and pending[0].at <= now:
                injector.inject(pending.pop(0).kind)
            self._keep_schlockmeister()
            self._sample()
            time.sleep(0.5)
        publisher.join()
        sent_done = time.monotonic()
        injector.join()
        expected = set(self.sent)
        deadline = time.monotonic() + self.s.drain_timeout
        while True:
            arrived, lines, duplicates = self.arrivals()
            quarantined = self.quarantined()
            if (
                expected <= arrived and len(set(quarantined)) >= len(self.poison)
            ) or time.monotonic() > deadline:
                break
            self._keep_schlockmeister()
            self._sample()
            time.sleep(1)
        drained = time.monotonic()
        good_quarantined = sorted(set(quarantined) - self.poison)
        lost = sorted(expected - arrived - set(quarantined))
        rss = [rss for samples in self.samples.values() for _, rss, _ in samples]
        report = {
            "bench": "chaos",
            "mode": "soak" if soak else "count",
            "seed": self.s.seed,
            "sent": len(expected) + len(self.poison),
            "good": len(expected),
            "arrived_unique": len(arrived & expected),
            "sink_lines": lines,
            "duplicates": duplicates,
            "poison": len(self.poison),
            "quarantined": len(set(quarantined) & self.poison),
            "good_quarantined": len(good_quarantined),
            "lost": len(lost),
            "lost_ids": lost[:20],
            "wrapped": len({i for i in arrived if (i + 1) % self.s.wrap_every == 0}),
            "drain_s": round(drained - sent_done, 1),
            "total_s": round(drained - flow_start, 1),
            "throughput_msg_s": round(len(arrived) / max(drained - flow_start, 1e-9), 1),
            "faults": dict(sorted(injector.done.items())),
            "faults_skipped": dict(sorted(injector.skipped.items())),
            "fault_errors": injector.errors[:5],
            "max_service_rss_mb": round(max(rss, default=0) / 2**20, 1),
            "setup_s": round(flow_start - started, 1),
            "run_dir": str(self.base),
        }
        if soak:
            report["soak"] = self.soak_summary()
        report["ok"] = (
            report["lost"] == 0
            and report["good_quarantined"] == 0
            and report["quarantined"] == report["poison"]
        )
        return report

    def soak_summary(self) -> dict[str, Any]:
        """Per service: the largest RSS and fd growth one process showed over its life."""
        out: dict[str, dict[str, float]] = {}
        for samples in self.samples.values():
            if len(samples) < 2:
                continue
            name = samples[0][0]
            entry = out.setdefault(
                name,
                {
                    "processes": 0,
                    "max_rss_mb": 0.0,
                    "max_rss_growth_mb": 0.0,
                    "max_fds": 0,
                    "max_fd_growth": 0,
                },
            )
            entry["processes"] += 1
            entry["max_rss_mb"] = max(
                entry["max_rss_mb"], round(max(s[1] for s in samples) / 2**20, 1)
            )
            entry["max_rss_growth_mb"] = max(
                entry["max_rss_growth_mb"],
                round((samples[-1][1] - samples[len(samples) // 4][1]) / 2**20, 1),
            )
            entry["max_fds"] = max(entry["max_fds"], max(s[2] for s in samples))
            entry["max_fd_growth"] = max(
                entry["max_fd_growth"], samples[-1][2] - samples[len(samples) // 4][2]
            )
        return out

    def teardown(self) -> None:
        self._stop.set()
        for proc in self._helpers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._helpers:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        deadline = time.monotonic() + 60
        while cancel_all(self.base) and time.monotonic() < deadline:
            time.sleep(2)  # cancelled tasks stay COMPLETING until their processes are gone
        self.broker.stop()


def leftover_jobs(base: Path) -> int:
    return len(my_jobs(base))

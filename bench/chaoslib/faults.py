"""The fault plan (seeded, so a run can be repeated) and the code that injects each fault.

Every fault touches only what the run owns: its own service processes and
Slurm jobs, its private RabbitMQ node. The one exception is ``slurmd``: a
node daemon of the shared cluster is SIGKILLed and restarted (its jobs keep
running meanwhile); it is off unless asked for.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chaoslib.cluster import my_jobs, service_processes
from chaoslib.rabbit import PrivateRabbit

#: Every kind the injector knows (poison messages are part of the message stream instead).
KINDS = ("sigkill", "scancel", "requeue", "timelimit", "slurmd", "broker_restart", "netcut")
#: The services whose tasks are fault victims.
VICTIMS = ("double", "cluster_submission", "jsonlines")


@dataclass(frozen=True)
class PlannedFault:
    at: float  #: seconds after the stream started
    kind: str


def plan(
    kinds: list[str],
    repeats: int,
    span: float,
    seed: int,
    start: float = 5.0,
    counts: dict[str, int] | None = None,
) -> list[PlannedFault]:
    """``repeats`` faults of each kind spread over ``[start, span]`` in a seeded order.

    A ``timelimit`` fault starts a task with a one-minute limit (Slurm counts in minutes),
    so it is placed at least 70 s before the end of the stream when the stream is that long.
    """
    rng = random.Random(seed)
    times = {kind: (counts or {}).get(kind, repeats) for kind in kinds}
    order = [kind for kind in kinds for _ in range(times[kind]) if kind != "timelimit"]
    rng.shuffle(order)
    step = max(0.5, (span - start) / max(1, len(order)))
    planned = [
        PlannedFault(start + i * step + rng.uniform(0, step * 0.5), kind)
        for i, kind in enumerate(order)
    ]
    latest = max(start, span - 70)
    planned += [
        PlannedFault(rng.uniform(start, latest), "timelimit")
        for _ in range(times.get("timelimit", 0))
    ]
    return sorted(planned, key=lambda fault: fault.at)


def _soon(look: Callable[[], list], timeout: float = 30.0) -> list:
    deadline = time.monotonic() + timeout
    while not (found := look()) and time.monotonic() < deadline:
        time.sleep(1)
    return found


@dataclass
class Injector:
    """Injects one fault at a time; counts what was done and what could not be done."""

    run_dir: Path
    config: Path
    broker: PrivateRabbit
    submit: Callable[[str, str], str | None]  #: (service, time limit) -> job id
    seed: int
    done: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed + 1)

    def inject(self, kind: str) -> None:
        try:
            ok = getattr(self, f"_{kind}")()
        except Exception as exc:  # a fault that fails is reported, never stops the run
            self.errors.append(f"{kind}: {type(exc).__name__}: {exc}")
            ok = False
        (self.done if ok else self.skipped)[kind] += 1

    def join(self, timeout: float = 120.0) -> None:
        for thread in self._threads:
            thread.join(timeout)

    # -- the faults -------------------------------------------------------------------

    def _running_tasks(self) -> list:
        """Running service tasks; waits up to 30 s for one (e.g. right after a broker restart
        or while the scaler replaces a task, there may be none)."""
        return _soon(
            lambda: [
                j
                for j in my_jobs(self.run_dir)
                if j.is_service
                and j.state == "RUNNING"
                and j.name.removeprefix("zhpc-svc-") in VICTIMS
            ]
        )

    def _sigkill(self) -> bool:
        procs = _soon(lambda: [p for p in service_processes(self.config) if p.service in VICTIMS])
        if not procs:
            return False
        os.kill(self.rng.choice(procs).pid, signal.SIGKILL)
        return True

    def _scancel(self) -> bool:
        tasks = self._running_tasks()
        if not tasks:
            return False
        subprocess.run(["scancel", self.rng.choice(tasks).job_id], check=True, timeout=30)
        return True

    def _requeue(self) -> bool:
        tasks = self._running_tasks()
        if not tasks:
            return False
        job = self.rng.choice(tasks).job_id
        subprocess.run(["scontrol", "requeue", job], check=True, timeout=30, capture_output=True)
        self._background(self._release, job)
        return True

    @staticmethod
    def _release(job: str) -> None:
        """A requeued job waits ~2 minutes unless told to start now."""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            proc = subprocess.run(
                ["scontrol", "update", f"JobId={job}", "StartTime=now"],
                capture_output=True,
                timeout=30,
                check=False,
            )
            state = subprocess.run(
                ["squeue", "-h", "-j", job, "-o", "%T"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if proc.returncode == 0 and state.stdout.strip() in ("RUNNING", ""):
                return
            time.sleep(1)

    def _timelimit(self) -> bool:
        """One more task of a service whose one-minute limit ends it mid-stream."""
        return self.submit(self.rng.choice(VICTIMS), "00:01:00") is not None

    def _slurmd(self) -> bool:
        tasks = self._running_tasks()
        nodes = sorted({t.node for t in tasks if t.node})
        if not nodes:
            return False
        node = self.rng.choice(nodes)
        pid = int(Path(f"/run/slurmd-{node}.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(self.rng.uniform(1, 3))
        subprocess.run(["slurmd", "-N", node], check=True, timeout=60, capture_output=True)
        return True

    def _broker_restart(self) -> bool:
        self.broker.stop_app()
        time.sleep(self.rng.uniform(2, 5))
        self.broker.start_app()
        return True

    def _netcut(self) -> bool:
        """Cut every connection; if none is up (e.g. right after a broker restart), wait."""
        deadline = time.monotonic() + 30
        while self.broker.cut_connections() == 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        return True

    def _background(self, work: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=work, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

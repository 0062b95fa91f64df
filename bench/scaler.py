"""Scaler benchmark: prints ONE JSON line (not a test; targets are judged by reading it).

The same workload, in the same run, for each tool that is available here: idle for
``--idle`` s (30), then a burst of ``-n`` (200) tasks of ``--task`` s (0.5) each, with
at most ``--max-jobs`` (4) one-CPU Slurm jobs.

* ``zhpc``: ``zhpc scale --daemon`` (interval ``--interval`` s, 60; queue-depth look every
  0.5 s) for a sleeping service on RabbitMQ; the tasks are recipe messages; its jobs
  end after ``idle_timeout`` = ``--idle-timeout`` s (5).
* ``parsl``: HighThroughputExecutor + SlurmProvider, strategy ``htex_auto_scale``,
  ``max_idletime`` = ``--idle-timeout``; the tasks are python apps.
* ``dask_jobqueue``: ``SLURMCluster.adapt(minimum_jobs=0, maximum_jobs=max)``, default
  adapt timings; the tasks go through ``Client.map``.

Parsl and dask-jobqueue are not zhpc dependencies: they run in the interpreter given by
``--other-python`` (default ``$ZHPC_BENCH_OTHER_PYTHON``, else this one) and their column
is null with a reason when they are not importable there.

Per tool (seconds from the burst, epoch clocks of the same machine):
``first_sbatch_s``, ``first_done_s`` (first task finished), ``all_done_s``,
``jobs_submitted``, ``peak_pending``, ``peak_jobs``, ``ever_above_max``,
``release_s`` (end of work -> no job of the tool left in squeue), ``squeue_per_min``
(job-state queries, squeue or sacct, by the tool itself, not by its jobs, over its whole
run, counted by a PATH shim), ``job_states_known`` (did the tool ask Slurm for job states
during the run).
Usage: ``python bench/scaler.py [--only zhpc,parsl,dask_jobqueue] [--idle 30]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

AMQP_URL = os.environ.get("ZHPC_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
TOOLS = ("zhpc", "parsl", "dask_jobqueue")
SHIMMED = ("squeue", "sacct", "sbatch", "scancel")

PLUGIN = '''
import time
from zhpc.service import Service

class Sleeper(Service):
    """Sleeps payload["sleep"] seconds, then passes the payload on."""

    def process(self, rw, payload):
        time.sleep(float(payload["sleep"]))
        rw.send(payload)
'''


# == the other tools, run as ``python bench/scaler.py --child TOOL`` (no zhpc import) ======
def _task(seconds: float) -> float:
    import time as _time

    _time.sleep(seconds)
    return _time.time()


def child(tool: str, opts: dict[str, Any]) -> int:
    """Start the tool, idle, run the burst, report times, keep it alive until stdin closes."""

    def say(**event: Any) -> None:
        print(json.dumps(event), flush=True)

    if tool == "parsl":
        import parsl
        from parsl.config import Config
        from parsl.executors import HighThroughputExecutor
        from parsl.providers import SlurmProvider

        provider = SlurmProvider(
            init_blocks=0,
            min_blocks=0,
            max_blocks=opts["max_jobs"],
            nodes_per_block=1,
            cores_per_node=1,
            exclusive=False,
            walltime="00:10:00",
        )
        executor = HighThroughputExecutor(
            label=opts["tag"], address="127.0.0.1", max_workers_per_node=1, provider=provider
        )
        parsl.load(
            Config(
                executors=[executor],
                strategy="htex_auto_scale",
                max_idletime=opts["idle_timeout"],
                run_dir=opts["run_dir"],
            )
        )
        app = parsl.python_app(_task)
        say(event="ready")
        time.sleep(opts["idle"])
        burst = time.time()
        futures = [app(opts["task"]) for _ in range(opts["n"])]
        ends = [f.result() for f in futures]
        say(event="done", burst=burst, first_done=min(ends), all_done=max(ends))
        sys.stdin.read()
        parsl.dfk().cleanup()
        return 0
    from dask.distributed import Client
    from dask_jobqueue import SLURMCluster

    cluster = SLURMCluster(
        cores=1,
        processes=1,
        memory="1GB",
        walltime="00:10:00",
        job_name=opts["tag"],
        scheduler_options={"host": "127.0.0.1"},
        log_directory=opts["run_dir"],
    )
    cluster.adapt(minimum_jobs=0, maximum_jobs=opts["max_jobs"])
    with Client(cluster) as client:
        say(event="ready")
        time.sleep(opts["idle"])
        burst = time.time()
        futures = client.map(_task, [opts["task"]] * opts["n"], pure=False)
        ends = client.gather(futures)
        del futures  # results held by workers would keep them (and their jobs) alive
        say(event="done", burst=burst, first_done=min(ends), all_done=max(ends))
        sys.stdin.read()
    cluster.close()
    return 0


# == measuring ===========================================================================
class Shim:
    """A PATH directory whose squeue/sacct/sbatch/scancel log each call, then run the real one."""

    def __init__(self, root: Path, name: str) -> None:
        self.dir = root / f"shim-{name}"
        self.dir.mkdir()
        self.log = root / f"calls-{name}.log"
        self.log.touch()
        for command in SHIMMED:
            real = shutil.which(command)
            if real is None:
                if command == "sacct":
                    continue
                raise SystemExit(f"{command} not found: the benchmark needs Slurm")
            script = self.dir / command
            script.write_text(
                f'#!/bin/sh\necho "$(date +%s.%N) {command} '
                f'${{SLURM_JOB_ID:-scaler}}" >> {self.log}\nexec {real} "$@"\n'
            )
            script.chmod(0o755)

    def env(self) -> dict[str, str]:
        return {**os.environ, "PATH": f"{self.dir}{os.pathsep}{os.environ['PATH']}"}

    def calls(self) -> list[tuple[float, str]]:
        """(time, command) of the calls the tool made itself (not from inside its jobs)."""
        found = []
        for line in self.log.read_text().splitlines():
            stamp, command, who = line.split()
            if who == "scaler":
                found.append((float(stamp), command))
        return found


class JobWatch(threading.Thread):
    """Polls squeue (the real one, not counted) for jobs whose name contains ``tag``."""

    def __init__(self, tag: str) -> None:
        super().__init__(daemon=True)
        self.tag = tag
        self.seen: set[str] = set()
        self.peak_pending = 0
        self.peak_jobs = 0
        self.alive = 0
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.squeue = shutil.which("squeue") or "squeue"

    def run(self) -> None:
        while not self.stop.is_set():
            out = subprocess.run(
                [self.squeue, "--me", "--noheader", "--array", "-o", "%i %j %T"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            ).stdout
            pending = alive = 0
            for line in out.splitlines():
                job_id, name, state = line.split()
                if self.tag not in name:
                    continue
                self.seen.add(job_id)
                if state in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
                    alive += 1
                    pending += state == "PENDING"
            self.alive = alive
            self.peak_pending = max(self.peak_pending, pending)
            self.peak_jobs = max(self.peak_jobs, alive)
            self.samples.append((time.time(), alive))
            self.stop.wait(0.25)

    def gone_after(self, since: float, timeout: float) -> float | None:
        """Seconds from ``since`` until a look finds no job alive (None if none did)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            gone = [t for t, alive in list(self.samples) if t >= since and alive == 0]
            if gone:
                return round(gone[0] - since, 2)
            time.sleep(0.25)
        return None


def _result(
    watch: JobWatch,
    shim: Shim,
    started: float,
    burst: float,
    first_done: float,
    all_done: float,
    release: float | None,
    max_jobs: int,
) -> dict[str, Any]:
    ended = time.time()
    calls = shim.calls()
    sbatch = [t for t, c in calls if c == "sbatch" and t >= burst]
    squeue = [t for t, c in calls if c in ("squeue", "sacct")]
    return {
        "first_sbatch_s": round(min(sbatch) - burst, 2) if sbatch else None,
        "first_done_s": round(first_done - burst, 2),
        "all_done_s": round(all_done - burst, 2),
        "jobs_submitted": len(watch.seen),
        "sbatch_calls": len(sbatch),
        "peak_pending": watch.peak_pending,
        "peak_jobs": watch.peak_jobs,
        "ever_above_max": watch.peak_jobs > max_jobs,
        "release_s": release,
        "squeue_per_min": round(len(squeue) / ((ended - started) / 60), 2),
        "job_states_known": bool(squeue),
    }


def run_zhpc(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    from zhpc.config import BrokerConfig
    from zhpc.recipe import RecipeWrapper
    from zhpc.transport import dlq_name, get_transport

    service = f"zhpc_bench_{uuid.uuid4().hex[:8]}"
    queue, out = f"{service}.in", f"{service}.out"
    plugins = root / "plugins"
    dist = plugins / f"{service}-0.dist-info"
    dist.mkdir(parents=True)
    (plugins / f"{service}_plugin.py").write_text(PLUGIN)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {service}\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(
        f"[zhpc.services]\n{service} = {service}_plugin:Sleeper\n"
    )
    config = root / "zhpc.yaml"
    config.write_text(
        json.dumps(
            {
                "broker": {"url": AMQP_URL},
                "cluster": {"backend": "slurm", "workdir": str(root / "jobs")},
                "services": {
                    service: {
                        "queue": queue,
                        "prefetch": 1,
                        "idle_timeout": args.idle_timeout,
                        "drain_grace": 2,
                        "end_margin": 5,
                    }
                },
                "scaler": {
                    service: {
                        "max_jobs": args.max_jobs,
                        "max_pending": args.max_jobs,
                        "messages_per_job": max(1, args.n // args.max_jobs),
                        "time": "00:10:00",
                        "interval": args.interval,
                    }
                },
            }
        )
    )
    shim = Shim(root, "zhpc")
    env = shim.env()
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(plugins), os.environ.get("PYTHONPATH")])),
        ZHPC_HOME=str(root / "home"),
    )
    watch = JobWatch(f"zhpc-svc-{service}")
    watch.start()
    started = time.time()
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zhpc",
            "--config",
            str(config),
            "scale",
            "--daemon",
            "--json",
            "--poll",
            "0.5",
            "-s",
            service,
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: list[dict[str, Any]] = []
    reader = threading.Thread(
        target=lambda: lines.extend(json.loads(line) for line in daemon.stdout or ()), daemon=True
    )
    reader.start()
    done: list[float] = []
    with get_transport(BrokerConfig(url=AMQP_URL)) as broker:
        try:
            broker.declare_queue(queue)
            broker.declare_queue(out)
            recipe = {"1": {"queue": queue, "output": 2}, "2": {"queue": out}}
            messages = [
                RecipeWrapper.from_recipe(
                    {**recipe, "start": [[1, {"n": n, "sleep": args.task}]]}
                ).start()[0]
                for n in range(args.n)
            ]
            time.sleep(args.idle)

            def arrived(message: Any) -> None:
                done.append(time.time())
                broker.ack(message)

            broker.subscribe(out, arrived, prefetch=200)
            burst = time.time()
            broker.publish_many(messages)
            deadline = time.time() + 600
            while len(done) < args.n and time.time() < deadline:
                broker.poll(0.1)
            if len(done) < args.n:
                raise RuntimeError(f"only {len(done)} of {args.n} messages processed")
            release = watch.gone_after(max(done), timeout=120)
            result = _result(
                watch, shim, started, burst, min(done), max(done), release, args.max_jobs
            )
            result["daemon_cycles"] = len(lines)
            result["submitted_by_daemon"] = sum(line["submitted"] for line in lines)
            return result
        finally:
            daemon.terminate()
            daemon.wait(30)
            watch.stop.set()
            subprocess.run(
                [shutil.which("scancel") or "scancel", f"--name=zhpc-svc-{service}"], check=False
            )
            for name in (queue, out, dlq_name(queue), dlq_name(out)):
                broker.delete_queue(name)  # type: ignore[attr-defined]


def run_other(tool: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    module = "parsl" if tool == "parsl" else "dask_jobqueue"
    probe = subprocess.run(
        [args.other_python, "-c", f"import {module}"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return {
            "skipped": f"{module} is not importable by {args.other_python} "
            f"(pip install parsl dask-jobqueue there, or pass --other-python)"
        }
    tag = f"zb{uuid.uuid4().hex[:8]}"
    run_dir = root / f"run-{tool}"
    run_dir.mkdir()
    opts = {
        "tag": tag,
        "max_jobs": args.max_jobs,
        "idle": args.idle,
        "task": args.task,
        "n": args.n,
        "idle_timeout": args.idle_timeout,
        "run_dir": str(run_dir),
    }
    shim = Shim(root, tool)
    env = shim.env()
    # The tools start helpers (parsl's interchange.py, its workers) from their own bin/.
    env["PATH"] = (
        f"{shim.dir}{os.pathsep}{Path(args.other_python).parent}{os.pathsep}{os.environ['PATH']}"
    )
    watch = JobWatch(tag)
    watch.start()
    started = time.time()
    proc = subprocess.Popen(
        [args.other_python, __file__, "--child", tool, json.dumps(opts)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=run_dir,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        events = []
        for line in proc.stdout:
            if line.startswith("{"):
                events.append(json.loads(line))
                if events[-1]["event"] == "done":
                    break
        if not events or events[-1]["event"] != "done":
            return {"skipped": f"{tool} did not finish the burst (see {run_dir})"}
        done = events[-1]
        release = watch.gone_after(done["all_done"], timeout=300)
        return _result(
            watch,
            shim,
            started,
            done["burst"],
            done["first_done"],
            done["all_done"],
            release,
            args.max_jobs,
        )
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        watch.stop.set()
        leftovers = sorted(watch.seen)
        if leftovers:
            subprocess.run(
                [shutil.which("scancel") or "scancel", *leftovers], check=False, capture_output=True
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("TOOL", "OPTIONS"), help=argparse.SUPPRESS)
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--task", type=float, default=0.5)
    parser.add_argument("--idle", type=float, default=30)
    parser.add_argument("--max-jobs", type=int, default=4)
    parser.add_argument("--idle-timeout", type=float, default=5)
    parser.add_argument("--interval", type=float, default=60)
    parser.add_argument("--only", default=",".join(TOOLS))
    parser.add_argument(
        "--other-python", default=os.environ.get("ZHPC_BENCH_OTHER_PYTHON") or sys.executable
    )
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], json.loads(args.child[1]))
    results: dict[str, Any] = {
        "n": args.n,
        "task_s": args.task,
        "idle_s": args.idle,
        "max_jobs": args.max_jobs,
        "idle_timeout_s": args.idle_timeout,
    }
    with tempfile.TemporaryDirectory(prefix="zhpc-bench-scaler-") as tmp:
        for tool in args.only.split(","):
            root = Path(tmp) / tool
            root.mkdir()
            try:
                results[tool] = (
                    run_zhpc(args, root) if tool == "zhpc" else run_other(tool, args, root)
                )
            except Exception as exc:  # one tool failing must not lose the others' figures
                results[tool] = {"skipped": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

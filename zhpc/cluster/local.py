"""Jobs as detached processes on this machine: the embedded default backend.

Each job (each array task) gets a directory under ``<job workdir>/local/``
holding its spec, its state and the pid of a small supervising process
(``python -m zhpc.cluster.local TASKDIR``). The supervisor detaches from the
submitter (own session, re-parented to init), runs the command in its own
process group, enforces the time limit like Slurm (optional early signal,
SIGTERM at the limit, SIGKILL ``kill_wait`` seconds later) and records the
final state. Because everything is in files, any other zhpc process can list
and cancel these jobs. Pids are stored with the process start time so that a
recycled pid is never mistaken for a job. A job learns who it is and when it
ends from ``ZHPC_JOB_*`` variables (read by :meth:`LocalCluster.job_identity`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zhpc import procinfo
from zhpc.atomic import write_atomic
from zhpc.cluster.base import DEFAULT_NAME_PREFIX, Cluster, JobIdentity, JobInfo, JobSpec, JobState
from zhpc.errors import ClusterError

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.config import ClusterConfig

log = logging.getLogger(__name__)

_SPEC = "spec.json"
_STATE = "state.json"
_PID = "pid"
_CANCEL = "cancel"
_TASK_DIR = re.compile(r"(\d+)(?:_(\d+))?\Z")
#: How long submit() waits for a supervisor to detach.
_SPAWN_TIMEOUT = 30.0

# What a local job finds in its environment (like Slurm's SLURM_JOB_ID...).
JOB_ID = "ZHPC_JOB_ID"
JOB_NAME = "ZHPC_JOB_NAME"
ARRAY_JOB_ID = "ZHPC_ARRAY_JOB_ID"
ARRAY_TASK_ID = "ZHPC_ARRAY_TASK_ID"
#: Epoch seconds (``%.3f``) when the supervisor will stop the job; unset without a time limit.
JOB_END_TIME = "ZHPC_JOB_END_TIME"


def _alive(pid: int | None, start_time: int | None) -> bool:
    return pid is not None and start_time is not None and procinfo.start_time(pid) == start_time


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` atomically, so a reader never sees half a file."""
    write_atomic(path, json.dumps(data))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _expand(pattern: str, *, job_id: str, array_id: str, task: int | None, name: str) -> str:
    """Slurm's filename patterns %j, %A, %a, %x and %% in output/error paths."""
    values = {"j": job_id, "A": array_id, "a": "" if task is None else str(task), "x": name}
    return re.sub(r"%([jAax%])", lambda m: values.get(m.group(1), "%"), pattern)


class LocalCluster(Cluster):
    """Detached local processes, tracked under ``root`` (shared by all zhpc processes)."""

    name = "local"

    def __init__(self, root: Path, *, kill_wait: float = 5.0) -> None:
        self.root = Path(root).expanduser()
        self.kill_wait = kill_wait

    @classmethod
    def from_config(cls, config: ClusterConfig) -> LocalCluster:
        return cls(config.job_workdir() / "local")

    @classmethod
    def job_identity(cls, environ: Mapping[str, str]) -> JobIdentity | None:
        job_id = environ.get(JOB_ID)
        if not job_id:
            return None
        task = environ.get(ARRAY_TASK_ID)
        return JobIdentity(
            scheduler="local",
            job_id=job_id,
            array_job_id=environ.get(ARRAY_JOB_ID),
            array_task_id=int(task) if task and task.isdigit() else None,
            node=os.uname().nodename,
            job_name=environ.get(JOB_NAME),
        )

    @classmethod
    def job_end_time(cls, job: JobIdentity, environ: Mapping[str, str]) -> float | None:
        value = environ.get(JOB_END_TIME)
        try:
            return float(value) if value else None
        except ValueError:
            return None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _next_id(self) -> int:
        counter = self.root / ".next-id"
        with self._locked():
            try:
                job_id = int(counter.read_text().strip() or 1)
            except (OSError, ValueError):
                job_id = 1
            counter.write_text(str(job_id + 1))
        return job_id

    def submit(self, spec: JobSpec) -> str:
        job_id = str(self._next_id())
        tasks: list[int | None] = list(range(spec.array)) if spec.array else [None]
        limit = spec.time_limit_seconds
        for task in tasks:
            task_id = job_id if task is None else f"{job_id}_{task}"
            task_dir = self.root / task_id
            task_dir.mkdir(parents=True)
            workdir = Path(spec.workdir or Path.cwd()).expanduser()
            expand = {"job_id": task_id, "array_id": job_id, "task": task, "name": spec.name}
            output = _expand(str(spec.output), **expand) if spec.output else None
            error = _expand(str(spec.error), **expand) if spec.error else None
            argv = list(spec.argv) if spec.argv is not None else None
            if spec.script is not None:
                script = task_dir / "script"
                script.write_text(spec.script)
                script.chmod(0o700)
                argv = [str(script)]
            env = dict(spec.env)
            env.update({JOB_ID: task_id, JOB_NAME: spec.name})
            if task is not None:
                env.update({ARRAY_JOB_ID: job_id, ARRAY_TASK_ID: str(task)})
            _write_json(
                task_dir / _SPEC,
                {
                    "job_id": task_id,
                    "array_job_id": job_id if task is not None else None,
                    "array_task_id": task,
                    "name": spec.name,
                    "comment": spec.comment,
                    "argv": argv,
                    "env": env,
                    "workdir": str(workdir),
                    "output": output or str(task_dir / "output.log"),
                    "error": error,
                    "time_limit": limit,
                    "signal": list(spec.signal_parts() or ()) or None,
                    "signal_batch_only": bool(spec.signal and spec.signal.startswith("B")),
                    "kill_wait": self.kill_wait,
                },
            )
            _write_json(task_dir / _STATE, {"state": "PENDING", "reason": "Starting"})
            self._spawn(task_dir)
        log.info("started local job %s (%s, %d task(s))", job_id, spec.name, len(tasks))
        return job_id

    def _spawn(self, task_dir: Path) -> None:
        """Start the supervisor and wait until it has detached and recorded its pid."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "zhpc.cluster.local", str(task_dir)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(task_dir / "supervisor.log", "ab"),  # noqa: SIM115 - closed below
            start_new_session=True,
            close_fds=True,
        )
        proc.stderr = None
        try:
            code = proc.wait(timeout=_SPAWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = -1
        if code != 0:
            raise ClusterError(
                f"local job supervisor failed to start (see {task_dir / 'supervisor.log'})"
            )

    def _task_dirs(self) -> list[tuple[Path, int, int]]:
        found = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.root):
                match = _TASK_DIR.match(entry.name)
                if match and entry.is_dir():
                    found.append((Path(entry.path), int(match[1]), int(match[2] or -1)))
        return sorted(found, key=lambda item: (item[1], item[2]))

    def _info(self, task_dir: Path) -> JobInfo | None:
        spec = _read_json(task_dir / _SPEC)
        state = _read_json(task_dir / _STATE)
        if spec is None or state is None:
            return None  # being created
        raw = state.get("state", "UNKNOWN")
        reason = state.get("reason", "")
        if raw in ("PENDING", "RUNNING"):
            pid_info = _read_json(task_dir / _PID) or {}
            if not _alive(pid_info.get("pid"), pid_info.get("start_time")):
                # Re-read: the supervisor may have finished between the two reads.
                state = _read_json(task_dir / _STATE) or state
                raw = state.get("state", "UNKNOWN")
                if raw in ("PENDING", "RUNNING") and pid_info:
                    raw, reason = "NODE_FAIL", "supervisor process gone"
        stamp = state.get("start_time")
        end = state.get("end_time")
        return JobInfo(
            job_id=spec["job_id"],
            name=spec["name"],
            state=JobState[raw] if raw in JobState.__members__ else JobState.UNKNOWN,
            scheduler_state=raw,
            reason=reason,
            array_job_id=spec.get("array_job_id"),
            array_task_id=spec.get("array_task_id"),
            node=os.uname().nodename,
            exit_code=state.get("exit_code"),
            signal=state.get("signal"),
            comment=spec.get("comment"),
            start_time=datetime.fromtimestamp(stamp).astimezone() if stamp else None,
            end_time=datetime.fromtimestamp(end).astimezone() if end else None,
        )

    def jobs(self, name_prefix: str = DEFAULT_NAME_PREFIX) -> list[JobInfo]:
        infos = (self._info(task_dir) for task_dir, _, _ in self._task_dirs())
        return [info for info in infos if info is not None and info.name.startswith(name_prefix)]

    def cancel(self, job_ids: Iterable[str], *, pending_only: bool = False) -> None:
        wanted = {str(job_id) for job_id in job_ids}
        bad = sorted(job_id for job_id in wanted if not _TASK_DIR.match(job_id))
        if bad:
            raise ClusterError(f"not a local job id: {', '.join(bad)}")
        for task_dir, array_id, task in self._task_dirs():
            if task_dir.name not in wanted and not (task >= 0 and str(array_id) in wanted):
                continue
            if pending_only:
                # The supervisor reads the cancel file before it starts the task.
                if (_read_json(task_dir / _STATE) or {}).get("state") == "PENDING":
                    (task_dir / _CANCEL).touch()
                continue
            (task_dir / _CANCEL).touch()
            pid_info = _read_json(task_dir / _PID) or {}
            if _alive(pid_info.get("pid"), pid_info.get("start_time")):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid_info["pid"], signal.SIGTERM)
                continue
            # Supervisor gone (NODE_FAIL): its orphaned command must not run on.
            state = _read_json(task_dir / _STATE) or {}
            if _alive(state.get("child_pid"), state.get("child_start_time")):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(state["child_pid"], signal.SIGKILL)


# -- the supervisor (runs as ``python -m zhpc.cluster.local TASKDIR``) ---------------


class _Supervisor:
    """Runs one task: start, early signal, time limit, cancel, final state."""

    def __init__(self, task_dir: Path) -> None:
        self.task_dir = task_dir
        spec = _read_json(task_dir / _SPEC)
        if spec is None:
            raise SystemExit(f"no readable {_SPEC} in {task_dir}")
        self.spec = spec
        #: Set by the signal handler. A plain attribute, not a threading.Event: a handler
        #: that takes a lock deadlocks when a second signal lands while it holds it.
        self.cancelled = False
        self._cancel_file = task_dir / _CANCEL

    def _on_signal(self, signum: int, frame: object) -> None:
        self.cancelled = True

    def _cancel_requested(self) -> bool:
        """A signal came, or the cancel file is there (recorded before the signal is sent)."""
        return self.cancelled or self._cancel_file.exists()

    def _state(self, state: str, reason: str = "", **extra: Any) -> None:
        _write_json(self.task_dir / _STATE, {"state": state, "reason": reason, **extra})

    def _signal_group(self, child: subprocess.Popen[bytes], signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signum)

    def run(self) -> int:
        spec = self.spec
        if self._cancel_requested():
            self._state("CANCELLED", "cancelled before start", end_time=time.time())
            return 0
        start = time.time()
        limit = spec["time_limit"]
        deadline = start + limit if limit else None
        env = dict(os.environ)
        env.update(spec["env"])
        if deadline is not None:
            env[JOB_END_TIME] = f"{deadline:.3f}"
        output = open(spec["output"], "ab")  # noqa: SIM115 - handed to the child
        error = open(spec["error"], "ab") if spec["error"] else subprocess.STDOUT  # noqa: SIM115
        try:
            child = subprocess.Popen(
                spec["argv"],
                cwd=spec["workdir"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=error,
                process_group=0,
            )
        except OSError as exc:
            self._state("FAILED", f"cannot start: {exc}", exit_code=127, end_time=time.time())
            return 0
        finally:
            output.close()
            if error is not subprocess.STDOUT:
                error.close()
        self._state(
            "RUNNING",
            start_time=start,
            child_pid=child.pid,
            child_start_time=procinfo.start_time(child.pid),
        )
        returncode, outcome, reason = self._watch(child, deadline)
        final = {"start_time": start, "end_time": time.time()}
        if returncode < 0:
            final.update(signal=-returncode, exit_code=128 - returncode)
        else:
            final.update(exit_code=returncode)
        if outcome is None:
            outcome = "COMPLETED" if returncode == 0 else "FAILED"
            reason = "" if returncode == 0 else "NonZeroExitCode"
        self._state(outcome, reason, **final)
        return 0

    def _watch(
        self, child: subprocess.Popen[bytes], deadline: float | None
    ) -> tuple[int, str | None, str]:
        """Wait for the child, applying early signal, time limit and cancellation."""
        early = self.spec["signal"]
        early_at = deadline - float(early[1]) if early and deadline else None
        kill_at: float | None = None
        outcome: str | None = None
        reason = ""
        while True:
            now = time.time()
            if outcome is None and self._cancel_requested():
                outcome, reason = "CANCELLED", "cancelled"
            elif outcome is None and deadline is not None and now >= deadline:
                outcome, reason = "TIMEOUT", "TimeLimit"
            if outcome is not None and kill_at is None:
                self._signal_group(child, signal.SIGTERM)
                kill_at = now + float(self.spec["kill_wait"])
            if early_at is not None and now >= early_at:
                name = early[0]
                signum = int(name) if name.isdigit() else signal.Signals[f"SIG{name}"]
                if self.spec["signal_batch_only"]:
                    with contextlib.suppress(ProcessLookupError):
                        child.send_signal(signum)
                else:
                    self._signal_group(child, signum)
                early_at = None
            if kill_at is not None and now >= kill_at:
                self._signal_group(child, signal.SIGKILL)
                kill_at = float("inf")
            wake = [t for t in (deadline, early_at, kill_at) if t is not None and t > now]
            timeout = min([0.2, *(t - now for t in wake)])
            try:
                returncode = child.wait(timeout=max(timeout, 0.01))
            except subprocess.TimeoutExpired:
                continue
            # Like Slurm at the end of a job: nothing the job started outlives it.
            self._signal_group(child, signal.SIGKILL)
            return returncode, outcome, reason


def _supervise(task_dir: Path) -> int:
    """Detach (fork; the parent records the child's pid and exits), then supervise."""
    supervisor = _Supervisor(task_dir)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, supervisor._on_signal)  # inherited by the forked child
    pid = os.fork()
    if pid:
        start_time = procinfo.start_time(pid)
        _write_json(task_dir / _PID, {"pid": pid, "start_time": start_time})
        os._exit(0)
    return supervisor.run()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m zhpc.cluster.local TASKDIR")
    sys.exit(_supervise(Path(sys.argv[1])))

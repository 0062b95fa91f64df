"""Grid Engine through DRMAA 1.0 (PyPI ``drmaa``, Debian's ``libdrmaa``).

Submitting and controlling jobs goes through DRMAA: one ``runBulkJobs`` for an
array, ``control`` to hold, release and terminate. Debian's ``libdrmaa`` can
only be loaded by a process started with ``libjemalloc`` preloaded (dlopen
fails with "cannot allocate memory in static TLS block"), so every DRMAA call
runs in a short-lived ``python -m zhpc.cluster.drmaa`` started with
``LD_PRELOAD`` (the same file holds that side, below): zhpc itself never loads
libdrmaa, and nothing else of zhpc needs starting differently.

DRMAA cannot list jobs, so one ``qstat -xml`` lists the live ones and Grid
Engine's accounting file (read incrementally) the finished ones, both parsed by
:mod:`zhpc.cluster.gridengine`: one scheduler call per listing. Accounting
cannot tell a cancelled job from one killed by a signal, so this backend's
cancels are recorded in ``<job workdir>/drmaa/``.

Grid Engine numbers array tasks from 1; zhpc's ids and ``%a`` in output paths
differ: ids are zhpc's (``ID_0`` is Grid Engine's task 1), output file names
keep Grid Engine's ``$TASK_ID``. The time limit is ``h_rt`` (SIGKILL at the
limit) and the warning before it ``s_rt`` (SIGUSR1), which feeds the same
drain path as Slurm's ``--signal=B:USR1@N``. Inside a job, ``JOB_ID``,
``SGE_TASK_ID`` and the end time the batch script exports say who it is.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zhpc.cluster.base import DEFAULT_NAME_PREFIX, Cluster, JobIdentity, JobInfo, JobSpec, JobState
from zhpc.cluster.gridengine import parse_accounting_line, parse_qstat, zhpc_id
from zhpc.errors import ClusterError

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.config import ClusterConfig

log = logging.getLogger(__name__)

DEFAULT_LIBRARY = Path("/usr/lib/gridengine-drmaa/lib/libdrmaa.so.1.0")
JEMALLOC = Path("/lib/x86_64-linux-gnu/libjemalloc.so.2")
DEFAULT_SGE_ROOT = "/var/lib/gridengine"
#: Epoch seconds when Grid Engine will kill the job; exported by the batch script.
END_TIME = "ZHPC_GE_END_TIME"
_JOB_ID = re.compile(r"(\d+)(?:_(\d+))?\Z")
_QUEUE = re.compile(r"[\w.@*-]+\Z")
_BAD_NAME = re.compile(r"[/:@\\*?]")
_MEMORY = re.compile(r"\d+[KMGT]?\Z", re.IGNORECASE)
#: Variables never passed on to a job: Grid Engine's own, and another scheduler's job's.
_NOT_EXPORTED = re.compile(r"(SGE_|SLURM_|SLURMD_|JOB_ID\Z|JOB_NAME\Z|LD_PRELOAD\Z)")
#: How much of a large accounting file the first listing reads (its end: the newest jobs).
_ACCOUNTING_TAIL = 16 * 1024 * 1024


def job_template(
    spec: JobSpec,
    script: Path,
    environ: Mapping[str, str],
    queue: str | None,
    native_args: Sequence[str] = (),
) -> dict[str, Any]:
    """The DRMAA job template attributes (and ``bulk``/``hold``) for ``spec``."""  # fmt: skip
    import shlex

    if _BAD_NAME.search(spec.name):
        raise ClusterError(f"job name {spec.name!r}: Grid Engine refuses / : @ \\ * ?")
    native = ["-b", "y", "-shell", "no"]
    queue = spec.partition or queue
    if queue is not None:
        if not _QUEUE.match(queue):
            raise ClusterError(f"bad Grid Engine queue {queue!r}")
        native += ["-q", queue]
    if spec.account:
        native += ["-A", spec.account]
    if spec.cpus not in (None, 1):
        raise ClusterError("the drmaa backend runs one slot per job: for cpus > 1 set a "
                           "parallel environment in cluster.drmaa.native_args")  # fmt: skip
    resources = []
    if spec.memory:
        if not _MEMORY.match(spec.memory):
            raise ClusterError(f"bad memory request {spec.memory!r}: use e.g. 512M or 2G")
        resources.append(f"h_vmem={spec.memory}")
    limit = spec.time_limit_seconds
    if limit is not None:
        resources.append(f"h_rt={int(-(-limit // 1))}")
    warning = spec.signal_parts()
    if warning is not None:
        if warning[0] not in ("USR1", "10"):
            raise ClusterError(f"Grid Engine warns with SIGUSR1 only, not {warning[0]}")
        if limit is None:
            raise ClusterError("a warning signal needs a time limit")
        resources.append(f"s_rt={max(1, int(limit - warning[1]))}")
    if resources:
        native += ["-l", ",".join(resources)]
    hold = False
    for arg in spec.extra_args:
        if arg != "--hold":
            raise ClusterError(f"drmaa backend: unsupported argument {arg!r} (only --hold; "
                               "use cluster.drmaa.native_args for qsub options)")  # fmt: skip
        hold = True
    workdir = Path(spec.workdir or Path.cwd()).expanduser()

    def path(value: Path | str) -> str:
        mapped = {"j": "$JOB_ID", "A": "$JOB_ID", "a": "$TASK_ID", "x": "$JOB_NAME", "%": "%"}
        return ":" + re.sub(r"%([jAax%])", lambda m: mapped[m.group(1)], str(value))

    output = spec.output or workdir / f"{spec.name}.o$JOB_ID"
    return {
        "remoteCommand": str(script),
        "args": [],
        "jobName": spec.name,
        "workingDirectory": str(workdir),
        "outputPath": path(output),
        "errorPath": path(spec.error) if spec.error else None,
        "joinFiles": spec.error is None,
        "jobEnvironment": {k: v for k, v in environ.items() if not _NOT_EXPORTED.match(k)},
        "nativeSpecification": shlex.join([*native, *native_args]),
        "bulk": spec.array,
        "hold": hold,
    }


def job_script(spec: JobSpec) -> str:
    """The batch script: Slurm's (argv quoted and exec'd), plus the end-time export."""
    from zhpc.cluster.slurm import batch_script

    first, _, rest = batch_script(spec).partition("\n")
    limit = spec.time_limit_seconds
    if limit is None:
        return f"{first}\n{rest}"
    return f"{first}\nexport {END_TIME}=$(( $(date +%s) + {int(-(-limit // 1))} ))\n{rest}"


class DRMAACluster(Cluster):
    """Grid Engine: DRMAA for submit and control, qstat and accounting for listings."""

    name = "drmaa"

    def __init__(
        self,
        root: Path | None = None,
        *,
        library: Path | None = None,
        queue: str | None = None,
        native_args: Sequence[str] = (),
        command_timeout: float = 60.0,
        cache_seconds: float = 2.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._environ = dict(os.environ if environ is None else environ)
        if root is None:
            from zhpc.config import zhpc_home

            root = zhpc_home() / "jobs" / "drmaa"
        self.root = Path(root).expanduser()
        self.library = library or Path(self._environ.get("DRMAA_LIBRARY_PATH", DEFAULT_LIBRARY))
        self.queue = queue
        self.native_args = tuple(native_args)
        self.command_timeout = command_timeout
        self.cache_seconds = cache_seconds
        self.user = getpass.getuser()
        sge_root = self._environ.get("SGE_ROOT", DEFAULT_SGE_ROOT)
        cell = self._environ.get("SGE_CELL", "default")
        self._sge = {"SGE_ROOT": sge_root, "SGE_CELL": cell}
        self._accounting = Path(sge_root, cell, "common", "accounting")
        self._offset: int | None = None
        self._finished: dict[str, JobInfo] = {}
        self._cache: tuple[float, list[JobInfo]] | None = None
        self._lock = threading.Lock()
        #: Scheduler calls made, by program (``drmaa`` for a DRMAA session); for tests and bench.
        self.calls: dict[str, int] = {}

    @classmethod
    def from_config(cls, config: ClusterConfig) -> DRMAACluster:
        drmaa = config.drmaa
        return cls(
            config.job_workdir() / "drmaa",
            library=drmaa.library,
            queue=drmaa.queue or config.partition,
            native_args=drmaa.native_args,
            command_timeout=config.command_timeout,
        )

    # -- inside a job ------------------------------------------------------------

    @classmethod
    def job_identity(cls, environ: Mapping[str, str]) -> JobIdentity | None:
        job = environ.get("JOB_ID", "")
        if not job.isdigit():
            return None
        task = environ.get("SGE_TASK_ID", "")
        number = int(task) if task.isdigit() else None
        return JobIdentity(
            scheduler="gridengine",
            job_id=zhpc_id(job, number),
            array_job_id=job if number else None,
            array_task_id=number - 1 if number else None,
            restart_count=1 if environ.get("RESTARTED") == "1" else 0,
            node=environ.get("HOSTNAME") or os.uname().nodename,
            job_name=environ.get("JOB_NAME"),
        )

    @classmethod
    def job_end_time(cls, job: JobIdentity, environ: Mapping[str, str]) -> float | None:
        value = environ.get(END_TIME, "")
        return float(value) if value.isdigit() else None

    # -- the DRMAA side, in a child process --------------------------------------

    def _session(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run ``request`` in ``python -m zhpc.cluster.drmaa`` (libdrmaa loaded there)."""
        if not self.library.is_file():
            raise ClusterError(f"libdrmaa not found at {self.library} (cluster.drmaa.library; "
                               "install gridengine-drmaa1.0)")  # fmt: skip
        env = {**self._environ, **self._sge, "DRMAA_LIBRARY_PATH": str(self.library)}
        if JEMALLOC.is_file() and str(JEMALLOC) not in env.get("LD_PRELOAD", ""):
            env["LD_PRELOAD"] = " ".join(filter(None, [str(JEMALLOC), env.get("LD_PRELOAD")]))
        self.calls["drmaa"] = self.calls.get("drmaa", 0) + 1
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "zhpc.cluster.drmaa"], input=json.dumps(request),
                capture_output=True, text=True, env=env, timeout=self.command_timeout,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise ClusterError(f"DRMAA did not answer within {self.command_timeout:g} s") from None
        lines = proc.stdout.strip().splitlines()
        try:
            answer = json.loads(lines[-1]) if lines else {}
        except ValueError:
            answer = {}
        if "error" in answer or proc.returncode != 0 or not answer:
            detail = answer.get("error") or (proc.stderr.strip().splitlines() or ["no answer"])[-1]
            raise ClusterError(f"DRMAA: {detail[:300]}")
        return answer

    # -- Cluster -----------------------------------------------------------------

    def submit(self, spec: JobSpec) -> str:
        scripts = self.root / "scripts"
        scripts.mkdir(parents=True, exist_ok=True)
        script = scripts / f"{spec.name}-{uuid.uuid4().hex[:12]}.sh"
        template = job_template(spec, script, self._environ, self.queue, self.native_args)
        script.write_text(job_script(spec))
        script.chmod(0o700)
        ids = self._session({"op": "submit", "template": template})["ids"]
        job_id = str(ids[0]).split(".", 1)[0]
        self._cache = None
        log.info("submitted Grid Engine job %s (%s, %d task(s))", job_id, spec.name, len(ids))
        return job_id

    def _cancelled(self) -> set[str]:
        with contextlib.suppress(OSError):
            return set((self.root / "cancelled").read_text().split())
        return set()

    def _read_accounting(self) -> None:
        """Add the accounting lines written since the last listing to ``_finished``."""
        try:
            size = self._accounting.stat().st_size
        except FileNotFoundError:
            return
        partial = False
        if self._offset is None or size < self._offset:  # first read, or a new file
            self._offset, self._finished = max(0, size - _ACCOUNTING_TAIL), {}
            partial = self._offset > 0
        cancelled = self._cancelled()
        with open(self._accounting, "rb") as file:
            file.seek(self._offset)
            if partial:
                file.readline()  # read from the middle: the first line is cut
                self._offset = file.tell()
            while line := file.readline():
                if not line.endswith(b"\n"):
                    break  # being written: read it next time
                self._offset = file.tell()
                parsed = parse_accounting_line(line.decode("utf-8", "replace"), cancelled)
                if parsed is not None and parsed[0] == self.user:
                    self._finished[parsed[1].job_id] = parsed[1]

    def jobs(self, name_prefix: str = DEFAULT_NAME_PREFIX) -> list[JobInfo]:
        with self._lock:
            now = time.monotonic()
            if self._cache is None or now - self._cache[0] > self.cache_seconds:
                self.calls["qstat"] = self.calls.get("qstat", 0) + 1
                try:
                    proc = subprocess.run(["qstat", "-xml", "-u", self.user], capture_output=True,
                                          text=True, timeout=self.command_timeout,
                                          env={**self._environ, **self._sge})  # fmt: skip
                except FileNotFoundError:
                    raise ClusterError("qstat not found: install gridengine-client") from None
                except subprocess.TimeoutExpired:
                    raise ClusterError("qstat did not answer in time") from None
                if proc.returncode != 0:
                    message = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                    raise ClusterError(f"qstat failed: {message[:300]}")
                live = parse_qstat(proc.stdout)
                self._read_accounting()
                every = {**{j.job_id: j for j in live}, **self._finished}
                self._cache = (time.monotonic(), list(every.values()))
            found = self._cache[1]
        return sorted(
            (j for j in found if j.name.startswith(name_prefix)),
            key=lambda j: (int(j.array_job_id or j.job_id), j.array_task_id or 0),
        )

    def cancel(self, job_ids: Iterable[str], *, pending_only: bool = False) -> None:
        ids = [str(job_id) for job_id in job_ids]
        bad = [job_id for job_id in ids if not _JOB_ID.match(job_id)]
        if bad:
            raise ClusterError(f"not a Grid Engine job id: {', '.join(bad)}")
        if not ids:
            return
        targets = []
        if pending_only:
            # Hold first: a held job cannot start, so what the listing then shows pending
            # is cancelled; the release lets one that had started meanwhile run on.
            self._control(ids, "hold")
            self._cache = None
            pending = {j.job_id for j in self.jobs("") if j.state is JobState.PENDING}
            targets = [i for i in ids
                       if i in pending or any(p.startswith(f"{i}_") for p in pending)]  # fmt: skip
        else:
            targets = ids
        if targets:
            self.root.mkdir(parents=True, exist_ok=True)
            with open(self.root / "cancelled", "a") as record:
                record.write("".join(f"{job_id}\n" for job_id in targets))
            self._control(targets, "terminate")
        if pending_only:
            with contextlib.suppress(ClusterError):
                self._control([i for i in ids if i not in targets], "release")
        self._cache = None

    def _control(self, ids: list[str], action: str) -> None:
        if not ids:
            return
        drmaa_ids = []
        for job_id in ids:
            job, _, task = job_id.partition("_")
            drmaa_ids.append(f"{job}.{int(task) + 1}" if task else job)
        self._session({"op": "control", "action": action, "ids": drmaa_ids})


# -- the DRMAA side (runs as ``python -m zhpc.cluster.drmaa``, libjemalloc preloaded) ------


def _serve(request: dict[str, Any]) -> dict[str, Any]:
    import drmaa
    from drmaa.errors import DrmaaException, InvalidJobException

    actions = {"hold": drmaa.JobControlAction.HOLD, "release": drmaa.JobControlAction.RELEASE,
               "terminate": drmaa.JobControlAction.TERMINATE}  # fmt: skip
    try:
        with drmaa.Session() as session:
            if request["op"] == "submit":
                attributes = dict(request["template"])
                bulk, hold = attributes.pop("bulk"), attributes.pop("hold")
                template = session.createJobTemplate()
                for key, value in attributes.items():
                    if value is not None:
                        setattr(template, key, value)
                if hold:
                    template.jobSubmissionState = drmaa.JobSubmissionState.HOLD_STATE
                ids = (
                    session.runBulkJobs(template, 1, bulk, 1)
                    if bulk
                    else [session.runJob(template)]
                )
                session.deleteJobTemplate(template)
                return {"ids": ids}
            for job_id in request["ids"]:
                with contextlib.suppress(InvalidJobException):
                    session.control(job_id, actions[request["action"]])
            return {"ok": True}
    except DrmaaException as exc:
        return {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"}


if __name__ == "__main__":
    print(json.dumps(_serve(json.loads(sys.stdin.read()))))

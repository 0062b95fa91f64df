"""Slurm through its REST API (``slurmrestd``), for sites that allow no command-line access.

The same jobs as :mod:`zhpc.cluster.slurm` (the batch script is built by the
same function), sent as JSON to ``slurmrestd`` over HTTP (httpx) with JSON Web
Token authentication: every request carries ``X-SLURM-USER-NAME`` and
``X-SLURM-USER-TOKEN``. The token comes from a file that only its owner may
read (``cluster.slurmrestd.token_file``) or from ``SLURM_JWT``; it is never
logged nor put in an error message.

One ``GET /jobs`` serves a listing (cached for a couple of seconds, like
squeue in the CLI backend); pending array tasks, which Slurm keeps as one
record (``array_task_string`` ``0-99``), are expanded. Idempotent requests are
retried (tenacity) on connection failures, 5xx answers and Slurm's transient
errors; a submission only when it certainly never reached the server.

Slurm 22.05's OpenAPI v0.0.38 refuses the ``B:`` (batch shell only) form of
``signal``: the warning signal goes to the job's steps, and a service array
drains on its end time (``zhpc.jobenv``), which it watches anyway. Jobs run
under Slurm, so inside them the Slurm backend's job environment applies.
"""

from __future__ import annotations

import getpass
import logging
import os
import re
import signal as _signal
import stat
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zhpc.cluster.base import (
    DEFAULT_NAME_PREFIX,
    Cluster,
    JobInfo,
    JobSpec,
    JobState,
    time_limit_seconds,
)
from zhpc.cluster.slurm import batch_script, normalise_state
from zhpc.errors import ClusterError

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.config import ClusterConfig

log = logging.getLogger(__name__)

_JOB_ID = re.compile(r"\d+(?:_\d+)?\Z")
_MEMORY = re.compile(r"(\d+)([KMGT]?)B?\Z", re.IGNORECASE)
_MEMORY_MB = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}
#: Slurm error numbers that mean "try again": controller busy, unreachable, timed out.
_TRANSIENT_ERRORS = frozenset({1007, 1008, 1800, 5004, 5005, 6006})
_TRANSIENT_TEXT = ("unable to contact slurm controller", "socket timed out", "try again")
#: ``scontrol``-style errors that only mean the job is gone: fine when cancelling.
_GONE = (2017, 2021)  # invalid job id, job already completing or completed
#: Variables never passed on to a job: the token (SLURM_JWT), and this process's own job's.
_NOT_EXPORTED = re.compile(r"SLURMD?_")
#: sbatch-style extra arguments that have a job property (and what it is).
_FLAGS = {"--hold": ("hold", True), "--requeue": ("requeue", True),
          "--no-requeue": ("requeue", False)}  # fmt: skip
_OPTIONS = {"--qos": "qos", "--reservation": "reservation", "--constraint": "constraints",
            "--nice": "nice", "--dependency": "dependency", "--exclusive": "exclusive"}  # fmt: skip


def _httpx():  # type: ignore[no-untyped-def]
    try:
        import httpx
    except ImportError:
        raise ClusterError(
            "the slurmrestd cluster backend needs httpx: pip install 'zhpc[slurmrestd]'"
        ) from None
    return httpx


class _Transient(ClusterError):
    """slurmrestd or Slurm answered with an error that usually goes away."""


def read_token(token_file: Path | None, environ: Mapping[str, str] | None = None) -> str:
    """The JWT from ``token_file`` (owner-only permissions) or ``SLURM_JWT``."""
    environ = os.environ if environ is None else environ
    if token_file is not None:
        path = token_file.expanduser()
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ClusterError(f"cluster.slurmrestd.token_file: cannot read {path}: "
                               f"{exc.strerror}") from None  # fmt: skip
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ClusterError(
                f"cluster.slurmrestd.token_file: {path} is readable by others; chmod 600 it"
            )
        token = text.strip().removeprefix("SLURM_JWT=")
    else:
        token = environ.get("SLURM_JWT", "").strip()
    if not token or any(c.isspace() for c in token):
        where = f"token file {token_file}" if token_file else "SLURM_JWT"
        raise ClusterError(f"slurmrestd: no usable token in {where} (make one: scontrol token)")
    return token


def memory_mb(memory: str) -> int:
    """Slurm's ``--mem`` value (``4000``, ``1G``, ``512M``) in megabytes."""
    match = _MEMORY.match(memory.strip())
    if not match:
        raise ClusterError(f"bad memory request {memory!r}: use e.g. 4000, 512M or 2G")
    return max(1, int(-(-int(match[1]) * _MEMORY_MB[match[2].upper()] // 1)))


def rest_signal(spec: JobSpec) -> str | None:
    """``signal`` as v0.0.38 accepts it: ``NAME@SECONDS``, without ``B:``."""
    parts = spec.signal_parts()
    if parts is None:
        return None
    name, seconds = parts
    if name.isdigit():
        name = _signal.Signals(int(name)).name.removeprefix("SIG")
    return f"{name}@{int(seconds)}"


def extra_properties(args: Sequence[str]) -> dict[str, object]:
    """The job properties that sbatch-style ``args`` stand for; ClusterError for any other."""
    properties: dict[str, object] = {}
    for arg in args:
        option, has_value, value = arg.partition("=")
        if option in _FLAGS and not has_value:
            key, flag = _FLAGS[option]
            properties[key] = flag
        elif option in _OPTIONS and (has_value or option == "--exclusive"):
            properties[_OPTIONS[option]] = int(value) if option == "--nice" else value or "user"
        else:
            known = ", ".join(sorted([*_FLAGS, *_OPTIONS]))
            raise ClusterError(f"slurmrestd backend: unsupported sbatch argument {arg!r} "
                               f"(supported: {known})")  # fmt: skip
    return properties


def job_properties(
    spec: JobSpec, environ: Mapping[str, str], site_args: Sequence[str] = ()
) -> dict[str, object]:
    """The ``job`` object of a v0.0.38 submission for ``spec``."""
    environment = {k: v for k, v in environ.items() if not _NOT_EXPORTED.match(k)}
    job: dict[str, object] = {
        "name": spec.name,
        "current_working_directory": str(Path(spec.workdir or Path.cwd()).expanduser()),
        "environment": environment,
    }
    if spec.time_limit is not None:
        job["time_limit"] = int(-(-time_limit_seconds(spec.time_limit) // 60))
    optional: dict[str, object] = {
        "partition": spec.partition,
        "account": spec.account,
        "cpus_per_task": spec.cpus,
        "memory_per_node": memory_mb(spec.memory) if spec.memory else None,
        "array": f"0-{spec.array - 1}" if spec.array else None,
        "comment": spec.comment,
        "standard_output": str(spec.output) if spec.output else None,
        "standard_error": str(spec.error) if spec.error else None,
        "signal": rest_signal(spec),
    }
    job.update({key: value for key, value in optional.items() if value is not None})
    job.update(extra_properties([*site_args, *spec.extra_args]))
    return job


def expand_tasks(expression: str) -> Iterator[int]:
    """Task ids in Slurm's ``array_task_string`` (``0-3,7``, ``0-99:2%4``)."""
    for part in expression.split("%", 1)[0].split(","):
        if not part:
            continue
        bounds, _, step = part.partition(":")
        first, _, last = bounds.partition("-")
        yield from range(int(first), int(last or first) + 1, int(step or 1))


def _time(epoch: object) -> datetime | None:
    return datetime.fromtimestamp(epoch).astimezone() if isinstance(epoch, int) and epoch else None


def _info(record: Mapping[str, Any], task: int | None, array_id: str | None) -> JobInfo:
    state = str(record.get("job_state", ""))
    reason = str(record.get("state_reason", ""))
    status = record.get("exit_code")
    exit_code = signal = None
    if isinstance(status, int) and state not in ("PENDING", "RUNNING"):
        signal = (status & 0x7F) or None
        exit_code = 128 + signal if signal else (status >> 8) & 0xFF
    job_id = f"{array_id}_{task}" if task is not None else str(record.get("job_id"))
    return JobInfo(
        job_id=job_id,
        name=str(record.get("name", "")),
        state=normalise_state(state),
        scheduler_state=state,
        reason="" if reason == "None" else reason,
        array_job_id=array_id if task is not None else None,
        array_task_id=task,
        node=record.get("nodes") or None,
        exit_code=exit_code,
        signal=signal,
        comment=record.get("comment") or None,
        start_time=_time(record.get("start_time")),
        end_time=_time(record.get("end_time")),
        restart_count=int(record.get("restart_cnt") or 0),
    )


def parse_jobs(records: Iterable[Mapping[str, Any]], user: str | None = None) -> list[JobInfo]:
    """JobInfo for each job or array task in a ``GET /jobs`` answer (of ``user``, if given)."""
    jobs = []
    for record in records:
        if user is not None and record.get("user_name") != user:
            continue
        array_id = record.get("array_job_id") or None
        task = record.get("array_task_id")
        pending = record.get("array_task_string") or ""
        if array_id and task is None and pending:
            jobs += [_info(record, t, str(array_id)) for t in expand_tasks(pending)]
        else:
            jobs.append(_info(record, task, str(array_id) if array_id else None))
    return sorted(jobs, key=lambda j: (int(j.array_job_id or j.job_id.split("_")[0]),
                                       j.array_task_id or 0))  # fmt: skip


class SlurmRestCluster(Cluster):
    """Slurm via slurmrestd: submit, list and cancel over HTTP with a JWT."""

    name = "slurmrestd"

    def __init__(
        self,
        url: str = "http://127.0.0.1:6820",
        *,
        user: str | None = None,
        token_file: Path | None = None,
        api_version: str = "v0.0.38",
        partition: str | None = None,
        account: str | None = None,
        extra_sbatch_args: Sequence[str] = (),
        timeout: float = 30.0,
        attempts: int = 3,
        cache_seconds: float = 2.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        httpx = _httpx()
        self.url = url.rstrip("/")
        self.user = user or getpass.getuser()
        self.partition = partition
        self.account = account
        self.extra_sbatch_args = tuple(extra_sbatch_args)
        extra_properties(self.extra_sbatch_args)  # refuse what cannot be sent, now
        self.attempts = attempts
        self.cache_seconds = cache_seconds
        self._environ = dict(os.environ if environ is None else environ)
        token = read_token(token_file, self._environ)
        self._base = f"/slurm/{api_version}"
        self._client = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            headers={"X-SLURM-USER-NAME": self.user, "X-SLURM-USER-TOKEN": token},
        )
        self._cache: tuple[float, list[JobInfo]] | None = None
        self._lock = threading.Lock()
        #: Requests made, by ``METHOD path-kind``; lets tests and benchmarks count them.
        self.calls: dict[str, int] = {}

    @classmethod
    def from_config(cls, config: ClusterConfig) -> SlurmRestCluster:
        rest = config.slurmrestd
        return cls(
            rest.url,
            user=rest.user,
            token_file=rest.token_file,
            api_version=rest.api_version,
            partition=config.partition,
            account=config.account,
            extra_sbatch_args=config.extra_sbatch_args,
            timeout=config.command_timeout,
        )

    # -- HTTP --------------------------------------------------------------------

    def _request_once(self, method: str, path: str, body: object | None) -> dict[str, Any]:
        httpx = _httpx()
        kind = f"{method} {path.split('/', 2)[1]}"
        self.calls[kind] = self.calls.get(kind, 0) + 1
        try:
            response = self._client.request(method, self._base + path, json=body)
        except httpx.TransportError as exc:
            raise _Transient(f"slurmrestd at {self.url}: {type(exc).__name__}: {exc}") from None
        if response.status_code in (401, 403):
            raise ClusterError(
                f"slurmrestd at {self.url} refused the token for user "
                f"{self.user!r} (expired? make one with scontrol token)"
            )
        if response.status_code in (502, 503, 504):
            raise _Transient(f"slurmrestd at {self.url}: HTTP {response.status_code}")
        try:
            answer = response.json()
        except ValueError:
            text = response.text.strip().splitlines()[:1]
            raise ClusterError(
                f"slurmrestd at {self.url}: HTTP {response.status_code}: "
                f"{text[0][:200] if text else 'no JSON answer'}"
            ) from None
        errors = [e for e in answer.get("errors") or [] if isinstance(e, dict)]
        answer["errors"] = errors
        for error in errors:
            text = str(error.get("error", "")) + " " + str(error.get("description", ""))
            number = error.get("error_number", error.get("error_code"))
            if number in _TRANSIENT_ERRORS or any(t in text.lower() for t in _TRANSIENT_TEXT):
                raise _Transient(f"slurmrestd at {self.url}: {text.strip()}")
        return answer

    def _request(
        self, method: str, path: str, body: object | None = None, *, idempotent: bool = True
    ) -> dict[str, Any]:
        """One request, retrying transient failures (any at all only if it is idempotent)."""
        from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

        def retryable(exc: BaseException) -> bool:
            return isinstance(exc, _Transient) and (idempotent or "ConnectError" in str(exc))

        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=0.5, max=5),
            retry=retry_if_exception(retryable),
            reraise=True,
            before_sleep=lambda state: log.warning(
                "retrying %s %s: %s",
                method,
                path,
                state.outcome.exception() if state.outcome else "",
            ),
        )
        return retrying(self._request_once, method, path, body)

    @staticmethod
    def _message(answer: Mapping[str, Any]) -> str:
        texts = [str(e.get("description") or e.get("error")) for e in answer["errors"]]
        return "; ".join(t for t in texts if t)[:300] or "no error text"

    # -- Cluster -----------------------------------------------------------------

    def submit(self, spec: JobSpec) -> str:
        job = job_properties(spec, self._environ, self.extra_sbatch_args)
        for key, default in (("partition", self.partition), ("account", self.account)):
            if default and key not in job:
                job[key] = default
        body = {"script": batch_script(spec), "job": job}
        answer = self._request("POST", "/job/submit", body, idempotent=False)
        job_id = answer.get("job_id")
        if not isinstance(job_id, int) or job_id <= 0:
            raise ClusterError(f"slurmrestd at {self.url} refused job {spec.name}: "
                               f"{self._message(answer)}")  # fmt: skip
        self._cache = None
        log.info("submitted Slurm job %s (%s) through slurmrestd", job_id, spec.name)
        return str(job_id)

    def jobs(self, name_prefix: str = DEFAULT_NAME_PREFIX) -> list[JobInfo]:
        with self._lock:
            now = time.monotonic()
            if self._cache is None or now - self._cache[0] > self.cache_seconds:
                answer = self._request("GET", "/jobs")
                if answer["errors"] or not isinstance(answer.get("jobs"), list):
                    raise ClusterError(f"slurmrestd at {self.url}: cannot list jobs: "
                                       f"{self._message(answer)}")  # fmt: skip
                self._cache = (time.monotonic(), parse_jobs(answer["jobs"], self.user))
            every = self._cache[1]
        return [job for job in every if job.name.startswith(name_prefix)]

    def cancel(self, job_ids: Iterable[str], *, pending_only: bool = False) -> None:
        ids = [str(job_id) for job_id in job_ids]
        bad = [job_id for job_id in ids if not _JOB_ID.match(job_id)]
        if bad:
            raise ClusterError(f"not a Slurm job id: {', '.join(bad)}")
        if not ids:
            return
        if pending_only:
            self._cancel_pending(ids)
        else:
            for job_id in ids:
                self._ignoring_gone("DELETE", f"/job/{job_id}")
        self._cache = None

    def _cancel_pending(self, ids: list[str]) -> None:
        """Hold (nothing held can start), cancel what the listing then shows pending,
        release the rest: a job that started before the hold runs on."""
        try:
            for job_id in ids:
                self._ignoring_gone("POST", f"/job/{job_id}", {"hold": True})
            self._cache = None
            pending = {j.job_id for j in self.jobs("") if j.state is JobState.PENDING}
            pending |= {j.array_job_id for j in self.jobs("")
                        if j.state is JobState.PENDING and j.array_job_id}  # fmt: skip
            for job_id in ids:
                if job_id in pending:
                    self._ignoring_gone("DELETE", f"/job/{job_id}")
        finally:
            for job_id in ids:
                try:
                    self._ignoring_gone("POST", f"/job/{job_id}", {"hold": False})
                except ClusterError as exc:
                    log.warning("cannot release Slurm job %s: %s", job_id, exc)

    def _ignoring_gone(self, method: str, path: str, body: object | None = None) -> None:
        answer = self._request(method, path, body)
        errors = [e for e in answer["errors"]
                  if e.get("error_number", e.get("error_code")) not in _GONE]  # fmt: skip
        # An update of an array task answers "job array update ... failed" yet applies.
        errors = [e for e in errors if "job array update" not in str(e.get("description"))]
        if errors:
            raise ClusterError(f"slurmrestd at {self.url}: {method} {path}: "
                               f"{self._message({'errors': errors})}")  # fmt: skip

    def close(self) -> None:
        self._client.close()

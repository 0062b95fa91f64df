"""The job watch: wrap jobs that ended without reporting get their step's failure sent.

``zhpc wrap`` reports the step's outcome itself, but a job killed before it
could (a node failure, the out-of-memory killer, ``scancel`` of a pending job,
SIGKILL after KillWait) sends nothing, and the recipe would stall silently.
The cluster submission service runs this watch between messages: every job
directory it made under ``cluster.workdir`` that has a job id and no
``*.reported`` marker is looked up in one scheduler listing; once its job has
ended, the watch

* sends the results the job saved but could not send (``*.results.json``), or
* sends ``failure`` and ``done`` for the step with the scheduler's end state
  and reason,

then writes the marker. The outputs carry the ids the job itself would have
used (derived from the recipe-wrapper file), so a consumer can tell a late
duplicate. Several watchers on one directory may both send: at least once.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zhpc.cluster import Cluster, JobInfo
from zhpc.errors import ZhpcError
from zhpc.jobfiles import mark_reported, read_recipewrapper, reported_marker
from zhpc.spool import RESULTS_SUFFIX, load_results, results_sent
from zhpc.transport import Transport

log = logging.getLogger(__name__)

#: How much of the end of the job's output goes into the failure payload.
_LOG_TAIL = 4096


class JobWatch:
    """Reports for ended jobs of one submitter (directories ``<workdir>/<prefix>*``)."""

    def __init__(
        self,
        cluster: Cluster,
        workdir: Path,
        prefix: str,
        *,
        recipewrapper_file: str,
        job_id_file: str,
        watch_file: str,
        interval: float = 30.0,
        unlisted_after: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.prefix = prefix
        self.recipewrapper_file = recipewrapper_file
        self.job_id_file = job_id_file
        #: Only directories with this file are watched: those of jobs submitted by a
        #: zhpc whose wrap writes the marker (older job directories are left alone).
        self.watch_file = watch_file
        self.interval = interval
        #: A job the scheduler no longer lists is taken as ended once its id is this old
        #: (Slurm forgets finished jobs after MinJobAge, 300 s by default).
        self.unlisted_after = unlisted_after
        self.clock = clock
        self._next = 0.0

    def tick(self, transport: Transport) -> int:
        """Check when due (every ``interval`` s); returns how many jobs were reported for."""
        now = self.clock()
        if now < self._next:
            return 0
        self._next = now + self.interval
        return self.check(transport)

    def check(self, transport: Transport) -> int:
        waiting = self._unreported()
        if not waiting:
            return 0
        listed = {info.name: info for info in self.cluster.jobs(self.prefix)}
        reported = 0
        for jobdir in waiting:
            info = listed.get(jobdir.name)
            if info is not None and not info.state.finished:
                continue
            if info is None and self._age(jobdir) < self.unlisted_after:
                continue
            try:
                if self._report(jobdir, info, transport):
                    reported += 1
            except ZhpcError as exc:  # the broker or a file: tried again next time
                log.error("job watch: cannot report for %s: %s", jobdir.name, exc)
        return reported

    def _unreported(self) -> list[Path]:
        try:
            dirs = sorted(self.workdir.glob(self.prefix + "*"))
        except OSError:
            return []
        return [
            d
            for d in dirs
            if (d / self.job_id_file).is_file()
            and (d / self.recipewrapper_file).is_file()
            and (d / self.watch_file).exists()
            and not reported_marker(d / self.recipewrapper_file).exists()
        ]

    def _age(self, jobdir: Path) -> float:
        try:
            return time.time() - (jobdir / self.job_id_file).stat().st_mtime
        except OSError:
            return 0.0

    def _report(self, jobdir: Path, info: JobInfo | None, transport: Transport) -> bool:
        rwfile = jobdir / self.recipewrapper_file
        with open(jobdir / self.job_id_file, encoding="utf-8") as handle:
            try:  # another watcher on the same directory has it
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            if reported_marker(rwfile).exists():
                return False
            job_id = handle.read().strip()
            saved = sorted(jobdir.glob(rwfile.stem + "*" + RESULTS_SUFFIX))
            resent = list(jobdir.glob(rwfile.stem + "*" + RESULTS_SUFFIX + ".sent"))
            if resent and not saved:  # sent with ``zhpc wrap --resend``
                log.info("job %s (%s): its saved results were sent", job_id, jobdir.name)
            elif saved:
                for path in saved:
                    transport.publish_many(load_results(path))
                    results_sent(path)
                log.warning(
                    "job %s (%s) ended without sending its results: sent them", job_id, jobdir.name
                )
            else:
                rw = read_recipewrapper(rwfile)
                payload = _failure(job_id, info, jobdir)
                transport.publish_many(
                    [*rw.send_to("failure", payload), *rw.send_to("done", payload)]
                )
                log.warning(
                    "job %s (%s) ended without a report: %s", job_id, jobdir.name, payload["error"]
                )
            mark_reported(rwfile)
        return True


def _failure(job_id: str, info: JobInfo | None, jobdir: Path) -> dict[str, Any]:
    """What the step's failure output gets when the job could not say it itself."""
    if info is None:
        state, reason = "unknown", "the scheduler no longer lists the job"
    else:
        state, reason = info.scheduler_state or info.state.name, info.reason
    ended = f"{state}, {reason}" if reason else state
    return {
        "status": "failure",
        "error": f"job {job_id} ended ({ended}) before zhpc wrap reported",
        "exit_code": info.exit_code if info else None,
        "signal": info.signal if info else None,
        "slurm_job_id": job_id,
        "job_id": job_id,
        "scheduler_state": state,
        "scheduler_reason": reason,
        "node": info.node if info else None,
        "stdout": _tail(jobdir / "job.out"),
        "stderr": "",
        "command": None,
        "files": [],
        "results": {},
        "reported_by": f"job watch on {os.uname().nodename}",
    }


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - _LOG_TAIL))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""

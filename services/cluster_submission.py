"""Cluster submission: a recipe step with a ``cluster`` section becomes a batch job.

The step's message is written to a recipe-wrapper file in the job's own
directory under ``cluster.workdir``, and a job running ``zhpc wrap
--recipewrapper FILE [--wrap NAME] -- CMD...`` is submitted. The step's named
output ``job_submitted`` gets the job id; the job itself later sends
``success``/``failure`` and ``done`` for the same step. The input is acked
only after the scheduler returned a job id, and no broker message is held
while the job waits or runs.

Redelivery (the service died after ``sbatch`` but before the ack) must not
submit twice: the job's name and directory derive from the message id, and
before submitting the service looks for the job id it recorded in that
directory, then for a job of that name in the cluster's listing (one
``squeue`` call, cached briefly by the backend). A submit that timed out may
have submitted too: the service looks for the job by its name before giving
up, and if it is not listed, the message is retried (never the error route:
the job may still report success).

A job killed before ``zhpc wrap`` could report (node failure, out of memory,
``scancel`` while pending) would stall the recipe: between messages the
service's job watch (:mod:`zhpc.jobwatch`) sends the step's ``failure`` and
``done`` with the scheduler's end state and reason, or the results such a job
saved but could not send.

Step format::

    cluster:
      command: [prog, "arg={param}", ...]   # argv, never a shell string
      wrapper: azimuthal                    # optional zhpc.wrappers plug-in
      time: "00:10:00"                      # default: cluster.default_time
      cpus: 4
      memory: 8G
      partition: debug
      stage_in: [/data/in.cbf]              # read by zhpc wrap in the job
      stage_out: ["*.xy"]
      results_directory: /data/processed
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from zhpc.cluster import Cluster, JobSpec, get_cluster
from zhpc.cluster.runner import CommandTimeout, TransientCommandError
from zhpc.errors import ClusterError, OutcomeUnknown, Rejected
from zhpc.jobfiles import cluster_section, write_recipewrapper, zhpc_command
from zhpc.jobwatch import JobWatch
from zhpc.message import MESSAGE_ID_HEADER
from zhpc.recipe import RecipeWrapper
from zhpc.service import Service
from zhpc.transport import Transport

#: Wrap jobs are named ``zhpc-wrap-<hash of the message id>``.
JOB_PREFIX = "zhpc-wrap-"
RECIPEWRAPPER_FILE = "recipewrapper.json"
JOB_ID_FILE = "job_id"
#: In a job directory the job watch looks after (see zhpc.jobwatch).
WATCH_FILE = "watched"
#: After a submit timed out: how long to look for the job (it may be listed late), how often.
LOOKUP_SECONDS = 10.0
LOOKUP_INTERVAL = 1.0
#: Seconds between two looks of the job watch for jobs that ended without a report.
WATCH_INTERVAL = 30.0


def job_key(message_id: str) -> str:
    """A short, name-safe, deterministic key for one logical message."""
    return hashlib.sha256(message_id.encode("utf-8")).hexdigest()[:20]


class ClusterSubmission(Service):
    """Submits a batch job running ``zhpc wrap`` for each cluster step."""

    queue = "cluster.submission"

    def setup(self) -> None:
        self.cluster: Cluster = get_cluster(self.config.cluster)
        self.watch = JobWatch(
            self.cluster,
            self.config.cluster.job_workdir(),
            JOB_PREFIX,
            recipewrapper_file=RECIPEWRAPPER_FILE,
            job_id_file=JOB_ID_FILE,
            watch_file=WATCH_FILE,
            interval=WATCH_INTERVAL,
        )

    def tick(self, transport: Transport) -> None:
        """Between messages: report for jobs that ended without a report (NODE_FAIL, OOM...)."""
        self.watch.tick(transport)

    def teardown(self) -> None:
        self.cluster.close()

    def process(self, rw: RecipeWrapper, payload: Any) -> None:
        section = cluster_section(rw.recipe_step)
        message_id = self._message_id()
        name = JOB_PREFIX + job_key(message_id)
        jobdir = self.config.cluster.job_workdir() / name
        rwfile = jobdir / RECIPEWRAPPER_FILE
        job_id = self._already_submitted(jobdir, name)
        resubmission = job_id is not None
        if job_id is None:
            spec = self._spec(section, name, jobdir, rwfile, message_id)
            jobdir.mkdir(parents=True, exist_ok=True)
            body = rw.body(rw.recipe_pointer or 0, payload, add_path_step=False)
            write_recipewrapper(rwfile, body, message_id)
            job_id = self._submit(spec)
            (jobdir / JOB_ID_FILE).write_text(job_id + "\n", encoding="utf-8")
            (jobdir / WATCH_FILE).touch()  # the job watch reports if the job cannot
            self.log.info("submitted job %s (%s) for recipe %s", job_id, name, rw.recipe_id)
        else:
            self.log.warning(
                "message %s was submitted before as job %s: not submitting again",
                message_id,
                job_id,
            )
        rw.send_to(
            "job_submitted",
            {
                "job_id": job_id,
                "job_name": name,
                "workdir": str(jobdir),
                "recipewrapper": str(rwfile),
                "resubmission": resubmission,
            },
        )

    def _submit(self, spec: JobSpec) -> str:
        """Submit; after an answer that leaves it open (a time-out), look for the job first.

        Never the error route then: the job may exist, and report success later.
        """
        try:
            return self.cluster.submit(spec)
        except (CommandTimeout, TransientCommandError) as exc:
            self.log.warning("%s; looking for job %s before giving up", exc, spec.name)
            job_id = self._look_up(spec.name)
            if job_id is None:
                raise OutcomeUnknown(
                    f"{exc}, and no job named {spec.name} is listed: retried later, "
                    "when it looks again before submitting"
                ) from None
            self.log.info("job %s (%s) was submitted after all", job_id, spec.name)
            return job_id

    def _look_up(self, name: str) -> str | None:
        """The id of the job named ``name``, looked for up to LOOKUP_SECONDS (it may show late)."""
        deadline = time.monotonic() + LOOKUP_SECONDS
        while True:
            try:
                job_id = self._listed(name)
            except ClusterError as exc:
                self.log.warning("looking for job %s: %s", name, exc)
                job_id = None
            if job_id is not None or time.monotonic() >= deadline:
                return job_id
            time.sleep(LOOKUP_INTERVAL)

    def _listed(self, name: str) -> str | None:
        for info in self.cluster.jobs(name):
            if info.name == name:
                return info.array_job_id or info.job_id
        return None

    def _message_id(self) -> str:
        message = self.current_message
        if message is None:
            raise RuntimeError("process() called outside a message")
        value = message.headers.get(MESSAGE_ID_HEADER) or message.message_id
        if value:
            return str(value.decode() if isinstance(value, bytes) else value)
        return hashlib.sha256(message.body).hexdigest()  # no id at all: the content is the id

    def _already_submitted(self, jobdir: Path, name: str) -> str | None:
        """The job id if this message was submitted before (recorded file, then squeue)."""
        try:
            recorded = (jobdir / JOB_ID_FILE).read_text(encoding="utf-8").strip()
        except OSError:
            recorded = ""
        if recorded:
            return recorded
        return self._listed(name)

    def _spec(
        self, section: dict[str, Any], name: str, jobdir: Path, rwfile: Path, message_id: str
    ) -> JobSpec:
        argv = [*zhpc_command(self.config), "wrap", "--recipewrapper", str(rwfile)]
        if section.get("wrapper"):
            argv += ["--wrap", section["wrapper"]]
        argv += ["--", *section.get("command", [])]
        memory = section.get("memory")
        try:
            return JobSpec(
                name=name,
                argv=argv,
                time_limit=section.get("time") or self.config.cluster.default_time,
                partition=section.get("partition") or None,
                cpus=section.get("cpus"),
                memory=str(memory) if memory is not None else None,
                comment=f"zhpc-wrap:{message_id}",
                workdir=jobdir,
                output=jobdir / "job.out",
            )
        except ClusterError as exc:  # a bad time limit will not get better on retry
            raise Rejected(str(exc)) from None

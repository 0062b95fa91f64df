"""``zhpc wrap``: run one program inside a batch job and report its result through the recipe.

A cluster step's job runs ``zhpc wrap --recipewrapper FILE -- CMD ARG...``.
The run, in order:

1. read the recipe message from FILE (written by the cluster submission service);
2. substitute ``{payload}``/``{payload[key]}`` in each argument separately (a
   value can never become a second argument, and no shell ever sees it);
3. stage the step's ``cluster.stage_in`` files into the working directory,
   only from ``staging.allowed_roots`` (:mod:`zhpc.staging`);
4. run the command (or a :class:`Wrapper` plug-in chosen with ``--wrap``),
   forwarding SIGTERM/SIGUSR1/SIGUSR2/SIGINT to it and keeping the tails of
   its stdout/stderr, while a thread broadcasts status heartbeats;
5. stage ``cluster.stage_out`` results to ``cluster.results_directory``;
6. send the named output ``success`` or ``failure``, then ``done`` (as
   Zocalo's BaseWrapper), confirmed by the broker, and exit with the command's
   exit code (zhpc wrap's own errors: 2).

A job has no input message to ack, so results are published with
``publish_many`` (confirmed) before the process exits. They are first written
next to FILE as ``<FILE stem>.results.json`` (or under ``$ZHPC_HOME/wrap-results``,
kept apart from ``zhpc go``'s spool, whose pickup would not understand them)
and that file is removed once the broker confirmed them. If the broker cannot
be reached (or the job is killed while publishing) the file stays: the exit
code is then non-zero and one line says how to send them later
(``zhpc wrap --resend FILE``; message ids are deterministic, so a duplicate
is recognisable).

The pieces: :mod:`zhpc.process` runs the command, :mod:`zhpc.wrapper` is the
plug-in API, :mod:`zhpc.jobfiles` the file and section the submitter hands
over, :mod:`zhpc.spool` keeps unsent results, :mod:`zhpc.status` the heartbeat's
payload and :mod:`zhpc.wrapreport` the broker connection and heartbeat thread.

Start-up matters (a wrap runs per image on some beamlines): without
``--recipewrapper`` nothing beyond the standard library is imported unless
the command runs long enough for a heartbeat.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from zhpc.errors import ZhpcError
from zhpc.jobenv import Drain, JobEnvironment
from zhpc.process import FORWARDED_SIGNALS, ProcessResult, run_command, start_deaf
from zhpc.status import STATUS_END, STATUS_PROCESSING, host_id, status_payload
from zhpc.wrapper import CommandWrapper, Wrapper
from zhpc.wrapreport import Heartbeat, Reporter

# Wrapper and CommandWrapper live in zhpc.wrapper; plug-ins may import them from here too.

TYPE_CHECKING = False  # not typing's: typing costs ms at zhpc wrap's start-up
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

    from zhpc.config import Config
    from zhpc.message import Outgoing
    from zhpc.recipe import RecipeWrapper

log = logging.getLogger(__name__)


#: Without a recipe wrapper, commands that finish sooner than this send no status at all.
QUIET_START = 2.0
#: Exit code of zhpc wrap's own errors (bad input, refused staging, results not sent).
OWN_ERROR = 2


def substitute(value: Any, names: dict[str, Any], what: str) -> Any:
    """``{name}`` templates in every string of ``value``, each string on its own.

    A second stage after the Dispatcher's: text that is no template here (braces
    the Dispatcher inserted from a parameter value, ``out{1}.jsonl``) stays literal.
    """
    from zhpc.errors import RecipeError
    from zhpc.recipe import substitute as substitute_parameters

    try:
        return substitute_parameters(value, names, strict=False)
    except RecipeError as exc:
        raise ZhpcError(f"{what}: {exc}") from None


# -- the run ---------------------------------------------------------------------------


class WrapRun:
    """One ``zhpc wrap`` invocation, from reading the recipe wrapper to the exit code."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        wrapper: str | None = None,
        recipewrapper: Path | None = None,
        workdir: Path | None = None,
        config_path: str | None = None,
        environment: str | None = None,
        heartbeat_interval: float = 30.0,
        quiet_start: float = QUIET_START,
    ) -> None:
        self.command = list(command)
        self.wrapper_name = wrapper
        self.recipewrapper = recipewrapper
        self.workdir = (workdir or Path.cwd()).resolve()
        self.config_path = config_path
        self.environment = environment
        self.heartbeat_interval = heartbeat_interval
        self.quiet_start = quiet_start
        self.job = JobEnvironment.from_environ()
        self.started = time.monotonic()
        self.rw: RecipeWrapper | None = None
        self.reporter = Reporter(self.config)
        self._config: Config | None = None
        self._config_lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self._wrapper: Wrapper | None = None
        self._finished = False
        self._events: Any = None  # zhpc.events emitter, once the recipe step is known
        self._step_ref: Any = None

    def config(self) -> Config:
        with self._config_lock:
            if self._config is None:
                from zhpc.config import load_config

                self._config = load_config(self.config_path, self.environment)
            return self._config

    # -- signals and status ---------------------------------------------------------
    def _forward(self, sig: signal.Signals) -> None:
        child = self._child
        if child is not None and child.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, sig)

    def _set_child(self, child: subprocess.Popen[bytes] | None) -> None:
        self._child = child

    def _launch(self, argv: list[str], *, cwd: Path, env: dict[str, str] | None) -> ProcessResult:
        return run_command(argv, cwd=cwd, env=env, started=self._set_child)

    def status(self) -> dict[str, Any]:
        """A status broadcast with the fields of ``ServiceRunner.status()`` plus the command's."""
        wrapper = self._wrapper
        child = self._child
        rw = self.rw
        return status_payload(
            STATUS_END if self._finished else STATUS_PROCESSING,
            host=host_id(),
            service=f"wrap:{self.wrapper_name or 'command'}",
            serviceclass=type(wrapper).__name__ if wrapper else "Wrapper",
            utilization={} if self._finished else {STATUS_PROCESSING: 1.0},
            slurm_job_id=self.job.slurm_job_id,
            job_id=self.job.job_id,
            recipe_id=rw.recipe_id if rw else None,
            recipe_pointer=rw.recipe_pointer if rw else None,
            program=Path(self.command[0]).name if self.command else None,
            child_pid=child.pid if child is not None else None,
            runtime=round(time.monotonic() - self.started, 3),
        )

    # -- the run --------------------------------------------------------------------
    def run(self) -> int:
        """Do everything; the exit code is the command's (zhpc wrap's own errors: 2)."""
        drain = Drain(signals=FORWARDED_SIGNALS)
        drain.on_signal(self._forward)
        drain.install()
        try:
            return self._run(drain)
        finally:
            drain.uninstall()
            if self._events is not None:
                self._events.close()
            self.reporter.close()

    def _run(self, drain: Drain) -> int:
        if self.recipewrapper is not None:
            from zhpc.jobfiles import read_recipewrapper

            self.rw = read_recipewrapper(self.recipewrapper)
            self.config()  # a bad configuration stops the run before anything starts
            self._start_events()
        heartbeat = Heartbeat(
            self.reporter,
            self.status,
            first=0.0 if self.rw is not None else self.quiet_start,
            interval=self.heartbeat_interval,
        )
        start_deaf(heartbeat)  # threads it starts (the broker's I/O) inherit its mask
        ok, error, files = False, None, []
        try:
            ok, files = self._work(drain)
        except ZhpcError as exc:
            error = str(exc)
        except Exception as exc:  # a broken wrapper plug-in must still report a failure
            log.debug("wrapper failed", exc_info=True)
            error = f"{type(exc).__name__} in wrapper {self.wrapper_name}: {exc}"
        self._finished = True
        heartbeat.stop()
        result = self._wrapper.last_result if self._wrapper else None
        code = result.exit_code if result is not None else 0
        if error is not None:
            print(f"zhpc wrap: error: {error}", file=sys.stderr)
            code = code or OWN_ERROR
        elif not ok:
            code = code or 1
        else:
            code = 0
        self._job_ended(code, result, error, drain)
        if self.rw is None:
            if heartbeat.sent:
                heartbeat.join(timeout=5)
                self.reporter.status(self.status())
            return code
        payload = self._payload(ok and error is None, code, result, files, error)
        return self._deliver(payload, code, heartbeat)

    # -- step events ----------------------------------------------------------------
    def _start_events(self) -> None:
        """``job-started`` on ``zhpc.events``, sent on the run's one broker connection."""
        from zhpc import events, logfields

        rw = self.rw
        if rw is None:
            return
        logfields.set_process_fields(
            service=f"wrap:{self.wrapper_name or 'command'}", slurm_job_id=self.job.slurm_job_id
        )
        logfields.set_message(rw.recipe_id, rw.recipe_pointer)
        if not self.config().events.enabled:
            return
        source = events.source_fields(f"wrap:{self.wrapper_name or 'command'}", self.job)
        self._events = events.EventEmitter(self.reporter.transport, source, close_transport=False)
        step = rw.recipe_step or {}
        self._step_ref = events.StepRef(
            rw.recipe_id, rw.recipe_pointer, str(step.get("queue") or "") or None
        )
        self._events.emit(
            events.JOB_STARTED,
            self._step_ref,
            program=Path(self.command[0]).name if self.command else None,
        )

    def _job_ended(
        self, code: int, result: ProcessResult | None, error: str | None, drain: Drain
    ) -> None:
        if self._events is None:
            return
        from zhpc import events

        reason = drain.reason
        if reason is None and result is not None and result.signal:
            try:
                reason = f"killed by {signal.Signals(result.signal).name}"
            except ValueError:
                reason = f"killed by signal {result.signal}"
        self._events.emit(
            events.JOB_ENDED,
            self._step_ref,
            exit_code=code,
            end_reason=reason,
            error=events.excerpt(error),
            duration=round(time.monotonic() - self.started, 3),
        )

    def _work(self, drain: Drain) -> tuple[bool, list[Path]]:
        """Stage in, run the wrapper, stage out; returns (success, result files).

        :mod:`zhpc.staging` (and shutil with it) is imported only when there is
        something to stage: a plain ``zhpc wrap -- CMD`` has nothing.
        """
        from zhpc import jobfiles

        rw = self.rw
        cluster: dict[str, Any] = {}
        parameters: dict[str, Any] = {}
        roots: list[Path] = []
        command = self.command
        if rw is not None:
            step = rw.recipe_step or {}
            cluster = step.get("cluster") if isinstance(step.get("cluster"), dict) else {}
            names = {"payload": rw.payload}
            command = substitute(command, names, "command")
            if not all(isinstance(arg, str) for arg in command):
                raise ZhpcError("every command argument must be a string after substitution")
            parameters = substitute(rw.parameters, names, "step parameters")
            cluster = substitute(cluster, names, "cluster section")
            roots = list(self.config().staging.allowed_roots)
        wrapper = self._make_wrapper(command, parameters, roots)
        self._wrapper = wrapper
        if drain.requested:
            raise ZhpcError(f"stopped before the command started ({drain.reason})")
        inputs = jobfiles.cluster_paths(cluster, "stage_in")
        if inputs:
            from zhpc import staging

            staging.stage_in(inputs, self.workdir, roots)
        ok = bool(wrapper.run(rw))
        patterns = jobfiles.cluster_paths(cluster, "stage_out")
        if not patterns and not wrapper.results and cluster.get("results_directory") is None:
            return ok, []  # what stage_out returns for no files and nowhere to copy them
        from zhpc import staging

        found = staging.find_outputs(patterns, self.workdir) if patterns else []
        produced = [*found, *(self.workdir / path for path in wrapper.results)]
        destination = jobfiles.results_directory(cluster)
        files = staging.stage_out(dict.fromkeys(produced), self.workdir, destination, roots)
        return ok, files

    def _make_wrapper(
        self, command: list[str], parameters: dict[str, Any], roots: list[Path]
    ) -> Wrapper:
        cls: type[Wrapper] = CommandWrapper
        if self.wrapper_name:
            from zhpc import plugins

            loaded = plugins.load(plugins.WRAPPERS, self.wrapper_name)
            if not (isinstance(loaded, type) and issubclass(loaded, Wrapper)):
                raise ZhpcError(f"{self.wrapper_name!r} is not a zhpc Wrapper class")
            cls = loaded
        return cls(
            self.wrapper_name or "command",
            command=command,
            workdir=self.workdir,
            parameters=parameters,
            allowed_roots=roots,
            launcher=self._launch,
        )

    def _payload(
        self,
        ok: bool,
        code: int,
        result: ProcessResult | None,
        files: list[Path],
        error: str | None,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "status": "success" if ok else "failure",
            "exit_code": code,
            "signal": result.signal if result else None,
            "runtime": round(time.monotonic() - self.started, 3),
            "command_runtime": result.runtime if result else None,
            "command": result.argv if result else None,
            "wrapper": self.wrapper_name,
            "slurm_job_id": self.job.slurm_job_id,
            "job_id": self.job.job_id,
            "restart_count": self.job.restart_count,
            "host": os.uname().nodename,
            "node": self.job.node,
            "stdout": result.stdout if result else "",
            "stderr": result.stderr if result else "",
            "files": [str(path) for path in files],
            "results": self._wrapper.report if self._wrapper else {},
        }
        if error is not None:
            payload["error"] = error
        return payload

    def _deliver(self, payload: dict[str, Any], code: int, heartbeat: Heartbeat) -> int:
        """Send success/failure then done, confirmed; keep them on disk until they are.

        The results file is written *before* publishing, so that a SIGKILL
        during a slow publish (scancel's KillWait) cannot lose them either.
        """
        rw = self.rw
        assert rw is not None
        outputs = [*rw.send_to(payload["status"], payload), *rw.send_to("done", payload)]
        spool = self._spool(outputs)
        heartbeat.join(timeout=1)
        try:
            self.reporter.transport().publish_many(outputs)
        except ZhpcError as exc:
            kept = (
                f"saved in {spool}; send them later with: zhpc wrap --resend {spool}"
                if spool
                else "and no results file could be written: they are lost"
            )
            print(f"zhpc wrap: error: results not sent ({exc}); {kept}", file=sys.stderr)
            return code or OWN_ERROR
        if spool is not None:
            with contextlib.suppress(OSError):
                spool.unlink()
        from zhpc.jobfiles import mark_reported

        assert self.recipewrapper is not None
        mark_reported(self.recipewrapper)
        self.reporter.status(self.status())
        return code

    def _spool(self, outputs: list[Outgoing]) -> Path | None:
        from zhpc.spool import save_results

        assert self.recipewrapper is not None
        name = f"{self.rw.recipe_id if self.rw else 'wrap'}-{os.getpid()}"
        return save_results(
            outputs,
            self.recipewrapper,
            name,
            created=time.time(),
            slurm_job_id=self.job.slurm_job_id,
        )


def resend(path: Path, config: Config) -> int:
    """Publish the results a wrap run could not send; returns how many messages went."""
    from zhpc.spool import load_results, results_sent
    from zhpc.transport import get_transport

    outputs = load_results(path)
    with get_transport(config.broker) as transport:
        transport.publish_many(outputs)
    results_sent(path)
    return len(outputs)

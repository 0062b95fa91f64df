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

Start-up matters (a wrap runs per image on some beamlines): without
``--recipewrapper`` nothing beyond the standard library is imported unless
the command runs long enough for a heartbeat.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zhpc import __version__
from zhpc.errors import ZhpcError
from zhpc.jobenv import Drain, JobEnvironment

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.config import Config
    from zhpc.message import Outgoing
    from zhpc.recipe import RecipeWrapper
    from zhpc.transport.base import Transport

log = logging.getLogger(__name__)

#: Signals passed on to the running command (the scheduler's early warning, scancel, Ctrl-C).
FORWARDED_SIGNALS: tuple[signal.Signals, ...] = (
    signal.SIGTERM,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGINT,
)
#: How much of the end of stdout and of stderr goes into the result payload.
TAIL_BYTES = 4096
#: Without a recipe wrapper, commands that finish sooner than this send no status at all.
QUIET_START = 2.0
#: Key of the recipe-wrapper file holding the input message's zhpc id.
MESSAGE_ID_KEY = "zhpc-message-id"
RESULTS_SUFFIX = ".results.json"
#: Fallback folder (under $ZHPC_HOME) for results that cannot be written next to the FILE.
WRAP_RESULTS_DIR = "wrap-results"
#: Exit code of zhpc wrap's own errors (bad input, refused staging, results not sent).
OWN_ERROR = 2


@dataclass(frozen=True, slots=True)
class CommandResult:
    """How one command ended. ``exit_code`` is 128+N when signal N killed it, as in a shell."""

    argv: list[str]
    exit_code: int
    signal: int | None
    runtime: float
    stdout: str
    stderr: str


def _start_deaf(thread: threading.Thread) -> None:
    """Start a helper thread with the forwarded signals blocked in it.

    The kernel then delivers them to the main thread, whose wait for the child
    they interrupt, so Python runs the forwarding handler at once rather than
    when the child has already exited.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _Tee(threading.Thread):
    """Copies a pipe to one of our own streams, keeping the last ``limit`` bytes."""

    def __init__(self, fd: int, sink: Any, limit: int) -> None:
        super().__init__(daemon=True, name=f"zhpc-wrap-tee-{fd}")
        self.fd = fd
        self.sink = sink
        self.limit = limit
        self.tail = bytearray()

    def run(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            with contextlib.suppress(OSError, ValueError):
                self.sink.write(chunk)
                self.sink.flush()
            self.tail += chunk
            if len(self.tail) > 2 * self.limit:
                del self.tail[: -self.limit]
        os.close(self.fd)

    def text(self) -> str:
        return bytes(self.tail[-self.limit :]).decode("utf-8", "replace")


class Wrapper:
    """Base class of wrapper plug-ins: subclass it and implement :meth:`run`.

    Register subclasses in the ``zhpc.wrappers`` entry point group; ``zhpc wrap
    --wrap NAME`` runs one. A wrapper prepares input, runs its program (with
    :meth:`run_command`, which forwards signals and keeps output tails),
    parses what came out, and says whether the step succeeded. Result files
    go in :attr:`results` (staged out like ``cluster.stage_out``), extra
    result fields in :attr:`report`.
    """

    def __init__(
        self,
        name: str,
        *,
        command: Sequence[str] = (),
        workdir: Path,
        parameters: dict[str, Any] | None = None,
        allowed_roots: Sequence[Path] = (),
        launcher: Callable[..., CommandResult] | None = None,
    ) -> None:
        self.name = name
        #: The command given after ``--`` (parameters substituted); may be empty.
        self.command = list(command)
        #: Where the command runs and where staged inputs are.
        self.workdir = workdir
        #: The step's ``parameters`` (``{payload...}`` substituted).
        self.parameters: dict[str, Any] = dict(parameters or {})
        self.allowed_roots = list(allowed_roots)
        #: Result files (inside :attr:`workdir`) to stage out and report.
        self.results: list[Path] = []
        #: Extra fields for the ``results`` key of the output payload.
        self.report: dict[str, Any] = {}
        #: How the last :meth:`run_command` ended.
        self.last_result: CommandResult | None = None
        self._launcher = launcher or run_command

    def run(self, rw: RecipeWrapper | None) -> bool:
        """Do the work; True for ``success``, False for ``failure``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement run()")

    def run_command(
        self, argv: Sequence[str], *, env: dict[str, str] | None = None
    ) -> CommandResult:
        """Run ``argv`` (no shell) in :attr:`workdir`, with signals forwarded to it."""
        result = self._launcher(list(argv), cwd=self.workdir, env=env)
        self.last_result = result
        return result

    def stage_in(self, path: str | os.PathLike[str]) -> Path:
        """Copy one more input (under the allowed roots) into :attr:`workdir`."""
        from zhpc.staging import stage_in

        return stage_in([path], self.workdir, self.allowed_roots)[0]


class CommandWrapper(Wrapper):
    """The default: run the command given after ``--``; success means exit code 0."""

    def run(self, rw: RecipeWrapper | None) -> bool:
        if not self.command:
            raise ZhpcError("no command to run: give one after --, or choose a plug-in with --wrap")
        return self.run_command(self.command).exit_code == 0


def run_command(
    argv: list[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    started: Callable[[subprocess.Popen[bytes] | None], None] | None = None,
    tail_bytes: int = TAIL_BYTES,
) -> CommandResult:
    """Run ``argv`` in its own process group, copying its output through and keeping tails.

    ``started(proc)`` is called once the child exists (and with None when it
    has exited), so that a signal handler can forward signals to it.
    """
    if not argv or not all(isinstance(arg, str) for arg in argv):
        raise ZhpcError("the command must be a non-empty list of strings")
    begin = time.monotonic()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=None if env is None else {**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            process_group=0,  # Ctrl-C reaches only zhpc wrap, which forwards it once
        )
    except OSError as exc:
        for fd in (out_r, err_r):
            os.close(fd)
        raise ZhpcError(f"cannot run {argv[0]!r}: {exc.strerror or exc}") from None
    finally:
        os.close(out_w)
        os.close(err_w)
    tees = [
        _Tee(out_r, getattr(sys.stdout, "buffer", sys.stdout), tail_bytes),
        _Tee(err_r, getattr(sys.stderr, "buffer", sys.stderr), tail_bytes),
    ]
    for tee in tees:
        _start_deaf(tee)
    if started is not None:
        started(proc)
    try:
        try:
            returncode = proc.wait()
        except KeyboardInterrupt:  # a second Ctrl-C: stop now
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            returncode = proc.wait()
    finally:
        if started is not None:
            started(None)
    for tee in tees:
        tee.join(timeout=10)  # a grandchild may hold the pipe open: do not wait forever
    sig = -returncode if returncode < 0 else None
    return CommandResult(
        argv=list(argv),
        exit_code=128 + sig if sig else returncode,
        signal=sig,
        runtime=round(time.monotonic() - begin, 3),
        stdout=tees[0].text(),
        stderr=tees[1].text(),
    )


# -- reporting ------------------------------------------------------------------------


class _Reporter:
    """The one broker connection of a wrap run, opened on first use from any thread."""

    def __init__(self, config: Callable[[], Config]) -> None:
        self._config = config
        self._transport: Transport | None = None
        self._lock = threading.Lock()

    @property
    def connected(self) -> bool:
        return self._transport is not None

    def transport(self) -> Transport:
        with self._lock:
            if self._transport is None:
                from zhpc.transport import get_transport

                transport = get_transport(self._config().broker)
                transport.connect()
                self._transport = transport
            return self._transport

    def status(self, status: dict[str, Any]) -> None:
        from zhpc.message import Outgoing
        from zhpc.service import STATUS_TOPIC

        try:
            self.transport().publish(
                Outgoing.json(STATUS_TOPIC, status, kind="topic", expiration=15)
            )
        except ZhpcError as exc:  # a lost heartbeat is not worth stopping the work for
            log.warning("status heartbeat not sent: %s", exc)

    def close(self) -> None:
        # A heartbeat thread may still be trying to connect: do not wait for it.
        if not self._lock.acquire(timeout=1):
            return
        try:
            if self._transport is not None:
                with contextlib.suppress(Exception):
                    self._transport.close()
                self._transport = None
        finally:
            self._lock.release()


class _Heartbeat(threading.Thread):
    """Sends ``status()`` after ``first`` seconds, then every ``interval`` seconds."""

    def __init__(
        self, reporter: _Reporter, status: Callable[[], dict[str, Any]], first: float,
        interval: float,
    ) -> None:
        super().__init__(daemon=True, name="zhpc-wrap-heartbeat")
        self.reporter = reporter
        self.make_status = status
        self.first = first
        self.interval = interval
        self.stopped = threading.Event()
        self.sent = 0

    def run(self) -> None:
        if self.stopped.wait(self.first):
            return
        while not self.stopped.is_set():
            self.reporter.status(self.make_status())
            self.sent += 1
            if self.stopped.wait(self.interval):
                return

    def stop(self) -> None:
        self.stopped.set()


def zhpc_command(config: Config) -> list[str]:
    """How a batch job starts zhpc: this interpreter (same installation), same configuration."""
    argv = [sys.executable, "-m", "zhpc"]
    if config.source is not None:
        argv += ["--config", str(config.source.resolve())]
    if config.environment:
        argv += ["-e", config.environment]
    return argv


# -- the recipe-wrapper file ------------------------------------------------------------


def write_recipewrapper(path: Path, body: dict[str, Any], message_id: str | None) -> None:
    """Write a recipe-wrapper file atomically (a job never reads half a file)."""
    data = {**body, MESSAGE_ID_KEY: message_id}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def read_recipewrapper(path: Path) -> RecipeWrapper:
    """The recipe step a recipe-wrapper file describes; ZhpcError if it cannot be one."""
    from zhpc.errors import RecipeError
    from zhpc.recipe import RecipeWrapper

    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ZhpcError(f"recipe wrapper {path}: cannot read: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ZhpcError(f"recipe wrapper {path}: not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ZhpcError(f"recipe wrapper {path}: must hold a JSON object")
    message_id = body.get(MESSAGE_ID_KEY)
    try:
        return RecipeWrapper.from_body(
            body, message_id=str(message_id) if message_id else None, decoded=True
        )
    except RecipeError as exc:
        raise ZhpcError(f"recipe wrapper {path}: {exc}") from None


def substitute(value: Any, names: dict[str, Any], what: str) -> Any:
    """``{name}`` templates in every string of ``value``, each string on its own."""
    from zhpc.errors import RecipeError
    from zhpc.recipe import substitute as substitute_parameters

    try:
        return substitute_parameters(value, names)
    except RecipeError as exc:
        raise ZhpcError(f"{what}: {exc}") from None


def _string_list(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ZhpcError(f"{what} must be a list of strings, not {value!r:.80}")
    return value


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
        self.reporter = _Reporter(self.config)
        self._config: Config | None = None
        self._config_lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self._wrapper: Wrapper | None = None
        self._finished = False

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

    def _launch(self, argv: list[str], *, cwd: Path, env: dict[str, str] | None) -> CommandResult:
        return run_command(argv, cwd=cwd, env=env, started=self._set_child)

    def status(self) -> dict[str, Any]:
        """A status broadcast with the fields of ``ServiceRunner.status()`` plus the command's."""
        wrapper = self._wrapper
        child = self._child
        rw = self.rw
        return {
            "host": f"{'.'.join(reversed(socket.gethostname().split('.')))}.{os.getpid()}",
            "status": 6 if self._finished else 4,
            "statustext": "shutdown" if self._finished else "processing",
            "service": f"wrap:{self.wrapper_name or 'command'}",
            "serviceclass": type(wrapper).__name__ if wrapper else "Wrapper",
            "utilization": {} if self._finished else {4: 1.0},
            "workflows": f"zhpc {__version__}",
            "zhpc": __version__,
            "slurm_job_id": self.job.slurm_job_id,
            "job_id": self.job.job_id,
            "recipe_id": rw.recipe_id if rw else None,
            "recipe_pointer": rw.recipe_pointer if rw else None,
            "program": Path(self.command[0]).name if self.command else None,
            "child_pid": child.pid if child is not None else None,
            "runtime": round(time.monotonic() - self.started, 3),
        }

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
            self.reporter.close()

    def _run(self, drain: Drain) -> int:
        if self.recipewrapper is not None:
            self.rw = read_recipewrapper(self.recipewrapper)
            self.config()  # a bad configuration stops the run before anything starts
        heartbeat = _Heartbeat(
            self.reporter,
            self.status,
            first=0.0 if self.rw is not None else self.quiet_start,
            interval=self.heartbeat_interval,
        )
        _start_deaf(heartbeat)  # threads it starts (the broker's I/O) inherit its mask
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
        if self.rw is None:
            if heartbeat.sent:
                heartbeat.join(timeout=5)
                self.reporter.status(self.status())
            return code
        payload = self._payload(ok and error is None, code, result, files, error)
        return self._deliver(payload, code, heartbeat)

    def _work(self, drain: Drain) -> tuple[bool, list[Path]]:
        """Stage in, run the wrapper, stage out; returns (success, result files)."""
        from zhpc import staging

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
        inputs = _string_list(cluster.get("stage_in"), "cluster.stage_in")
        if inputs:
            staging.stage_in(inputs, self.workdir, roots)
        ok = bool(wrapper.run(rw))
        patterns = _string_list(cluster.get("stage_out"), "cluster.stage_out")
        found = staging.find_outputs(patterns, self.workdir) if patterns else []
        produced = [*found, *(self.workdir / path for path in wrapper.results)]
        destination = cluster.get("results_directory")
        if destination is not None and not isinstance(destination, str):
            raise ZhpcError("cluster.results_directory must be a path string")
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
        self, ok: bool, code: int, result: CommandResult | None, files: list[Path],
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
            "host": socket.gethostname(),
            "node": self.job.node,
            "stdout": result.stdout if result else "",
            "stderr": result.stderr if result else "",
            "files": [str(path) for path in files],
            "results": self._wrapper.report if self._wrapper else {},
        }
        if error is not None:
            payload["error"] = error
        return payload

    def _deliver(self, payload: dict[str, Any], code: int, heartbeat: _Heartbeat) -> int:
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
            kept = (f"saved in {spool}; send them later with: zhpc wrap --resend {spool}"
                    if spool else "and no results file could be written: they are lost")
            print(f"zhpc wrap: error: results not sent ({exc}); {kept}", file=sys.stderr)
            return code or OWN_ERROR
        if spool is not None:
            with contextlib.suppress(OSError):
                spool.unlink()
        self.reporter.status(self.status())
        return code

    def _spool(self, outputs: list[Outgoing]) -> Path | None:
        data = {
            "created": time.time(),
            "slurm_job_id": self.job.slurm_job_id,
            "outputs": [_outgoing_to_json(out) for out in outputs],
        }
        assert self.recipewrapper is not None
        candidates = [self.recipewrapper.with_name(self.recipewrapper.stem + RESULTS_SUFFIX)]
        from zhpc.config import zhpc_home

        name = f"{self.rw.recipe_id if self.rw else 'wrap'}-{os.getpid()}{RESULTS_SUFFIX}"
        candidates.append(zhpc_home() / WRAP_RESULTS_DIR / name)
        for path in candidates:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_text(json.dumps(data), encoding="utf-8")
                os.replace(tmp, path)
                return path
            except OSError as exc:
                log.warning("cannot write results to %s: %s", path, exc)
        return None


def _outgoing_to_json(out: Outgoing) -> dict[str, Any]:
    return {
        "destination": out.destination,
        "kind": out.kind,
        "headers": out.headers,
        "routing_key": out.routing_key,
        "delay": out.delay,
        "expiration": out.expiration,
        "message_id": out.message_id,
        "body": out.body.decode("utf-8"),
    }


def resend(path: Path, config: Config) -> int:
    """Publish the results a wrap run could not send; returns how many messages went."""
    from zhpc.message import Outgoing
    from zhpc.transport import get_transport

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        outputs = [
            Outgoing(
                destination=item["destination"],
                body=item["body"].encode("utf-8"),
                kind=item["kind"],
                headers=dict(item["headers"]),
                routing_key=item["routing_key"],
                delay=item["delay"],
                expiration=item["expiration"],
                message_id=item["message_id"],
            )
            for item in data["outputs"]
        ]
    except OSError as exc:
        raise ZhpcError(f"{path}: cannot read: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ZhpcError(f"{path}: not a zhpc wrap results file ({exc})") from None
    with get_transport(config.broker) as transport:
        transport.publish_many(outputs)
    path.rename(path.with_name(path.name + ".sent"))
    return len(outputs)

"""Running one command the way a batch job needs it: no shell, signals forwarded, output kept.

The command runs in its own process group with its stdout/stderr copied
through to ours (so the job's log has them) while the last few kilobytes of
each are kept for the result message. Signals the scheduler sends (its early
warning, scancel, Ctrl-C) are forwarded to the group by the caller, which
learns the child through ``started``.

Imports only the standard library (and zhpc's stdlib-only modules): ``zhpc wrap`` must
start quickly.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from zhpc.errors import ZhpcError
from zhpc.jobenv import DRAIN_SIGNALS

TYPE_CHECKING = False  # not typing's: typing costs ms at zhpc wrap's start-up
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

#: Signals passed on to the running command (the scheduler's early warning, scancel, Ctrl-C):
#: the ones that make a job drain.
FORWARDED_SIGNALS = DRAIN_SIGNALS
#: How much of the end of stdout and of stderr goes into the result payload.
TAIL_BYTES = 4096


class ProcessResult(
    collections.namedtuple("ProcessResult", "argv exit_code signal runtime stdout stderr")
):
    """How one command ended. ``exit_code`` is 128+N when signal N killed it, as in a shell.

    A named tuple rather than a dataclass: dataclasses imports inspect, several ms
    of every ``zhpc wrap`` start-up.
    """

    __slots__ = ()

    argv: list[str]
    exit_code: int
    signal: int | None
    runtime: float
    stdout: str
    stderr: str


def start_deaf(thread: threading.Thread) -> None:
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


def run_command(
    argv: list[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    started: Callable[[subprocess.Popen[bytes] | None], None] | None = None,
    tail_bytes: int = TAIL_BYTES,
) -> ProcessResult:
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
        start_deaf(tee)
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
    return ProcessResult(
        argv=list(argv),
        exit_code=128 + sig if sig else returncode,
        signal=sig,
        runtime=round(time.monotonic() - begin, 3),
        stdout=tees[0].text(),
        stderr=tees[1].text(),
    )

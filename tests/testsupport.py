"""Helpers for every test folder: waiting, collecting messages, skipping or failing.

Importable as ``testsupport`` from any test module: pytest (default "prepend"
import mode) puts ``tests/``, the folder of the root ``conftest.py``, on sys.path.

When part of the test cluster (scripts/setup-cluster) or an extra is missing, the
tests that need it are skipped on a developer machine but fail in CI
(``CI=true``), where everything must be there.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

from zhpc.cluster import Cluster, JobInfo
from zhpc.message import Message
from zhpc.transport import Transport
from zhpc.transport.accounting import retry_name

T = TypeVar("T")

AMQP_URL = os.environ.get("ZHPC_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
STOMP_URL = os.environ.get("ZHPC_TEST_STOMP_URL", "stomp://127.0.0.1:61613")
SETUP_HINT = "run scripts/setup-cluster (as root) first"
#: Runs a Python one-liner as ``python -c ARGV_DUMP FILE ARGS...``: writes ARGS to FILE as JSON.
ARGV_DUMP = "import json, sys; open(sys.argv[1], 'w').write(json.dumps(sys.argv[2:]))"


def unavailable(what: str, hint: str | None = SETUP_HINT) -> None:
    """Skip (developer machine) or fail (CI) because ``what`` is missing; never returns."""
    message = f"{what}; {hint}" if hint else what
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI: {message}", pytrace=False)
    pytest.skip(message)


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    condition: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.2,
    what: str | Callable[[], str] = "",
) -> T:
    """Call ``condition`` until it returns something true and return that; fail after ``timeout`` s.

    The first pauses are short (5 ms, doubling) up to ``interval``: pass a small one where
    the test must act at once on what it sees, ``0`` where the condition waits by itself
    (e.g. polls a transport). ``what`` names what is awaited in the failure; a callable is
    asked only then, so it can tell the state at the end.
    """
    deadline = time.monotonic() + timeout
    pause = min(0.005, interval)
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            awaited = (what() if callable(what) else what) or repr(condition)
            pytest.fail(f"timed out after {timeout:g} s waiting for {awaited}")
        time.sleep(pause)
        pause = min(pause * 2, interval)


def signal_storm(pid: int, signum: int, seconds: float = 0.3) -> int:
    """Send ``signum`` to ``pid`` as fast as possible for ``seconds``; the number sent.

    Signals then land while the handler of the one before is still running, which
    is where a handler that takes a lock deadlocks or one that does too much recurses.
    Two SIGTERMs close together (Slurm's and an operator's ``scancel``) do this by chance.
    """
    sent = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            break
        sent += 1
    return sent


def jobs_finished(cluster: Cluster, prefix: str, count: int) -> Callable[[], list[JobInfo] | None]:
    """A ``wait_until`` condition: the jobs named ``prefix...``, once there are ``count``
    and all have finished."""

    def check() -> list[JobInfo] | None:
        jobs = cluster.jobs(prefix)
        return jobs if len(jobs) == count and all(j.state.finished for j in jobs) else None

    return check


def collect(
    transport: Transport,
    queue: str,
    count: int,
    timeout: float = 10.0,
    *,
    exact: bool = False,
    listen: float = 0.5,
    check: bool = True,
    prefetch: int = 100,
) -> list[Message]:
    """Subscribe to ``queue``, ack what arrives, and return it once ``count`` messages came.

    Fails the test if fewer than ``count`` came within ``timeout`` s. ``exact``: then listen
    ``listen`` s more for extras and fail unless exactly ``count`` came (``listen=0`` looks
    once more without waiting: enough when whatever sends has already finished).
    ``check=False``: never fail on the count; ``count`` is only where to stop waiting
    (the caller asserts on what came, e.g. with its own diagnostics, or expects nothing).
    """
    got: list[Message] = []

    def keep(message: Message) -> None:
        got.append(message)
        transport.ack(message)

    # A message an earlier consumer took and returned sits in the queue's retry lane
    # (zhpc.transport.accounting): it is still this queue's, so it is collected too.
    lane = None if queue.startswith(("dlq.", "retry.")) else retry_name(queue)

    def from_lane(upto: int) -> None:
        while lane is not None and len(got) < upto and (moved := transport.fetch(lane)):
            keep(moved)

    sub = transport.subscribe(queue, keep, prefetch=prefetch)
    deadline = time.monotonic() + timeout
    try:
        while len(got) < count and time.monotonic() < deadline:
            transport.poll(0.1)
            from_lane(count)
        if exact:
            end = time.monotonic() + listen
            while True:
                transport.poll(max(0.0, end - time.monotonic()))
                from_lane(len(got) + 1)  # extras in the lane count as extras too
                if time.monotonic() >= end:
                    break
    finally:
        transport.unsubscribe(sub)
        while transport.poll(0):  # deliveries already on their way to the cancelled consumer
            pass
    if check and len(got) < count:
        pytest.fail(f"only {len(got)} of {count} message(s) on {queue} after {timeout:g} s")
    if check and exact and len(got) != count:
        pytest.fail(f"{len(got)} messages on {queue}, expected exactly {count}")
    return got


class Forwarder:
    """Accepts on an ephemeral loopback port and pipes each connection to the broker.

    A real network fault between a client and a real broker, for one client only:
    :meth:`cut` drops the connections, ``refusing`` closes new ones at once.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.refusing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for each in (source, sink):
            with contextlib.suppress(OSError):
                each.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every connection (new ones are accepted again)."""
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for each in sockets:
            with contextlib.suppress(OSError):
                each.shutdown(socket.SHUT_RDWR)
            each.close()

    def close(self) -> None:
        self.server.close()
        self.cut()

"""Prometheus metrics: ``/metrics`` for ``zhpc service`` and ``zhpc scale --daemon``.

* ``zhpc_messages_total{service,outcome}``: messages settled, by outcome (``done``,
  ``failed``, ``handed-back``, ``dead-lettered``): the runner's step events,
  counted here (a :class:`Metrics` is an event sink like the emitter);
* ``zhpc_message_seconds{service}``: time from receiving a message to its outcome;
* ``zhpc_queue_depth{queue}`` and ``zhpc_jobs{service,state}``: what the scaler saw
  in its last cycle.

Batch jobs whose port nobody can reach write the same text to a file in a
node_exporter textfile-collector directory instead (``--metrics-textfile DIR``),
every :data:`TEXTFILE_INTERVAL` seconds and at exit. Each process has its own
registry, so several in one interpreter (tests) do not collide.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from zhpc.errors import ZhpcError
from zhpc.events import DEAD_LETTERED, DONE, FAILED, HANDED_BACK

#: Seconds between two writes of the textfile.
TEXTFILE_INTERVAL = 15.0
_OUTCOMES = (DONE, FAILED, HANDED_BACK, DEAD_LETTERED)
_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 1800, 3600)


class Metrics:
    """The metrics of one process. Lifecycle: construct, ``serve``/``textfile``, ``close``."""

    def __init__(self, service: str | None = None) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        except ImportError:
            raise ZhpcError("metrics need prometheus_client: pip install 'zhpc[observe]'") from None
        self.service = service or ""
        self.registry = CollectorRegistry()
        self.messages = Counter(
            "zhpc_messages",
            "Messages settled, by outcome.",
            ["service", "outcome"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "zhpc_message_seconds",
            "Seconds from receiving a message to its outcome.",
            ["service"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "zhpc_queue_depth",
            "Messages ready in a queue (scaler).",
            ["queue"],
            registry=self.registry,
        )
        self.jobs = Gauge(
            "zhpc_jobs",
            "Batch jobs of a service by state (scaler).",
            ["service", "state"],
            registry=self.registry,
        )
        self._server: Any = None
        self._textfile: Path | None = None
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None

    # -- the event sink (zhpc.events) ----------------------------------------------------
    def emit(self, kind: str, ref: Any = None, **fields: Any) -> None:
        if kind not in _OUTCOMES:
            return
        self.messages.labels(self.service, kind).inc()
        duration = fields.get("duration")
        if duration is not None and kind in (DONE, FAILED):
            self.seconds.labels(self.service).observe(duration)

    # -- the scaler --------------------------------------------------------------------------
    def observe_cycle(self, reports: Iterable[Any]) -> None:
        """Queue depths and job counts from one scaler cycle's reports."""
        for report in reports:
            self.queue_depth.labels(report.queue).set(report.ready)
            for state in ("running", "ending", "pending"):
                self.jobs.labels(report.service, state).set(getattr(report, state))

    # -- exposition -------------------------------------------------------------------------
    def serve(self, port: int, address: str = "") -> int:
        """Serve ``/metrics`` on ``port`` (0: any free one); returns the port."""
        from prometheus_client import start_http_server

        try:
            started = start_http_server(port, addr=address or "0.0.0.0", registry=self.registry)
        except OSError as exc:
            raise ZhpcError(f"cannot serve metrics on port {port}: {exc.strerror}") from None
        self._server = started[0] if isinstance(started, tuple) else None
        return int(self._server.server_port) if self._server is not None else port

    def textfile(self, directory: Path) -> Path:
        """Write the metrics to ``directory`` now, every TEXTFILE_INTERVAL s, and at close."""
        if not directory.is_dir():
            raise ZhpcError(f"--metrics-textfile: {directory} is not a directory")
        name = re.sub(
            r"[^A-Za-z0-9_.-]",
            "_",
            f"zhpc-{self.service or 'scale'}-{socket.gethostname()}-{os.getpid()}",
        )
        self._textfile = directory / f"{name}.prom"
        self.write_textfile()
        self._writer = threading.Thread(target=self._write_loop, name="zhpc-metrics", daemon=True)
        self._writer.start()
        return self._textfile

    def write_textfile(self) -> None:
        from prometheus_client import write_to_textfile

        if self._textfile is not None:
            write_to_textfile(str(self._textfile), self.registry)  # atomic: temp file, rename

    def _write_loop(self) -> None:
        while not self._stop.wait(TEXTFILE_INTERVAL):
            with contextlib.suppress(OSError):  # a full disk: the next write may succeed
                self.write_textfile()

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._textfile is not None:
            with contextlib.suppress(OSError):
                self.write_textfile()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

"""A private RabbitMQ node for fault injection, so that the shared broker is never touched.

The chaos run stops and starts the broker application and cuts its client
connections; the shared RabbitMQ on 5672 serves other people, so the faults go
to a node of our own: its own name, AMQP and distribution ports on loopback,
its own HOME (Erlang cookie), data, logs and an empty ``rabbitmq-env.conf``.
It is started with ``/usr/lib/rabbitmq/bin/rabbitmq-server`` directly because
Debian's ``/usr/sbin`` wrappers switch user and cookie.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import socket
import subprocess
import time
from pathlib import Path

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


class BrokerFailed(RuntimeError):
    """The private node did not start or a control command failed."""


def _port_open(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


class PrivateRabbit:
    """One RabbitMQ node under ``base``: start, stop_app/start_app, cut connections, stop."""

    def __init__(
        self,
        base: Path,
        *,
        port: int = 5690,
        dist_port: int = 25690,
        name: str | None = None,
        management_port: int | None = 15690,
    ) -> None:
        self.base = base
        self.port = port
        self.dist_port = dist_port
        self.node = f"{name or f'zchaos{port}'}@localhost"  # one node name per port
        self.management_port = management_port
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return (RABBITMQ_BIN / "rabbitmq-server").is_file() and shutil.which("erl") is not None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}/" if self.management_port else ""

    def env(self) -> dict[str, str]:
        home = self.base / "home"
        conf = self.base / "rabbitmq.conf"
        env = {
            **os.environ,
            "HOME": str(home),
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_CONFIG_FILE": str(conf),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.base / "rabbit.pid"),
            "ERL_CRASH_DUMP": str(self.base / "log" / "erl_crash.dump"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_CTL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }
        return env

    def _prepare(self) -> None:
        home = self.base / "home"
        for sub in (home, self.base / "mnesia", self.base / "log"):
            sub.mkdir(parents=True, exist_ok=True)
        (self.base / "rabbitmq-env.conf").write_text("")
        cookie = home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(os.urandom(16).hex().upper())
            cookie.chmod(0o400)
        lines = ["loopback_users.guest = true", "log.console = false", "log.file.level = warning"]
        plugins = "[]."
        if self.management_port:
            lines += [
                f"management.tcp.port = {self.management_port}",
                "management.tcp.ip = 127.0.0.1",
            ]
            plugins = "[rabbitmq_management]."
        (self.base / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        (self.base / "enabled_plugins").write_text(plugins + "\n")

    def start(self, timeout: float = 90.0) -> None:
        """Start the node and wait until the AMQP port accepts (and management, if on)."""
        if _port_open(self.port):
            raise BrokerFailed(f"port {self.port} is already in use: not starting a node there")
        self._prepare()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536

        def raise_limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))

        log = (self.base / "log" / "server.out").open("ab")
        self._proc = subprocess.Popen(
            [str(RABBITMQ_BIN / "rabbitmq-server")],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=raise_limit,
            start_new_session=True,
        )
        log.close()
        self.wait_up(timeout)

    def wait_up(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        ports = [self.port] + ([self.management_port] if self.management_port else [])
        while not all(_port_open(p) for p in ports):
            if self._proc is not None and self._proc.poll() is not None:
                raise BrokerFailed(
                    f"rabbitmq-server exited with {self._proc.returncode}; see {self.base / 'log'}"
                )
            if time.monotonic() > deadline:
                raise BrokerFailed(f"node {self.node} not up after {timeout:g} s")
            time.sleep(0.2)

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        proc = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise BrokerFailed(f"rabbitmqctl {' '.join(args)}: {proc.stderr.strip()[-300:]}")
        return proc.stdout

    def stop_app(self) -> None:
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self.wait_up()

    def cut_connections(self) -> int:
        """Kill every TCP connection to the AMQP port (both ends) with ``ss -K``; returns how
        many sockets were listed before. Only this node's port is touched."""
        listing = subprocess.run(
            [
                "ss",
                "-Htn",
                "state",
                "established",
                f"( sport = :{self.port} or dport = :{self.port} )",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        count = len([line for line in listing.stdout.splitlines() if line.strip()])
        subprocess.run(
            [
                "ss",
                "-K",
                "-tn",
                "state",
                "established",
                f"( sport = :{self.port} or dport = :{self.port} )",
            ],
            capture_output=True,
            timeout=10,
            check=False,
        )
        return count

    def stop(self) -> None:
        """Stop the node (rabbitmqctl stop, then kill what is left of our own process)."""
        with contextlib.suppress(BrokerFailed, subprocess.TimeoutExpired):
            self.ctl("stop", timeout=60)
        if self._proc is not None:
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, 9)
                self._proc.wait(10)
            self._proc = None

    def __enter__(self) -> PrivateRabbit:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

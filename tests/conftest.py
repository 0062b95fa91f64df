"""Shared fixtures: the real test cluster (scripts/setup-cluster), waiting, unique names.

When a service is not up the tests that need it are skipped on a developer
machine, but fail in CI (``CI=true``), where the cluster must be running.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from zhpc.config import SSHConfig

T = TypeVar("T")

STATE_DIR = Path(os.environ.get("ZHPC_TEST_CLUSTER_STATE", "/var/lib/zhpc-test-cluster"))
NODES = ("n1", "n2", "n3")


def unavailable(what: str) -> None:
    """Skip (developer machine) or fail (CI) because part of the test cluster is missing."""
    message = f"{what}; run scripts/setup-cluster (as root) first"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI: {message}", pytrace=False)
    pytest.skip(message)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def wait_until(
    condition: Callable[[], T], timeout: float, interval: float = 0.2, what: str = "condition"
) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}", pytrace=False)
        time.sleep(interval)


@pytest.fixture(name="wait_until")
def wait_until_fixture() -> Callable[..., object]:
    return wait_until


@pytest.fixture
def unique_name() -> str:
    """A job/queue name no other test (or engineer) uses."""
    return f"zhpc-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def slurm_up() -> None:
    if shutil.which("sinfo") is None:
        unavailable("Slurm client tools are not installed")
    try:
        out = subprocess.run(
            ["sinfo", "--noheader", "--Node", "--format=%N %t"],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
    except subprocess.TimeoutExpired:
        unavailable("slurmctld does not answer")
    states = dict(line.split() for line in out.stdout.splitlines() if line.strip())
    ready = [n for n in NODES if states.get(n, "").rstrip("*") in ("idle", "mix", "alloc")]
    if out.returncode != 0 or len(ready) != len(NODES):
        unavailable(f"the Slurm test nodes are not all up ({states or out.stderr.strip()})")


@pytest.fixture(scope="session")
def rabbitmq_up() -> None:
    if not port_open(5672):
        unavailable("RabbitMQ does not answer on 127.0.0.1:5672")


@pytest.fixture(scope="session")
def ssh_config() -> SSHConfig:
    """Client settings for the test sshd on 127.0.0.1:2222 (key auth, strict host keys)."""
    try:
        import paramiko  # noqa: F401
    except ImportError:
        unavailable("paramiko is not installed (pip install -e '.[ssh]')")
    key = STATE_DIR / "ssh" / "id_ed25519"
    known_hosts = STATE_DIR / "ssh" / "known_hosts"
    if not (key.is_file() and known_hosts.is_file()) or not port_open(2222):
        unavailable(f"the test sshd is not up on 127.0.0.1:2222 (keys in {STATE_DIR / 'ssh'})")
    return SSHConfig(
        host="127.0.0.1",
        port=2222,
        user="root",
        key_file=key,
        known_hosts=known_hosts,
        strict_host_key_checking=True,
        timeout=15,
    )

"""Shared fixtures: the real test cluster (scripts/setup-cluster) and unique names.

When a service is not up the tests that need it are skipped on a developer
machine, but fail in CI (``CI=true``), where the cluster must be running
(``testsupport.unavailable``). Helpers for tests are in ``testsupport.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from testsupport import port_open, unavailable

from zhpc.config import SSHConfig

STATE_DIR = Path(os.environ.get("ZHPC_TEST_CLUSTER_STATE", "/var/lib/zhpc-test-cluster"))
NODES = ("n1", "n2", "n3")
GRIDENGINE_HINT = "run scripts/setup-gridengine (as root) first"


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
def activemq_up() -> None:
    if not port_open(61613):
        unavailable("ActiveMQ does not answer STOMP on 127.0.0.1:61613")


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


@pytest.fixture(scope="session")
def slurmrestd_token(tmp_path_factory: pytest.TempPathFactory, slurm_up: None) -> Path:
    """A fresh JWT for this user, in a 0600 file (as scripts/setup-slurmrestd writes one)."""
    if not port_open(6820):
        unavailable("slurmrestd does not answer on 127.0.0.1:6820",
                    "run scripts/setup-slurmrestd (as root) first")  # fmt: skip
    out = subprocess.run(
        ["scontrol", "token", "lifespan=7200"], capture_output=True, text=True, timeout=30
    )
    if out.returncode != 0:
        unavailable(f"scontrol token failed: {out.stderr.strip()} (is AuthAltTypes=auth/jwt set?)")
    path = tmp_path_factory.mktemp("slurmrestd") / "token"
    path.touch(mode=0o600)
    path.write_text(out.stdout.strip().removeprefix("SLURM_JWT=") + "\n")
    return path


@pytest.fixture(scope="session")
def gridengine_up() -> None:
    if shutil.which("qstat") is None:
        unavailable("Grid Engine client tools are not installed", GRIDENGINE_HINT)
    if not port_open(6444):
        unavailable("sge_qmaster does not answer on port 6444", GRIDENGINE_HINT)


@pytest.fixture(autouse=True, scope="session")
def _private_zhpc_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests (and the zhpc processes they start) never touch the user's ~/.local/share/zhpc."""
    patch = pytest.MonkeyPatch()
    patch.setenv("ZHPC_HOME", str(tmp_path_factory.mktemp("zhpc-home")))
    yield
    patch.undo()

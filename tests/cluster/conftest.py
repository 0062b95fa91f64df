"""Every cluster backend, set up against the real test cluster, for the shared backend suite.

``backend`` is parametrised over all of them; one that is not up skips on a
developer machine and fails in CI (``testsupport.unavailable``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from testsupport import unavailable

from zhpc.cluster import Cluster, JobState

BACKENDS = ("local", "slurm", "ssh", "slurmrestd", "drmaa")


@dataclass
class Backend:
    """A backend under test, and what the suite must know about its scheduler."""

    name: str
    cluster: Cluster
    #: Counts one listing as scheduler calls (None: the backend reads files, no scheduler).
    calls: dict[str, int] | None = None
    #: Takes ``extra_args=["--hold"]`` (jobs then stay PENDING until released).
    holds: bool = True
    #: Time limits count in whole minutes (Slurm), so a limit test takes over a minute.
    minute_limits: bool = False
    #: Lists a job's comment (Grid Engine's listings carry none).
    comments: bool = True

    def cleanup(self, prefix: str) -> None:
        left = [j.job_id for j in self.cluster.jobs(prefix) if not j.state.finished]
        if left:
            self.cluster.cancel(left)


def _make(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if name == "local":
        from zhpc.cluster.local import LocalCluster

        return Backend(name, LocalCluster(tmp_path / "local-jobs", kill_wait=2.0), holds=False)
    if name == "slurm":
        from zhpc.cluster.slurm import SlurmCluster

        request.getfixturevalue("slurm_up")
        cluster = SlurmCluster(cache_seconds=0)
        return Backend(name, cluster, cluster.calls, minute_limits=True)
    if name == "ssh":
        from zhpc.cluster.ssh import SSHCluster

        request.getfixturevalue("slurm_up")
        cluster = SSHCluster(request.getfixturevalue("ssh_config"), cache_seconds=0)
        return Backend(name, cluster, cluster.calls, minute_limits=True)
    if name == "slurmrestd":
        try:
            from zhpc.cluster.slurmrest import SlurmRestCluster
        except ImportError as exc:  # pragma: no cover - httpx missing
            unavailable(f"the slurmrestd backend cannot be imported: {exc}")
        token = request.getfixturevalue("slurmrestd_token")
        cluster = SlurmRestCluster(token_file=token, cache_seconds=0)
        return Backend(name, cluster, cluster.calls, minute_limits=True)
    if name == "drmaa":
        request.getfixturevalue("gridengine_up")
        from zhpc.cluster.drmaa import DRMAACluster

        cluster = DRMAACluster(tmp_path / "drmaa", cache_seconds=0)
        return Backend(name, cluster, cluster.calls, comments=False)
    raise AssertionError(name)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path, unique_name: str) -> Iterator[Backend]:
    made = _make(request.param, request, tmp_path)
    try:
        yield made
    finally:
        made.cleanup(unique_name)
        made.cluster.close()


def finished_states(jobs: list) -> set[JobState]:
    return {job.state for job in jobs}

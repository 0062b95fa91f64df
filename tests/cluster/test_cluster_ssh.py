"""The ssh backend: Slurm commands on a 'login node' through the real test sshd."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from testsupport import jobs_finished, wait_until

from zhpc.cluster import JobSpec, JobState, get_cluster
from zhpc.cluster.ssh import SSHCluster
from zhpc.config import ClusterConfig, SSHConfig
from zhpc.errors import ClusterError


@pytest.mark.ssh
@pytest.mark.slurm
def test_ssh_backend_submits_lists_and_cancels(
    slurm_up: None, ssh_config: SSHConfig, unique_name: str, tmp_path: Path
) -> None:
    cluster = get_cluster(ClusterConfig(backend="ssh", ssh=ssh_config))
    assert isinstance(cluster, SSHCluster)
    with cluster:
        args = ["it's", "$(id)", "a  b"]
        job_id = cluster.submit(
            JobSpec(
                name=unique_name,
                argv=["printf", "%s|", *args],
                time_limit="00:02:00",
                output=tmp_path / "%j.out",
            )
        )
        sleeper = cluster.submit(
            JobSpec(name=unique_name + "-s", argv=["sleep", "300"], time_limit="00:05:00")
        )
        cluster.cancel([sleeper])

        finished = wait_until(
            jobs_finished(cluster, unique_name, 2), timeout=60, what="the jobs over ssh"
        )
        jobs = {j.job_id: j for j in finished}
        assert jobs[job_id].state is JobState.COMPLETED
        assert jobs[sleeper].state is JobState.CANCELLED
        assert (tmp_path / f"{job_id}.out").read_text() == "it's|$(id)|a  b|"
        assert cluster.calls["sbatch"] == 2


@pytest.mark.ssh
def test_unknown_host_key_is_refused(ssh_config: SSHConfig, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    cluster = SSHCluster(ssh_config.replace(known_hosts=empty), attempts=1)
    with pytest.raises(
        ClusterError, match=r"ssh root@127\.0\.0\.1:2222: .*not found in known_hosts"
    ):
        cluster.jobs()


@pytest.mark.ssh
def test_wrong_host_key_is_refused(ssh_config: SSHConfig, tmp_path: Path) -> None:
    # Claim the server's address for the client's key: the real host key then mismatches.
    wrong = tmp_path / "known_hosts"
    client_pub = Path(str(ssh_config.key_file) + ".pub").read_text().split()[:2]
    wrong.write_text(f"[127.0.0.1]:2222 {' '.join(client_pub)}\n")
    cluster = SSHCluster(ssh_config.replace(known_hosts=wrong), attempts=1)
    with pytest.raises(ClusterError, match="host key does not match"):
        cluster.jobs()


@pytest.mark.ssh
def test_unauthorised_key_is_refused(ssh_config: SSHConfig, tmp_path: Path) -> None:
    key_file = tmp_path / "other_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key_file)],
        check=True,
        timeout=30,
    )
    cluster = SSHCluster(ssh_config.replace(key_file=key_file), attempts=1)
    with pytest.raises(ClusterError, match=r"ssh root@127\.0\.0\.1:2222: .*[Aa]uthentication"):
        cluster.jobs()

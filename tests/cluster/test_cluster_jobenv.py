"""zhpc.jobenv inside a real Slurm job: identity and end time as the job sees them."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from testsupport import jobs_finished, wait_until

from zhpc.cluster import JobSpec, JobState
from zhpc.cluster.slurm import SlurmCluster


@pytest.mark.slurm
def test_end_time_inside_a_real_slurm_job(slurm_up: None, unique_name: str, tmp_path: Path) -> None:
    program = textwrap.dedent(
        """
        import sys
        from zhpc.jobenv import JobEnvironment
        env = JobEnvironment.from_environ()
        print(env.scheduler, env.job_id, env.node, env.end_time(), env.remaining())
        """
    )
    cluster = SlurmCluster(cache_seconds=0)
    name = unique_name
    out = tmp_path / "out"
    job_id = cluster.submit(
        JobSpec(name=name, argv=[sys.executable, "-c", program], time_limit="00:05:00", output=out)
    )
    (info,) = wait_until(jobs_finished(cluster, name, 1), timeout=60, what="the job")
    assert info.state is JobState.COMPLETED, out.read_text()
    scheduler, seen_id, node, end, remaining = out.read_text().split()
    assert (scheduler, seen_id, node) == ("slurm", job_id, info.node)
    # The job's view of its end: start + 5 min, as the scheduler reported it.
    assert float(end) == pytest.approx(info.start_time.timestamp() + 300, abs=2)
    assert 280 < float(remaining) <= 300

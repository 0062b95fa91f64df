"""``zhpc submit-services`` on the local backend (embedded broker): the same array script."""

from __future__ import annotations

from pathlib import Path

from jobs_support import recipe_message, write_config, zhpc
from testsupport import collect, wait_until

from zhpc.cluster import JobState
from zhpc.cluster.local import LocalCluster
from zhpc.transport import dlq_name
from zhpc.transport.embedded import EmbeddedTransport


def test_a_local_array_runs_the_service_and_drains_on_cancel(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "zhpc.yaml",
        {
            "broker": {"url": f"sqlite:///{tmp_path / 'broker.sqlite'}"},
            "cluster": {"backend": "local", "workdir": str(tmp_path / "jobs")},
            "services": {"zhpc_test_slow": {"queue": "slow", "prefetch": 1, "drain_grace": 2}},
        },
    )
    recipe = {"1": {"queue": "slow", "output": 2}, "2": {"queue": "slow.out"}}
    with EmbeddedTransport(tmp_path / "broker.sqlite") as broker:
        broker.publish_many(
            [recipe_message({**recipe, "start": [[1, {"n": n, "sleep": 0.2}]]}) for n in range(30)]
        )
        proc = zhpc(
            "--config",
            str(config),
            "submit-services",
            "-s",
            "zhpc_test_slow",
            "--count",
            "2",
            "--time",
            "00:02:00",
        )
        assert proc.returncode == 0, proc.stderr
        job_id = proc.stdout.strip()
        outputs = collect(broker, "slow.out", 5, timeout=30)
        assert len(outputs) == 5
        cluster = LocalCluster(tmp_path / "jobs" / "local")
        tasks = [j for j in cluster.jobs("zhpc-svc-") if j.array_job_id == job_id]
        assert sorted(j.array_task_id for j in tasks) == [0, 1]
        cluster.cancel([job_id])

        def stopped() -> list | None:
            mine = [j for j in cluster.jobs("zhpc-svc-") if j.array_job_id == job_id]
            return mine if mine and all(j.state.finished for j in mine) else None

        done = wait_until(stopped, timeout=30, what="the local tasks to stop")
        assert {j.state for j in done} == {JobState.CANCELLED}
        assert {j.exit_code for j in done} == {0}  # drained, not killed
        outputs += collect(broker, "slow.out", 30, timeout=1, exact=True, check=False)
        left = collect(broker, "slow", 30, timeout=1, exact=True, check=False)
        seen = {m.json()["payload"]["n"] for m in outputs + left}
        assert seen == set(range(30))
        assert broker.queue_depth(dlq_name("slow")).ready == 0

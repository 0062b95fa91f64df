"""``zhpc scale`` on the embedded default: SQLite broker, local processes as jobs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from scaler_support import Setup, make_setup, work
from testsupport import collect, wait_until

from zhpc.cluster import JobState
from zhpc.cluster.local import LocalCluster
from zhpc.transport import dlq_name
from zhpc.transport.base import retry_name
from zhpc.transport.embedded import EmbeddedTransport


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return make_setup(
        tmp_path,
        broker=f"sqlite:///{tmp_path / 'broker.sqlite'}",
        backend="local",
        scaler={"max_jobs": 2, "messages_per_job": 10, "max_pending": 2},
    )


def test_a_backlog_starts_local_service_jobs_that_drain_it_and_end_when_idle(
    setup: Setup, tmp_path: Path
) -> None:
    cluster = LocalCluster(setup.workdir / "local")
    name = f"zhpc-svc-{setup.service}"
    with EmbeddedTransport(tmp_path / "broker.sqlite") as broker:
        broker.publish_many(work(setup.queue, 40, sleep=0.05))
        (first,) = setup.scale("--once")
        assert (first["ready"], first["desired"], first["submitted"]) == (40, 2, 2), first
        assert first["job_id"] and first["scheduler_queries"] == 1
        (again,) = setup.scale("--once")
        assert again["submitted"] == 0 and again["running"] + again["pending"] == 2, again
        outputs = collect(broker, f"{setup.queue}.out", 40, timeout=60)
        assert {m.json()["payload"]["n"] for m in outputs} == set(range(40))
        jobs = wait_until(
            lambda: (
                [j for j in cluster.jobs(name)]
                if all(j.state.finished for j in cluster.jobs(name))
                else None
            ),
            timeout=30,
            what="the local service jobs to end when idle",
        )
        assert {(j.state, j.exit_code) for j in jobs} == {(JobState.COMPLETED, 0)}, setup.logs()
        assert "idle for 3 s" in setup.logs()
        (idle,) = setup.scale("--once")
        assert (idle["work"], idle["submitted"], idle["reason"]) == (0, 0, "idle"), idle
        assert broker.queue_depth(dlq_name(setup.queue)).ready == 0
        # Nothing queued and every job forgotten: the next cycle does not list jobs at all.
        (quiet,) = setup.scale("--once")
        assert quiet["scheduler_queries"] == 0 and quiet["submitted"] == 0
        assert len({j.array_job_id for j in cluster.jobs(name)}) == 1


def test_work_left_only_in_the_retry_lane_still_gets_a_service(
    setup: Setup, tmp_path: Path
) -> None:
    """The messages of killed consumers wait in ``retry.Q``, which services read by fetch and
    no one subscribes to: with the work queue empty they are still work, or they wait for
    ever when the last service job was killed."""
    with EmbeddedTransport(tmp_path / "broker.sqlite") as broker:
        broker.publish_many(
            [replace(m, destination=retry_name(setup.queue)) for m in work(setup.queue, 5)]
        )
        (first,) = setup.scale("--once")
        assert (first["ready"], first["submitted"]) == (5, 1), first
        outputs = collect(broker, f"{setup.queue}.out", 5, timeout=60)
        assert {m.json()["payload"]["n"] for m in outputs} == set(range(5))


def test_dry_run_changes_nothing(setup: Setup, tmp_path: Path) -> None:
    with EmbeddedTransport(tmp_path / "broker.sqlite") as broker:
        broker.publish_many(work(setup.queue, 30))
    (dry,) = setup.scale("--dry-run")
    assert dry["submitted"] == 2 and dry["dry_run"] and dry["job_id"] is None
    assert dry["reason"].startswith("dry run:")
    assert LocalCluster(setup.workdir / "local").jobs("zhpc-svc-") == []
    assert not (tmp_path / "home" / "scaler" / "default.json").exists()
    table = setup.zhpc("scale", "--dry-run", "-s", setup.service)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split()[:3] == ["SERVICE", "QUEUE", "READY"] and row.split()[:3] == [
        setup.service,
        setup.queue,
        "30",
    ]


def test_the_daemon_runs_cycles_and_stops_on_sigterm(setup: Setup, tmp_path: Path) -> None:
    # PYTHONFAULTHANDLER: if it does not stop, SIGABRT makes it print where it is stuck.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zhpc",
            "--config",
            str(setup.config),
            "scale",
            "--daemon",
            "--interval",
            "30",
            "--poll",
            "0.2",
            "--json",
            "-s",
            setup.service,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**setup.env, "PYTHONFAULTHANDLER": "1"},
    )
    try:
        assert proc.stdout is not None
        idle = json.loads(proc.stdout.readline())
        assert idle["reason"] == "idle" and idle["submitted"] == 0
        with EmbeddedTransport(tmp_path / "broker.sqlite") as broker:
            broker.publish_many(work(setup.queue, 15, sleep=0.05))
            # The queue grew: the daemon reacts long before its 30 s interval.
            busy = json.loads(proc.stdout.readline())
            assert busy["submitted"] == 2 and busy["ready"] == 15, busy
            collect(broker, f"{setup.queue}.out", 15, timeout=60)
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            _, err = proc.communicate(timeout=30)
            pytest.fail(f"zhpc scale --daemon did not stop within 60 s of SIGTERM:\n{err}")
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        cluster = LocalCluster(setup.workdir / "local")
        cluster.cancel([j.job_id for j in cluster.jobs("zhpc-svc-") if not j.state.finished])


def test_an_unknown_service_is_one_line_and_exit_2(setup: Setup) -> None:
    proc = setup.zhpc("scale", "--once", "-s", "no_such_service")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "no service named 'no_such_service'" in proc.stderr
    bad = setup.zhpc("scale", "--daemon", "--interval", "0", "-s", setup.service)
    assert bad.returncode == 2 and "--interval must be a positive" in bad.stderr


def test_an_unreachable_broker_fails_the_cycle_clearly(tmp_path: Path) -> None:
    setup = make_setup(tmp_path, broker="amqp://guest:guest@127.0.0.1:1/", backend="local")
    text = setup.config.read_text().replace(
        "broker:\n", "broker:\n  connection_attempts: 1\n  retry_delay: 0\n", 1
    )
    setup.config.write_text(text)
    proc = setup.zhpc("scale", "--once", "-s", setup.service, timeout=60)
    assert proc.returncode == 1 and proc.stdout == "", proc
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("zhpc: error: cannot connect to RabbitMQ at amqp://guest:***@"), last
    assert "guest:guest" not in proc.stderr and "Traceback" not in proc.stderr
    assert LocalCluster(setup.workdir / "local").jobs("zhpc-svc-") == []

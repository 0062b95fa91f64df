"""A submit that times out may have submitted (issue 12, item 7): on the real Slurm.

``sbatch`` here is the real one behind a wrapper that answers too late (it submits, then
does not return within the backend's command time-out), as an overloaded slurmctld does.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from jobs_support import recipe_message, wrapped_recipe, write_config

from zhpc.cluster.slurm import SlurmCluster
from zhpc.config import load_config
from zhpc.message import Message

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(120)]


def _sbatch_wrapper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, submits: bool) -> None:
    real = shutil.which("sbatch")
    assert real
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "sbatch"
    submit = f'{real} "$@" || exit $?\n' if submits else ""
    wrapper.write_text(f"#!/bin/sh\n{submit}exec sleep 60\n")
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


@pytest.fixture
def slow_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slurm_up: None) -> None:
    """Submits, then answers too late."""
    _sbatch_wrapper(tmp_path, monkeypatch, submits=True)


@pytest.fixture
def stuck_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slurm_up: None) -> None:
    """Never gets through to slurmctld, and never answers."""
    _sbatch_wrapper(tmp_path, monkeypatch, submits=False)


def _service(tmp_path: Path) -> Any:
    from zhpc.services.cluster_submission import ClusterSubmission

    config = write_config(
        tmp_path / "zhpc.yaml",
        {
            "broker": {"url": f"sqlite:///{tmp_path / 'broker.sqlite'}"},
            "cluster": {
                "backend": "slurm",
                "workdir": str(tmp_path / "jobs"),
                "default_time": "00:02:00",
                "command_timeout": 3,
            },
        },
    )
    service = ClusterSubmission("cluster_submission", config=load_config(config))
    service.setup()
    return service


def _message() -> Message:
    step = {"cluster": {"command": ["sleep", "60"]}, "error": 3}
    out = recipe_message(wrapped_recipe("zt.timeout", step, {}))
    return Message(out.body, dict(out.headers), "cluster.submission", message_id=out.message_id)


def test_a_timed_out_submit_finds_its_job_and_never_takes_the_error_route(
    tmp_path: Path, slow_sbatch: None
) -> None:
    service = _service(tmp_path)
    message = _message()
    outputs: list[Any] = []
    job_ids: list[str] = []
    try:
        service.receive(message, outputs)
        destinations = [o.destination for o in outputs]
        assert destinations == ["zt.timeout.submitted"], destinations  # not the error route
        job = json.loads(outputs[0].body)["payload"]
        job_ids.append(job["job_id"])
        listed = [
            j
            for j in SlurmCluster(cache_seconds=0).jobs(job["job_name"])
            if j.name == job["job_name"]
        ]
        assert [j.job_id for j in listed] == [job["job_id"]]
        assert service.cluster.calls.get("sbatch") == 1  # type: ignore[attr-defined]
    finally:
        if not job_ids:  # whatever was submitted under this message's job name
            job_ids = [
                j.job_id
                for j in SlurmCluster(cache_seconds=0).jobs("zhpc-wrap-")
                if (tmp_path / "jobs" / j.name).is_dir()
            ]
        service.cluster.cancel(job_ids)
        service.teardown()


def test_a_timed_out_submit_with_no_job_is_retried_not_routed_to_error(
    tmp_path: Path, stuck_sbatch: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zhpc.services import cluster_submission

    monkeypatch.setattr(cluster_submission, "LOOKUP_SECONDS", 1.0, raising=False)
    service = _service(tmp_path)
    outputs: list[Any] = []
    try:
        with pytest.raises(Exception, match="no job named") as raised:
            service.receive(_message(), outputs)
        assert type(raised.value).__name__ == "OutcomeUnknown"
        assert outputs == []  # nothing sent, the error route least of all
    finally:
        service.teardown()

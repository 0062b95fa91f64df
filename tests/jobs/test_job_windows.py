"""Loss and duplication windows around cluster jobs (issue 12, items 6 and 7), embedded broker."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from jobs_support import recipe_message, wrapped_recipe, write_config, zhpc
from testsupport import collect

from zhpc.jobfiles import write_recipewrapper
from zhpc.recipe import RecipeWrapper
from zhpc.transport.embedded import EmbeddedTransport

Q = "jobwindows"


def test_job_submitted_and_the_jobs_first_result_have_distinct_ids(tmp_path: Path) -> None:
    """Item 6: a consumer dropping duplicates by id must not drop the job's real result."""
    config = write_config(
        tmp_path / "zhpc.yaml",
        {
            "broker": {"url": f"sqlite:///{tmp_path / 'broker.sqlite'}"},
        },
    )
    message = recipe_message(wrapped_recipe(Q, {}, {}))
    # what cluster_submission sends for the step (from_message builds it like this)
    submitter = RecipeWrapper.from_body(json.loads(message.body), message_id=message.message_id)
    submitter.send_to("job_submitted", {"job_id": "1"})
    submitted_ids = {out.message_id for out in submitter.outbox}
    rwfile = tmp_path / "job" / "recipewrapper.json"
    rwfile.parent.mkdir()
    write_recipewrapper(rwfile, json.loads(message.body), message.message_id)
    with EmbeddedTransport(tmp_path / "broker.sqlite") as broker:
        for name in ("success", "done"):
            broker.declare_queue(f"{Q}.{name}")
        proc = zhpc(
            "--config",
            str(config),
            "wrap",
            "--recipewrapper",
            str(rwfile),
            "--workdir",
            str(rwfile.parent),
            "--",
            sys.executable,
            "-c",
            "pass",
        )
        assert proc.returncode == 0, proc.stderr
        results = collect(broker, f"{Q}.success", 1) + collect(broker, f"{Q}.done", 1)
    result_ids = {m.message_id for m in results}
    assert len(result_ids) == 2
    assert not submitted_ids & result_ids


def test_a_second_run_while_the_broker_is_away_keeps_the_first_runs_results(tmp_path: Path) -> None:
    """Item 7: two runs of the step while the broker is down: both results files stay."""
    config = write_config(
        tmp_path / "zhpc.yaml",
        {
            "broker": {"url": f"sqlite:///{tmp_path / 'broker.sqlite'}"},
        },
    )
    away = write_config(
        tmp_path / "away.yaml",
        {
            "broker": {
                "url": "amqp://guest:guest@127.0.0.1:9/",
                "connection_attempts": 1,
                "retry_delay": 0,
            },
        },
    )
    message = recipe_message(wrapped_recipe(Q, {}, {}))
    rwfile = tmp_path / "job" / "recipewrapper.json"
    rwfile.parent.mkdir()
    write_recipewrapper(rwfile, json.loads(message.body), message.message_id)
    kept = []
    for text in ("first", "second"):
        proc = zhpc(
            "--config",
            str(away),
            "wrap",
            "--recipewrapper",
            str(rwfile),
            "--workdir",
            str(rwfile.parent),
            "--",
            sys.executable,
            "-c",
            f"print({text!r})",
        )
        assert proc.returncode == 2, proc.stderr
        saved = re.search(r"saved in (\S+?\.results\.json)", proc.stderr)
        assert saved, proc.stderr
        kept.append(Path(saved.group(1)))
    assert kept[0] != kept[1] and all(path.is_file() for path in kept)
    with EmbeddedTransport(tmp_path / "broker.sqlite") as broker:
        broker.declare_queue(f"{Q}.success")
        for path in kept:
            resent = zhpc("--config", str(config), "wrap", "--resend", str(path))
            assert resent.returncode == 0, resent.stderr
        got = collect(broker, f"{Q}.success", 2)
    assert sorted(m.json()["payload"]["stdout"] for m in got) == ["first\n", "second\n"]

"""Loss and duplication windows around cluster jobs (issue 12, items 6 and 7), embedded broker."""

from __future__ import annotations

import json
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
    config = write_config(tmp_path / "zhpc.yaml", {
        "broker": {"url": f"sqlite:///{tmp_path / 'broker.sqlite'}"},
    })
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
        proc = zhpc("--config", str(config), "wrap", "--recipewrapper", str(rwfile),
                    "--workdir", str(rwfile.parent), "--", sys.executable, "-c", "pass")
        assert proc.returncode == 0, proc.stderr
        results = collect(broker, f"{Q}.success", 1) + collect(broker, f"{Q}.done", 1)
    result_ids = {m.message_id for m in results}
    assert len(result_ids) == 2
    assert not submitted_ids & result_ids

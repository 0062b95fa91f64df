"""Test-only plug-ins, found through ``zhpc_test_jobs-0.dist-info`` when this folder is on
PYTHONPATH (as it is for the batch jobs the tests submit)."""

from __future__ import annotations

import os
import time
from typing import Any

from zhpc.recipe import RecipeWrapper
from zhpc.service import Service
from zhpc.wrapper import Wrapper


class Slow(Service):
    """Sleeps payload["sleep"] seconds per message, then passes the payload on with its job."""

    def process(self, rw: RecipeWrapper, payload: Any) -> None:
        time.sleep(float(payload.get("sleep", 1.0)))
        rw.send(
            {
                **payload,
                "job": os.environ.get("SLURM_JOB_ID"),
                "node": os.environ.get("SLURMD_NODENAME"),
            }
        )


class Broken(Wrapper):
    """A wrapper plug-in with a bug: zhpc wrap must still report a failure."""

    def run(self, rw: RecipeWrapper | None) -> bool:
        raise ValueError("bug in the plug-in")

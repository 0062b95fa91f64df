"""Services for the scaler tests, registered under a fresh name per test (scaler_support).

Batch jobs import this module through PYTHONPATH, so each test's service name is its own
and the tests never touch (or count) jobs of other tests running on the shared cluster.
"""

from __future__ import annotations

import os
import time
from typing import Any

from zhpc.recipe import RecipeWrapper
from zhpc.service import Service


class Sleepy(Service):
    """Sleeps payload["sleep"] seconds per message, then passes the payload on."""

    def process(self, rw: RecipeWrapper, payload: Any) -> None:
        time.sleep(float(payload.get("sleep", 0.0)))
        rw.send({**payload, "job": os.environ.get("SLURM_JOB_ID") or os.environ.get("ZHPC_JOB_ID")})


class DiesAtStart(Service):
    """A service with a fatal bug: its jobs fail seconds after they start."""

    def setup(self) -> None:
        raise RuntimeError("this service cannot start (scaler crash-loop test)")

"""The chaos tests use the benchmark's own helpers (bench/chaoslib): the same private
RabbitMQ node, fault injectors and accounting as ``bench/chaos.py``."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

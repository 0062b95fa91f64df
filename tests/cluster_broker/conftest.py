"""Fixtures for the clustered-broker tests: the 3-node cluster on 127.0.0.1:5681-5683.

Missing, the tests skip on a developer machine and fail under ``CI=true``
(scripts/setup-cluster starts the cluster). Every test leaves all three nodes
running, whatever it killed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from cluster_support import NODES, PORTS, ClusterNodes
from testsupport import port_open, unavailable

HINT = "run scripts/setup-rabbitmq-cluster (as root) first"


@pytest.fixture
def cluster() -> Iterator[ClusterNodes]:
    down = [node for node in NODES if not port_open(PORTS[node])]
    if down:
        unavailable(f"RabbitMQ cluster nodes {', '.join(down)} do not answer", HINT)
    if os.geteuid() != 0:
        unavailable("killing cluster nodes needs root", HINT)
    nodes = ClusterNodes()
    yield nodes
    if any(not port_open(PORTS[node]) for node in NODES):
        nodes.start_all()

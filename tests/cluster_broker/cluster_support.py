"""The 3-node test cluster (scripts/setup-rabbitmq-cluster): its URLs, and killing nodes.

Also for benchmarks (the chaos benchmark's "broker node killed" fault):
``ClusterNodes().leader(queue)``, ``.kill(node)``, ``.start(node)``, ``.node_of(url)``.
Every call goes through the setup script, which knows the nodes' private cookie and
pid files; it never touches the single test broker on 5672.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "setup-rabbitmq-cluster"
NODES = ("zc1", "zc2", "zc3")
PORTS = {"zc1": 5681, "zc2": 5682, "zc3": 5683}


def node_url(node: str) -> str:
    return f"amqp://guest:guest@127.0.0.1:{PORTS[node]}/"


CLUSTER_URLS = [node_url(node) for node in NODES]


class ClusterNodes:
    """Find, kill and restart nodes of the test cluster (as root)."""

    def _run(self, *args: str, timeout: float = 240) -> str:
        done = subprocess.run(
            [str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise AssertionError(
                f"setup-rabbitmq-cluster {' '.join(args)} failed: {done.stderr.strip()[-2000:]}"
            )
        return done.stdout.strip()

    def leader(self, queue: str) -> str:
        """The node (zcN) that leads quorum queue ``queue`` now."""
        node = self._run("--leader", queue)
        if node not in NODES:
            raise AssertionError(f"no leader for {queue!r}: {node!r}")
        return node

    def kill(self, node: str) -> None:
        """SIGKILL the node's Erlang VM (returns once it is gone)."""
        self._run("--kill", node)

    def start(self, node: str) -> None:
        """Start the node again; returns once it takes AMQP connections (it has rejoined)."""
        self._run("--start-node", node)

    def start_all(self) -> None:
        self._run()

    @staticmethod
    def node_of(url: str | None) -> str:
        """zcN for a (display) URL of one of the nodes."""
        for node, port in PORTS.items():
            if url and f":{port}/" in url:
                return node
        raise AssertionError(f"{url!r} is not a node of the test cluster")

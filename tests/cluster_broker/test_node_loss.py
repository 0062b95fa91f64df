"""A broker node lost mid-stream: three services and a sink over the 3-node cluster lose nothing.

5,000 recipe instances go through ``double`` (3 service processes) into the
real ``jsonlines`` sink, over the cluster of scripts/setup-rabbitmq-cluster, with
``broker.url`` listing all three nodes. Three times in a row a node is SIGKILLed
mid-stream and started again: the leader of the work queue, or the node the services
are connected to. Every value arrives; a line that appears twice is a re-delivery
(same message id, same payload); nothing is dead-lettered; no service exits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from cluster_support import CLUSTER_URLS, ClusterNodes, node_url
from testsupport import wait_until

from zhpc.config import BrokerConfig
from zhpc.message import Message
from zhpc.recipe import RecipeWrapper
from zhpc.transport.base import dlq_name, retry_name
from zhpc.transport.rabbitmq import RabbitMQTransport

pytestmark = pytest.mark.rabbitmq_cluster

MESSAGES = 5000
KILLS = 3
#: Sink lines between a node's return and the next kill (so each kill is mid-stream).
LINES_BETWEEN_KILLS = 200
#: Simulated work per message in each of the three ``double`` services.
WORK_S = 0.02
DEADLINE = 400.0
RUNNER = Path(__file__).resolve().parents[1] / "services" / "runner.py"


@pytest.fixture
def queues() -> Iterator[Callable[[str], str]]:
    """Unique queue names, deleted (with their lanes and DLQs) from the cluster afterwards."""
    made: list[str] = []

    def make(prefix: str) -> str:
        made.append(f"zhpc-test-{prefix}-{uuid.uuid4().hex[:8]}")
        return made[-1]

    yield make
    with RabbitMQTransport(CLUSTER_URLS, connection_attempts=30, retry_delay=0.5) as transport:
        for name in made:
            for queue in (name, retry_name(name), dlq_name(name)):
                transport.delete_queue(queue)


class Pipeline:
    """``double`` x3 and ``jsonlines`` as ``python -m zhpc service`` processes."""

    def __init__(self, tmp_path: Path, urls: list[str], work: str, sink: str) -> None:
        self.home = tmp_path / "home"
        self.output = self.home / "output" / "cluster.jsonl"
        self.config = tmp_path / "zhpc.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "broker": {"url": urls, "connection_attempts": 60, "retry_delay": 0.5},
                    "services": {"jsonlines": {"queue": sink, "prefetch": 50}},
                }
            )
        )
        self.logs: list[Path] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        # double through tests/services/runner.py, for its simulated work: the stream
        # must last through three kills and restarts.
        double = [
            str(RUNNER),
            json.dumps(urls),
            "double",
            work,
            "--prefetch",
            "20",
            "--work",
            str(WORK_S),
        ]
        sink = ["-m", "zhpc", "-v", "--config", str(self.config), "service", "-s", "jsonlines"]
        for index, args in enumerate([double] * 3 + [sink]):
            log = tmp_path / f"service-{index}.log"
            self.logs.append(log)
            with log.open("ab") as handle:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, *args],
                        stdout=handle,
                        stderr=subprocess.STDOUT,
                        env={**_environ(), "ZHPC_HOME": str(self.home)},
                    )
                )

    def lines(self) -> list[dict]:
        if not self.output.exists():
            return []
        text = self.output.read_text()
        return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]

    def values(self) -> int:
        return len({line["payload"]["value"] for line in self.lines()})

    def log(self, index: int) -> str:
        return self.logs[index].read_text(errors="replace")

    def started(self) -> bool:
        return all("consuming" in self.log(i) for i in range(len(self.procs)))

    def connected_node(self, index: int) -> str:
        """The node service ``index`` connected to last, from its log."""
        connected = [
            line for line in self.log(index).splitlines() if "connected to RabbitMQ at" in line
        ]
        assert connected, f"service {index} never connected:\n{self.log(index)[-3000:]}"
        return ClusterNodes.node_of(connected[-1].rsplit(" ", 1)[-1])

    def assert_running(self) -> None:
        for index, proc in enumerate(self.procs):
            assert proc.poll() is None, (
                f"service {index} exited ({proc.returncode}):\n{self.log(index)[-3000:]}"
            )

    def stop(self) -> list[int]:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(60))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait(10))
        return codes


def _environ() -> dict[str, str]:
    return dict(os.environ)


def _run_with_kills(
    tmp_path: Path,
    queues: Callable[[str], str],
    cluster: ClusterNodes,
    urls: list[str],
    declare_urls: list[str],
    choose_victim: Callable[[Pipeline, str], str],
) -> list[str]:
    """Kill a node three times while the stream flows; the publisher uses ``declare_urls``.

    The messages go in four parts, the next one just before each kill, so that every
    kill is mid-stream however fast or slow the machine is.
    """
    work, sink = queues("cl-double"), queues("cl-sink")
    recipe = {
        "1": {"service": "double", "queue": work, "output": 2},
        "2": {
            "service": "jsonlines",
            "queue": sink,
            "parameters": {"output_filename": "cluster.jsonl"},
        },
    }
    transport = RabbitMQTransport.from_config(
        BrokerConfig(url=declare_urls, connection_attempts=60, retry_delay=0.5)
    )  # type: ignore[arg-type]
    transport.connect()
    try:
        for name in (work, sink):
            transport.declare_queue(name)
        outputs: list = []
        for n in range(MESSAGES):
            outputs += RecipeWrapper.from_recipe({**recipe, "start": [[1, {"value": n}]]}).start()
        part = len(outputs) // (KILLS + 1)
        parts = [outputs[i * part : (i + 1) * part] for i in range(KILLS)] + [
            outputs[KILLS * part :]
        ]
        transport.publish_many(parts[0])
        pipeline = Pipeline(tmp_path, urls, work, sink)
        victims: list[str] = []
        deadline = time.monotonic() + DEADLINE
        try:
            wait_until(pipeline.started, timeout=120, interval=0.1, what="the services to start")
            mark = 0
            while len(victims) < KILLS:
                victim = choose_victim(pipeline, work)
                if victims:
                    transport.publish_many(parts[len(victims)])
                wait_until(
                    lambda m=mark: pipeline.values() >= m + LINES_BETWEEN_KILLS,
                    timeout=max(1.0, deadline - time.monotonic()),
                    interval=0.02,
                    what=lambda: f"the stream to flow ({pipeline.values()} values)",
                )
                cluster.kill(victim)
                victims.append(victim)
                print(f"killed {victim} at {pipeline.values()} values", file=sys.stderr)
                cluster.start(victim)
                pipeline.assert_running()
                mark = pipeline.values()
            transport.publish_many(parts[-1])
            wait_until(
                lambda: pipeline.values() >= MESSAGES,
                timeout=max(1.0, deadline - time.monotonic()),
                interval=0.2,
                what=lambda: f"all values in the sink ({pipeline.values()})",
            )
            pipeline.assert_running()
        finally:
            codes = pipeline.stop()
        assert codes == [0] * len(codes), [
            pipeline.log(i)[-3000:] for i, c in enumerate(codes) if c
        ]
        lines = pipeline.lines()
        assert sorted({line["payload"]["value"] for line in lines}) == [
            2 * n for n in range(MESSAGES)
        ]
        by_id: dict[str, list[dict]] = defaultdict(list)
        for line in lines:
            by_id[line["message_id"]].append(line["payload"])
        assert len(by_id) == MESSAGES, "a duplicate line came with a new message id"
        assert all(all(p == group[0] for p in group) for group in by_id.values())
        for queue in (
            work,
            sink,
            retry_name(work),
            retry_name(sink),
            dlq_name(work),
            dlq_name(sink),
        ):
            assert transport.queue_depth(queue).ready == 0, queue
        logs = "".join(pipeline.log(i) for i in range(len(pipeline.procs)))
        print(
            f"victims {victims}; {len(lines) - MESSAGES} duplicate lines; "
            f"{logs.count('publishing it again on a fresh channel')} nacked publishes retried",
            file=sys.stderr,
        )
        return victims
    finally:
        transport.close()


@pytest.mark.timeout(600)
def test_work_queue_leader_killed_three_times(
    cluster: ClusterNodes, queues: Callable[[str], str], tmp_path: Path
) -> None:
    def leader(_pipeline: Pipeline, work: str) -> str:
        return cluster.leader(work)

    # The services connect to zc2 first: the leader (on zc1, which declared the queues)
    # is then, at least the first time, not the node they are connected to.
    urls = [node_url("zc2"), node_url("zc3"), node_url("zc1")]
    victims = _run_with_kills(tmp_path, queues, cluster, urls, CLUSTER_URLS, leader)
    assert len(victims) == KILLS


@pytest.mark.timeout(600)
def test_node_the_services_use_killed_three_times(
    cluster: ClusterNodes, queues: Callable[[str], str], tmp_path: Path
) -> None:
    def connected(pipeline: Pipeline, _work: str) -> str:
        # Usually all on one node; a connection the broker closed during a failover
        # (541 nodedown) may have sent one elsewhere: the node most of them use.
        nodes = [pipeline.connected_node(i) for i in range(len(pipeline.procs))]
        return Counter(nodes).most_common(1)[0][0]

    # The queues are declared on (so led from) zc3, not where the services connect.
    declare = [node_url("zc3"), node_url("zc1"), node_url("zc2")]
    victims = _run_with_kills(tmp_path, queues, cluster, CLUSTER_URLS, declare, connected)
    assert victims[0] == "zc1"  # the first listed node, where every service connected
    assert len(set(victims)) > 1  # after each loss they moved on to another node


@pytest.mark.timeout(300)
def test_go_with_the_first_node_down_sends_to_the_second(
    cluster: ClusterNodes, queues: Callable[[str], str], tmp_path: Path
) -> None:
    queue = queues("cl-go")
    config = tmp_path / "zhpc.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "broker": {"url": CLUSTER_URLS, "connection_attempts": 1, "retry_delay": 0},
                "services": {"dispatcher": {"queue": queue}},
            }
        )
    )
    recipe = tmp_path / "recipe.json"
    recipe.write_text(
        json.dumps(
            {"1": {"service": "x", "queue": "zhpc-test-cl-go-unused"}, "start": [[1, {"value": 1}]]}
        )
    )
    cluster.kill("zc1")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "zhpc", "-v", "--config", str(config), "go", "-f", str(recipe)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**_environ(), "ZHPC_HOME": str(tmp_path / "home")},
        )
        assert done.returncode == 0, done.stderr
        assert "127.0.0.1:5682" in done.stderr  # it says which node took the request
        with RabbitMQTransport(node_url("zc2")) as transport:
            got: list[Message] = []
            transport.subscribe(queue, lambda m: (got.append(m), transport.ack(m)))
            wait_until(
                lambda: transport.poll(0.2) or got,
                timeout=60,
                interval=0,
                what="the request on the second node",
            )
        assert got[0].json()["custom_recipe"]["1"]["queue"] == "zhpc-test-cl-go-unused"
        assert not list((tmp_path / "home").glob("spool/*")), "the request was spooled"
    finally:
        cluster.start("zc1")

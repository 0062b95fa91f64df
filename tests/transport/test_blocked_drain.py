"""Issue 12 item 3, the service half: a service whose outputs meet a blocked broker (a real
disk alarm) still drains within its grace and exits, instead of waiting for a confirm that
never comes until Slurm SIGKILLs it.

The alarm is raised on a private RabbitMQ node (bench/chaoslib), so nothing else using the
shared test broker is blocked meanwhile.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from testsupport import unavailable, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from chaoslib.rabbit import PrivateRabbit

from zhpc.config import ServiceConfig
from zhpc.recipe import RecipeWrapper
from zhpc.service import Service, ServiceRunner
from zhpc.transport.rabbitmq import RabbitMQTransport

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(240)]

DRAIN_GRACE = 5.0
CONFIRM_TIMEOUT = 3.0


def _alarmed(node: PrivateRabbit) -> bool:
    return "disk" in node.ctl("eval", "rabbit_alarm:get_alarms().")


def test_a_service_drains_within_its_grace_on_a_blocked_broker(tmp_path: Path) -> None:
    if not PrivateRabbit.available():
        unavailable("no RabbitMQ server installed to start a private node")
    node = PrivateRabbit(tmp_path / "rabbit", port=5697, dist_port=25697, management_port=None)
    node.start()
    alarm_on, took_it = threading.Event(), threading.Event()

    class SendsAfterTheAlarm(Service):
        def process(self, rw: RecipeWrapper, payload: Any) -> None:
            took_it.set()
            alarm_on.wait(120)
            rw.send({"value": payload})  # its confirm never comes while the alarm lasts

    queue = f"test.blocked.{uuid.uuid4().hex[:10]}"
    direct = RabbitMQTransport(node.url)
    through = RabbitMQTransport(
        node.url, confirm_timeout=CONFIRM_TIMEOUT, connection_attempts=5, retry_delay=0.2
    )
    runner = ServiceRunner(
        SendsAfterTheAlarm(
            "blocked", ServiceConfig(queue=queue, drain_grace=DRAIN_GRACE, idle_timeout=120)
        ),
        through,
    )
    drained_at: list[float] = []
    problems: list[BaseException] = []

    def block_then_drain() -> None:
        try:
            wait_until(took_it.is_set, timeout=60, what="the service to take the message")
            node.ctl("set_disk_free_limit", str(10**18))
            wait_until(lambda: _alarmed(node), timeout=30, interval=0.2, what="the disk alarm")
            alarm_on.set()
            time.sleep(0.5)  # let the output reach the blocked broker before the drain
            drained_at.append(time.monotonic())
            runner.drain.request("SIGTERM (test)")
        except BaseException as exc:
            problems.append(exc)
            runner.drain.request("test failed")

    try:
        direct.connect()
        through.connect()
        recipe = {
            "1": {"service": "blocked", "queue": queue, "output": 2},
            "2": {"service": "sink", "queue": f"{queue}.out"},
            "start": [[1, 7]],
        }
        direct.declare_queue(queue)
        direct.declare_queue(f"{queue}.out")
        direct.publish_many(RecipeWrapper.from_recipe(recipe).start())
        helper = threading.Thread(target=block_then_drain, daemon=True)
        helper.start()
        runner.run()
        ended = time.monotonic()
        helper.join(30)
        assert not problems, problems
        took = ended - drained_at[0]
        # The commit gives up after confirm_timeout and the input goes back: within the grace
        # (plus closing a blocked connection), never the minutes until a SIGKILL.
        assert took < DRAIN_GRACE + 5, f"the service took {took:.1f} s to drain"
        assert runner.processed == 0
    finally:
        alarm_on.set()
        try:
            node.ctl("set_disk_free_limit", "50000000")
            through.close()
            direct.close()
        finally:
            node.stop()

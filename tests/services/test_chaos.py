"""Chaos: services SIGKILLed at random mid-stream lose nothing (duplicates allowed).

500 recipe instances go through ``double`` (3 processes, 20 ms of simulated
work per message) and then the real ``jsonlines`` sink (2 processes started
with ``python -m zhpc service``). Each time the sink has grown by another
``KILL_EVERY`` lines a random service process is SIGKILLed and restarted.
At the end every value is in the sink file; a line that appears twice has the
same message id (recipe output ids are derived from the input's id).
"""

from __future__ import annotations

import json
import random
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml
from service_support import Broker, ServiceProcess, publish_recipe
from testsupport import wait_until

from zhpc.transport.base import dlq_name, retry_name

MESSAGES = 500
KILL_EVERY = 40
MIN_KILLS = 5
#: Fail when no new value reached the sink for this long (a lost message stalls the count)…
STALL = 60.0
#: …or when the whole run takes this long (slow CI machines and brokers still progress).
DEADLINE = 300.0


def test_random_sigkills_lose_nothing(broker: Broker, tmp_path: Path) -> None:
    # The default delivery limit: a message a killed consumer had prefetched (not started)
    # goes to the retry lane uncounted, so a dozen kills never push a good one to the DLQ.
    work, sink = broker.queue("chaos-double"), broker.queue("chaos-sink")
    home = tmp_path / "home"
    output = home / "output" / "chaos.jsonl"
    config = tmp_path / "zhpc.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "broker": {"url": broker.url, "delivery_limit": broker.delivery_limit},
                "services": {"jsonlines": {"queue": sink, "prefetch": 10}},
            }
        )
    )
    transport = broker.transport()
    recipe = {
        "1": {"service": "double", "queue": work, "output": 2},
        "2": {
            "service": "jsonlines",
            "queue": sink,
            "parameters": {"output_filename": "chaos.jsonl"},
        },
    }
    publish_recipe(transport, recipe, [{"value": n} for n in range(MESSAGES)])

    def start(role: str, index: int) -> ServiceProcess:
        log = tmp_path / f"{role}-{index}.log"
        if role == "double":
            return ServiceProcess.runner(
                log, broker.url, "double", work, "--prefetch", "10", "--work", "0.02"
            )
        return ServiceProcess(
            ["-m", "zhpc", "-v", "--config", str(config), "service", "-s", "jsonlines"],
            log,
            env={"ZHPC_HOME": str(home)},
        )

    roles = ["double"] * 3 + ["jsonlines"] * 2
    procs = [start(role, i) for i, role in enumerate(roles)]
    rng = random.Random()
    kills, restarts, last_kill_at = 0, len(procs), 0
    started = progressed = time.monotonic()
    seen = 0
    try:
        while True:
            lines = _lines(output)
            values = len({line["payload"]["value"] for line in lines})
            if values == MESSAGES:
                break
            now = time.monotonic()
            if values > seen:
                seen, progressed = values, now
            assert now - progressed < STALL and now - started < DEADLINE, (
                f"{values} of {MESSAGES} values ({len(lines)} lines) after {now - started:.0f} s "
                f"and {kills} kills, none new for {now - progressed:.0f} s; "
                f"last log:\n{procs[0].output()}"
            )
            if len(lines) - last_kill_at >= KILL_EVERY:
                victim = rng.randrange(len(procs))
                procs[victim].proc.send_signal(signal.SIGKILL)
                procs[victim].wait(10)
                procs[victim] = start(roles[victim], restarts)
                kills, restarts, last_kill_at = kills + 1, restarts + 1, len(lines)
            time.sleep(0.01)  # polling the sink file, not waiting for time to pass
        # Every value is in, but a double killed after sending its output and before its
        # ack left the input to be done again: that redo sends a duplicate to the sink.
        # Stop in pipeline order, each stage once its queues are settled, so that the
        # sinks outlive every duplicate.
        codes = [-1] * len(procs)
        for role, queues in (
            ("double", (work, retry_name(work))),
            ("jsonlines", (sink, retry_name(sink))),
        ):
            wait_until(
                lambda qs=queues: all(_settled(transport, q) for q in qs),
                60,
                0.05,
                lambda qs=queues: f"queues not settled: {[transport.queue_depth(q) for q in qs]}",
            )
            stage = [i for i, r in enumerate(roles) if r == role]
            for i in stage:  # a drain needs the handlers installed: wait for start-up
                proc = procs[i]
                wait_until(lambda p=proc: "consuming" in p.output(), 30, 0.05, "start-up")
                proc.proc.send_signal(signal.SIGTERM)
            for i in stage:
                codes[i] = procs[i].wait(30)
    finally:
        for proc in procs:
            proc.stop()
    assert codes == [0] * len(procs), [p.output() for p, c in zip(procs, codes, strict=True) if c]
    assert kills >= MIN_KILLS, f"only {kills} kills: the services finished too fast"

    lines = _lines(output)
    values = sorted(line["payload"]["value"] for line in lines)
    assert sorted(set(values)) == [2 * n for n in range(MESSAGES)]
    by_id: dict[str, list[dict]] = defaultdict(list)
    for line in lines:
        by_id[line["message_id"]].append(line["payload"])
    assert len(by_id) == MESSAGES, "a duplicate line came with a new message id"
    assert all(all(p == group[0] for p in group) for group in by_id.values())
    for queue in (work, sink, retry_name(work), retry_name(sink), dlq_name(work), dlq_name(sink)):
        assert transport.queue_depth(queue).ready == 0, queue
    print(f"{broker.kind}: {kills} kills, {len(lines) - MESSAGES} duplicate lines", file=sys.stderr)


def _lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    text = path.read_text()
    complete = text[: text.rfind("\n") + 1]  # a line being written right now is skipped
    return [json.loads(line) for line in complete.splitlines()]


def _settled(transport: Any, queue: str) -> bool:
    """Nothing ready and nothing held (where the broker tells: RabbitMQ does not, but a
    service it holds a message for finishes it while draining)."""
    depth = transport.queue_depth(queue)
    return depth.ready == 0 and not depth.unacked

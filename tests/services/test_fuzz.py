"""Fuzz: hypothesis-generated malformed and hostile messages at a service and at the Dispatcher,
on the embedded broker, RabbitMQ and ActiveMQ (bench/chaoslib/fuzz.py says what is generated).

Each input must end processed (every output it made confirmed) or quarantined in the
dead-letter queue with a reason; the runner ends normally; nothing is left behind.
``ZHPC_FUZZ_CASES`` sets the cases per test (default 250), ``ZHPC_FUZZ_SEED`` the seed (14);
``bench/fuzz.py`` runs 10,000.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path

import pytest
from service_support import Broker

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from chaoslib.fuzz import fuzz, good_recipe

from zhpc.message import Message, Outgoing
from zhpc.transport import Transport

CASES = int(os.environ.get("ZHPC_FUZZ_CASES", "250"))
SEED = int(os.environ.get("ZHPC_FUZZ_SEED", "14"))


# On ActiveMQ this found a NUL in a header cutting the delivered frame (docs/stomp.md, fz-14-36).
@pytest.mark.parametrize(
    "broker",
    [
        "embedded",
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
        pytest.param("stomp", marks=pytest.mark.activemq),
    ],
    indirect=True,
)
@pytest.mark.parametrize("target", ["service", "dispatcher"])
def test_hostile_messages_are_processed_or_quarantined_with_a_reason(
    broker: Broker, target: str, tmp_path: Path
) -> None:
    broker.delivery_limit = 1  # a failing case is retried once: the fuzz stays fast
    queue, out = broker.queue(f"fuzz-{target}"), broker.queue("fuzz-out")
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "fuzz.json").write_text(json.dumps(good_recipe(out, out)))
    report = fuzz(target, broker.transport, queue, out, CASES, rng_seed=SEED, recipes_dir=recipes)
    print(report)
    assert report["problems"] == [], report
    assert report["cases"] == CASES
    assert report["quarantined"] > 0 and report["processed"] > 0, report


def test_the_account_catches_an_input_acked_without_its_outputs(tmp_path: Path) -> None:
    """The check can fail: a runner transport that acks every other input but drops its
    outputs is reported."""
    broker = Broker("embedded", f"sqlite://{tmp_path / 'broker.sqlite'}")
    queue, out = broker.queue("fuzz-faulty"), broker.queue("fuzz-out")
    broker.delivery_limit = 1
    connections: list[Transport] = []

    def connect() -> Transport:
        transport = broker.transport()
        connections.append(transport)
        if len(connections) == 2:  # the runner's: every other commit loses its outputs
            commit, calls = transport.commit, []

            def lossy(outputs: Sequence[Outgoing], ack: Message) -> Future[None]:
                calls.append(1)
                return commit([] if len(calls) % 2 else outputs, ack)

            transport.commit = lossy  # type: ignore[method-assign]
        return transport

    try:
        report = fuzz("service", connect, queue, out, 60, rng_seed=3)
    finally:
        broker.teardown()
    assert any("acked with 0 of" in p for p in report["problems"]), report

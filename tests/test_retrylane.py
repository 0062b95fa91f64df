"""Reading a retry lane: one message at a time, each settled before the next is taken."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest

from zhpc.message import Message, Outgoing
from zhpc.retrylane import LANE_BATCH, RetryLane
from zhpc.transport.accounting import retry_name
from zhpc.transport.embedded import EmbeddedTransport


@pytest.fixture
def transport(tmp_path: Path) -> Iterator[EmbeddedTransport]:
    with EmbeddedTransport(tmp_path / "broker.sqlite") as t:
        t.declare_queue("work")
        yield t


def _fill_lane(transport: EmbeddedTransport, count: int) -> None:
    transport.publish_many(
        [
            Outgoing(destination=retry_name("work"), body=f'{{"n": {n}}}'.encode())
            for n in range(count)
        ]
    )


def test_the_next_lane_message_waits_until_the_last_ones_commit_settled(
    transport: EmbeddedTransport,
) -> None:
    """Before the fix the runner took the next lane message at once: a poison taken then
    could kill the process before the previous one's ack arrived (tests/services/test_poison.py)."""
    _fill_lane(transport, 3)
    lane = RetryLane(transport, "work", interval=60, clock=time.monotonic, owner="test")
    commits: list[Future[None]] = []
    previous_settled: list[bool] = []

    def process(message: Message) -> Future[None]:
        previous_settled.append(all(commit.done() for commit in commits))
        transport.ack(message)
        commit: Future[None] = Future()
        # settled later by another thread, as a broker's confirm would be
        threading.Timer(0.05, commit.set_result, (None,)).start()
        commits.append(commit)
        return commit

    lane.read(idle=True, should_stop=lambda: False, process=process, dead_letter=pytest.fail)
    assert previous_settled == [True, True, True]


def test_a_look_takes_at_most_a_batch_and_stops_when_told(transport: EmbeddedTransport) -> None:
    _fill_lane(transport, LANE_BATCH + 5)
    lane = RetryLane(transport, "work", interval=60, clock=time.monotonic, owner="test")
    taken: list[int] = []

    def process(message: Message) -> None:
        taken.append(message.json()["n"])
        transport.ack(message)

    lane.read(idle=True, should_stop=lambda: False, process=process, dead_letter=pytest.fail)
    assert taken == list(range(LANE_BATCH))
    lane.read(idle=False, should_stop=lambda: False, process=process, dead_letter=pytest.fail)
    assert len(taken) == LANE_BATCH, "not idle and the next look not due yet: nothing taken"
    lane.read(
        idle=True,
        should_stop=lambda: len(taken) > LANE_BATCH + 1,
        process=process,
        dead_letter=pytest.fail,
    )
    assert taken == list(range(LANE_BATCH + 2))

"""Loss and crash windows of the embedded broker (issue 12, item 4)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from testsupport import wait_until

from zhpc import procinfo
from zhpc.errors import TransportError
from zhpc.message import Message, Outgoing
from zhpc.transport import embedded
from zhpc.transport.embedded import EmbeddedTransport


@pytest.fixture
def short_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writers give up after 0.2 s instead of 30 s (set before a transport connects)."""
    monkeypatch.setattr(embedded, "BUSY_TIMEOUT", 0.2)


@contextlib.contextmanager
def write_lock(path: Path) -> Iterator[None]:
    """Another process's view: a writer holding the file's write lock."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        db.execute("ROLLBACK")
        db.close()


def test_a_failed_commit_and_nack_do_not_hold_the_lease_forever(
    tmp_path: Path, short_busy_timeout: None
) -> None:
    """The runner's path when the file is locked past the timeout: the commit fails, the
    failure cannot be recorded, the nack fails too. The message must come back."""
    path = tmp_path / "broker.sqlite"
    with EmbeddedTransport(path) as t:
        t.publish(Outgoing("q", b"work"))
        got: list[Message] = []
        t.subscribe("q", got.append, prefetch=1)
        wait_until(lambda: t.poll(0.1) or got, 10)
        with write_lock(path):
            with pytest.raises(TransportError):
                t.commit([Outgoing("out", b"result")], ack=got[0])
            with pytest.raises(TransportError):
                t.nack(got[0], requeue=True)
        back: list[Message] = []

        def returned() -> bool:  # a work queue returns to its retry lane (accounting)
            t.poll(0.1)
            fetched = t.fetch("retry.q")
            if fetched is not None:
                back.append(fetched)
            return bool(back)

        wait_until(returned, 10, interval=0, what="the message back in its retry lane")
        assert back[0].body == b"work"
        t.ack(back[0])


def test_a_busy_timeout_in_poll_does_not_escape(tmp_path: Path, short_busy_timeout: None) -> None:
    path = tmp_path / "broker.sqlite"
    with EmbeddedTransport(path) as t:
        got: list[Message] = []
        t.subscribe("q", got.append)
        t.publish(Outgoing("q", b"1"))
        with write_lock(path):
            embedded_reclaim_due(t)
            assert t.poll(0.5) == 0  # nothing leased (locked), and no exception
        wait_until(lambda: t.poll(0.1) or got, 10)


def embedded_reclaim_due(t: EmbeddedTransport) -> None:
    t._last_reclaim = 0.0  # the reclaim pass (which writes) is due on the next poll


def test_idle_consumers_are_not_looked_up_in_proc_on_every_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "broker.sqlite"
    others = [EmbeddedTransport(path) for _ in range(4)]
    for other in others:
        other.connect()
    calls = []
    real = procinfo.identity
    monkeypatch.setattr(procinfo, "identity", lambda pid: calls.append(pid) or real(pid))
    try:
        with EmbeddedTransport(path) as t:
            t.subscribe("q", lambda m: None)
            for _ in range(20):  # 20 reclaim passes (4 a second would be 5 s of polling)
                t._last_reclaim = 0.0
                t.poll(0)
        # On main: 4 lookups a pass (80). Idle consumers (holding no message) are looked
        # at once per PID_CHECK_IDLE.
        assert len(calls) <= 2 * len(others), calls
    finally:
        for other in others:
            other.close()

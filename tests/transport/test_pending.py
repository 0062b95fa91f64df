"""PendingCommits: what ``flush`` waits for and reports, on every transport that commits."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import pytest

from zhpc.errors import TransportError
from zhpc.transport.pending import PendingCommits


def test_flush_waits_for_commits_settled_on_another_thread() -> None:
    pending = PendingCommits()
    futures: list[Future[None]] = [Future() for _ in range(3)]
    for future in futures:
        pending.track(future)
    settle = threading.Timer(0.05, lambda: [f.set_result(None) for f in futures])
    settle.start()
    pending.flush(10)
    assert all(f.done() for f in futures)
    assert pending.unsettled() == []


def test_flush_reports_a_commit_still_unconfirmed() -> None:
    pending = PendingCommits()
    pending.track(Future())
    with pytest.raises(TransportError, match="1 commit"):
        pending.flush(0.01)


def test_flush_reports_failures_once() -> None:
    pending = PendingCommits()
    for text in ("first", "second"):
        failed: Future[None] = Future()
        failed.set_exception(TransportError(text))
        pending.track(failed)
    with pytest.raises(TransportError, match=r"first.*and 1 more"):
        pending.flush(0)
    pending.flush(0)  # reported once


def test_settled_commits_are_dropped_and_their_failures_kept() -> None:
    """Thousands of settled commits are dropped as they settle; one that never settles
    is still waited for, and a failure among the dropped ones is still reported."""
    pending = PendingCommits()
    stuck: Future[None] = Future()
    pending.track(stuck)
    failed: Future[None] = Future()
    failed.set_exception(TransportError("nacked"))
    pending.track(failed)
    for _ in range(5000):
        done: Future[None] = Future()
        done.set_result(None)
        pending.track(done)
    assert len(pending._open) == 1
    assert pending.unsettled() == [stuck]
    stuck.set_result(None)
    with pytest.raises(TransportError, match="nacked"):
        pending.flush(1)

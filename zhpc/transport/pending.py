"""Commits not yet settled: what ``Transport.flush`` waits for and what it reports.

A transport's ``commit`` returns a future that its I/O side settles later.
:class:`PendingCommits` keeps those futures in commit order so that ``flush``
(and a draining service) can wait for all of them, and remembers the failures
of the settled ones for ``flush`` to raise. It adds no callback to a future:
settled futures are dropped as new ones arrive: the oldest at once (confirms
mostly come in commit order), the others in a sweep once over a thousand are
kept, so that one commit that never settles does not keep every later one.
"""

from __future__ import annotations

import collections
import threading
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures

from zhpc.errors import TransportError

__all__ = ["PendingCommits"]

#: Above this many futures kept, the settled ones are dropped (and at least twice as many
#: as are still unsettled must arrive before the next sweep: amortised O(1) per commit).
_SWEEP_ABOVE = 1024


class PendingCommits:
    """Futures of commits, oldest first; safe to use from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: collections.deque[Future[None]] = collections.deque()
        self._failures: list[BaseException] = []
        self._sweep_at = _SWEEP_ABOVE

    def track(self, future: Future[None]) -> None:
        """Remember ``future`` until it settled and ``flush`` (or a sweep) saw it."""
        with self._lock:
            futures = self._futures
            while futures and futures[0].done():  # confirms mostly come in commit order
                self._settled(futures.popleft())
            futures.append(future)
            if len(futures) > self._sweep_at:
                self._sweep()

    def unsettled(self) -> list[Future[None]]:
        """The futures not settled yet (a snapshot)."""
        with self._lock:
            return [future for future in self._futures if not future.done()]

    def wait(self, timeout: float | None = None) -> list[Future[None]]:
        """Wait until every commit so far settled, at most ``timeout``; the late ones."""
        _done, late = wait_futures(self.unsettled(), timeout=timeout)
        return list(late)

    def flush(self, timeout: float | None = None) -> None:
        """Wait for every commit; TransportError if one is still unsettled or one failed."""
        late = self.wait(timeout)
        with self._lock:
            self._sweep()
            failures, self._failures = self._failures, []
        if late:
            raise TransportError(f"{len(late)} commit(s) still unconfirmed after {timeout} s")
        if failures:
            extra = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise TransportError(f"a commit failed: {failures[0]}{extra}")

    def _sweep(self) -> None:
        """Drop every settled future (lock held); keep the unsettled in order."""
        kept: collections.deque[Future[None]] = collections.deque()
        for future in self._futures:
            if future.done():
                self._settled(future)
            else:
                kept.append(future)
        self._futures = kept
        self._sweep_at = max(_SWEEP_ABOVE, 2 * len(kept))

    def _settled(self, future: Future[None]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self._failures.append(future.exception())  # type: ignore[arg-type]

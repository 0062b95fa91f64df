"""Commits not yet settled: what ``Transport.flush`` waits for and what it reports.

A transport's ``commit`` returns a future that its I/O side settles later.
:class:`PendingCommits` keeps the unsettled ones, in commit order, so that
``flush`` (and a draining service) can wait for all of them, and remembers the
failures of the settled ones for ``flush`` to raise. A settled future removes
itself (a done-callback), so tracking costs the same whether confirms come in
order or not, and one commit that never settles keeps only itself.
"""

from __future__ import annotations

from concurrent.futures import Future
from concurrent.futures import wait as wait_futures

from zhpc.errors import TransportError

__all__ = ["PendingCommits"]


class PendingCommits:
    """Futures of commits, oldest first; safe to use from any thread.

    Only single dict and list operations touch the shared state, each atomic
    under the GIL, so no lock is taken per commit (the hop's hot path).
    """

    def __init__(self) -> None:
        self._open: dict[int, Future[None]] = {}
        self._failures: list[BaseException] = []

    def track(self, future: Future[None]) -> None:
        """Remember ``future`` until it settled; a failure is kept for ``flush``."""
        self._open[id(future)] = future
        future.add_done_callback(self._settled)  # runs at once if already settled

    def _settled(self, future: Future[None]) -> None:
        self._open.pop(id(future), None)
        if not future.cancelled():
            error = future.exception()
            if error is not None:
                self._failures.append(error)

    def unsettled(self) -> list[Future[None]]:
        """The futures not settled yet (a snapshot, oldest first)."""
        return [future for future in list(self._open.values()) if not future.done()]

    def wait(self, timeout: float | None = None) -> list[Future[None]]:
        """Wait until every commit so far settled, at most ``timeout``; the late ones."""
        _done, late = wait_futures(self.unsettled(), timeout=timeout)
        return list(late)

    def flush(self, timeout: float | None = None) -> None:
        """Wait for every commit; TransportError if one is still unsettled or one failed."""
        late = self.wait(timeout)
        failures = self._take_failures()
        if late:
            raise TransportError(f"{len(late)} commit(s) still unconfirmed after {timeout} s")
        if failures:
            extra = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise TransportError(f"a commit failed: {failures[0]}{extra}")

    def _take_failures(self) -> list[BaseException]:
        taken = []
        while self._failures:  # pop one by one: one appended meanwhile is never dropped
            taken.append(self._failures.pop(0))
        return taken

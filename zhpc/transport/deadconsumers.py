"""Which consumers of an embedded broker's file are dead, so that their messages can go back.

The rule (a gone, zombie or recycled pid on this host, or a heartbeat older than
the consumer's own lease timeout) is in :mod:`zhpc.transport.embedded`'s "Leases
and reclaim". The transport asks in two steps: :meth:`DeadConsumers.suspects`
looks cheaply, outside any transaction; :meth:`DeadConsumers.confirm` decides
again inside the transaction that returns their messages, so that a consumer
that came back meanwhile (it was stopped) keeps them.
"""

from __future__ import annotations

import socket
import sqlite3
import time

from zhpc import procinfo

#: Seconds between two /proc looks at another consumer's pid (one holding leases);
#: consumers holding nothing are looked at every PID_CHECK_IDLE seconds.
PID_CHECK_INTERVAL = 1.0
PID_CHECK_IDLE = 10.0


class DeadConsumers:
    """One transport's view of the other consumers' liveness (not thread-safe: the
    transport calls it under its lock)."""

    def __init__(self) -> None:
        #: consumer id -> when its pid was last looked up (time.monotonic)
        self._pid_checked: dict[int, float] = {}

    def suspects(self, db: sqlite3.Connection, own: int | None) -> tuple[list[int], list[int]]:
        """Consumers other than ``own`` whose pid is gone, and those whose heartbeat is stale.

        A pid is looked up in /proc only for consumers of this host, at most every
        PID_CHECK_INTERVAL s for one holding leases (whose messages wait on it) and
        every PID_CHECK_IDLE s for the others.
        """
        host = socket.gethostname()
        now, clock = time.time(), time.monotonic()
        holding = {
            r[0]
            for r in db.execute("SELECT DISTINCT consumer FROM messages WHERE consumer IS NOT NULL")
        }
        gone: list[int] = []
        stale: list[int] = []
        seen = set()
        for cid, chost, pid, pid_start, heartbeat, timeout in db.execute(
            "SELECT id, host, pid, pid_start, heartbeat, lease_timeout FROM consumers"
        ).fetchall():
            seen.add(cid)
            if cid == own:
                continue
            local = chost == host and pid_start != "?"
            if local and self._pid_check_due(cid, cid in holding, clock):
                start = procinfo.identity(pid)
                if start is None or (start != "?" and start != pid_start):
                    gone.append(cid)
                    continue
            if timeout is not None and heartbeat < now - timeout:
                stale.append(cid)
        for cid in set(self._pid_checked) - seen:
            del self._pid_checked[cid]
        return gone, stale

    @staticmethod
    def confirm(db: sqlite3.Connection, gone: list[int], stale: list[int]) -> list[int]:
        """Of the suspects, those still dead now (``db`` is in the reclaiming transaction)."""
        dead = []
        for cid in gone:  # a dead pid stays dead: only check that nobody reclaimed it
            if db.execute("SELECT 1 FROM consumers WHERE id=?", (cid,)).fetchone():
                dead.append(cid)
        now = time.time()
        for cid in stale:
            row = db.execute(
                "SELECT heartbeat, lease_timeout FROM consumers WHERE id=?", (cid,)
            ).fetchone()
            if row is not None and row[1] is not None and row[0] < now - row[1]:
                dead.append(cid)
        return dead

    def _pid_check_due(self, cid: int, holding: bool, clock: float) -> bool:
        last = self._pid_checked.get(cid)
        interval = PID_CHECK_INTERVAL if holding else PID_CHECK_IDLE
        if last is not None and clock - last < interval:
            return False
        self._pid_checked[cid] = clock
        return True

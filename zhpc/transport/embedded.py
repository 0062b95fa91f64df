"""The embedded broker: durable queues in one SQLite file, shared by processes on one machine.

Why: a single machine (a laptop, a login node, the unit tests) needs zhpc's
delivery guarantees without running RabbitMQ. Every process opens the same
file; SQLite's write lock serialises changes (``BEGIN IMMEDIATE`` for every
write, a busy timeout so writers queue instead of failing).

Schema (``PRAGMA user_version`` = 2; the tables, their migration and the stored
header format are :mod:`zhpc.transport.sqlitefile`)::

    queues(name PK, delivery_limit NULL=unlimited, topic NULL, owner NULL,
           dead_letter_to NULL)
        A work queue, its ``retry.<queue>`` lane, its ``dlq.<queue>``, or (topic
        and owner set) one subscriber's transient broadcast queue. A message
        returned more than ``delivery_limit`` times moves to ``dead_letter_to``
        (NULL: ``dlq.<queue>``, as schema 1 files have it); see
        ``zhpc.transport.accounting`` for why a work queue's limit is 0.
    messages(id PK autoincrement, queue, body BLOB, headers JSON, message_id,
             ready_at, expires_at NULL, deliveries, consumer NULL)
        ``consumer`` NULL means ready; otherwise the row is leased to that
        consumer. Partial index on (queue, id) WHERE consumer IS NULL keeps
        "next ready message" an index lookup however many are in flight.
    consumers(id PK, host, pid, pid_start, heartbeat, lease_timeout NULL)
        One row per connected EmbeddedTransport; ``pid_start`` is the boot id
        plus the process start time, so a recycled pid is not mistaken for us.
        Each consumer states its own lease timeout, so transports configured
        differently never evict each other early.
    subscriptions(consumer, queue)   for queue_depth's consumer count.
    bindings(exchange, routing_key, queue)   direct-exchange routes (see bind()).

Leases and reclaim:

* ``poll`` leases up to ``prefetch`` ready messages per subscription in one
  transaction (``deliveries`` + 1, ``consumer`` = us); ack deletes the row only
  if the lease is still ours (same consumer and delivery number).
* A consumer is dead when it runs on this host and its pid is gone, a zombie,
  or a different process (start time differs), or when its heartbeat is older
  than its own ``lease_timeout`` (the only test possible for other hosts, and
  it also frees messages held by a stopped process). Any transport reclaims dead
  consumers from ``poll`` and ``queue_depth`` (at most every
  ``RECLAIM_INTERVAL`` s): their leased messages become ready again, or go to
  ``dlq.<queue>`` once delivered more than ``delivery_limit`` times (limit N:
  at most N+1 deliveries, the RabbitMQ 3.10 rule; nack with requeue counts the
  same way); their broadcast queues and subscriptions are deleted.
* A transport that finds its own consumer row gone (it was stopped longer than
  the lease timeout) registers again; settling a message whose lease it lost
  is a no-op with a warning, since someone else will get or got it.

Threads: the caller's thread does all message work on one connection, under a
lock (a forked child must connect its own transport). A daemon heartbeat
thread with its own connection only refreshes ``consumers.heartbeat`` so that
long callbacks keep their leases.

Durability: WAL with ``synchronous=NORMAL``: every committed change survives
the death of any process (SIGKILL included), not an OS crash or power loss,
which may lose the last transactions (never corrupt the file). Do not put the
file on NFS or Lustre: SQLite locking is only reliable on a local disk.

Semantics beyond RabbitMQ's: ``commit`` is one SQLite transaction, so outputs
and the ack happen together or not at all. A delayed message's expiration
counts from when it becomes visible. The ``x-death`` entry's ``count`` is the
number of deliveries (RabbitMQ's counts how often the message died: 1).
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zhpc import procinfo
from zhpc.errors import TransportError, UnroutableError
from zhpc.message import Message, Outgoing
from zhpc.transport.accounting import (
    HANDBACK_HEADER,
    dlq_name,
    handbacks,
    is_dead_letter_queue,
    lane_limit,
    origin_queue,
    retry_name,
)
from zhpc.transport.base import Callback, QueueDepth, Transport
from zhpc.transport.deadconsumers import DeadConsumers
from zhpc.transport.sqlitefile import decode_headers, encode_headers, prepare

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.config import BrokerConfig

log = logging.getLogger(__name__)

#: Seconds between reclaim passes (dead consumers) triggered by poll/queue_depth.
RECLAIM_INTERVAL = 0.25
#: Longest wait between two looks at the file while poll() has nothing to do.
MAX_IDLE_WAIT = 0.05
#: Messages leased per transaction at most (bounded by each subscription's prefetch).
MAX_BATCH = 500
BUSY_TIMEOUT = 30.0
#: Milliseconds poll waits for the write lock to lease new messages before it looks
#: again after the holder's commit (instead of queueing for up to BUSY_TIMEOUT).
LEASE_LOCK_WAIT_MS = 20
#: Seconds between two warnings that the file stayed locked (or unwritable) during poll.
_BUSY_WARNING_INTERVAL = 10.0
DEFAULT_LEASE_TIMEOUT = 120.0


# -- in-memory bookkeeping ---------------------------------------------------------------------
@dataclass(eq=False)
class _Subscription:
    id: str
    queue: str
    callback: Callback
    prefetch: int
    broadcast: bool = False
    topic: str | None = None
    buffer: deque[Message] = field(default_factory=deque)
    unsettled: int = 0  # delivered to the callback, not yet settled
    active: bool = True

    @property
    def credit(self) -> int:
        return self.prefetch - self.unsettled - len(self.buffer)


class _Locked(Exception):
    """Another connection holds the write lock (only from ``_tx(wait=False)``)."""


@dataclass(eq=False, slots=True)
class _Lease:
    """The transport's handle on one delivery: identifies the lease, not just the row."""

    row: int
    consumer: int
    deliveries: int
    subscription: _Subscription
    settled: bool = False


class EmbeddedTransport(Transport):
    """The ``sqlite:///path`` broker. Lifecycle: ``connect()`` … ``close()``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        delivery_limit: int = 5,
        lease_timeout: float | None = DEFAULT_LEASE_TIMEOUT,
    ) -> None:
        super().__init__(delivery_limit=delivery_limit)
        self.path = Path(path)
        #: Seconds without heartbeat after which any consumer counts as dead (None: never).
        self.lease_timeout = lease_timeout
        self._db: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._consumer: int | None = None
        self._subs: dict[str, _Subscription] = {}
        self._fetchers: dict[str, _Subscription] = {}
        self._declared: set[str] = set()
        self._pending_declared: set[str] = set()
        self._failed_commits: list[BaseException] = []
        self._last_reclaim = 0.0
        self._dead = DeadConsumers()
        self._stranded: list[_Lease] = []
        self._busy_warned = 0.0
        self._data_version = -1
        self._dirty = True
        self._evicted = threading.Event()
        self._stop = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None

    @classmethod
    def from_config(cls, config: BrokerConfig) -> EmbeddedTransport:
        """Lease timeout: twice the configured heartbeat (0 disables expiry; pids still count)."""
        timeout = 2.0 * config.heartbeat if config.heartbeat > 0 else None
        return cls(
            config.sqlite_path(), delivery_limit=config.delivery_limit, lease_timeout=timeout
        )

    def __repr__(self) -> str:
        return f"EmbeddedTransport({str(self.path)!r})"

    # -- lifecycle ---------------------------------------------------------------------------
    def connect(self) -> None:
        if self._db is not None:
            return
        try:
            self._pid = os.getpid()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = self._open()
            prepare(self._db)
            self._register()
        except (OSError, sqlite3.Error) as exc:
            self._close_db()
            raise TransportError(f"cannot open embedded broker {self.path}: {exc}") from None
        self._stop.clear()
        if self.lease_timeout is not None:
            self._heartbeat_thread = threading.Thread(
                target=self._heartbeat_loop, name="zhpc-embedded-heartbeat", daemon=True
            )
            self._heartbeat_thread.start()

    def close(self) -> None:
        """Unsettled messages go back (counted as deliveries); our broadcast queues go away."""
        if self._db is None:
            return
        self._stop.set()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout=5)
            self._heartbeat_thread = None
        try:
            with self._lock, self._tx() as db:
                for sub in self._subs.values():
                    self._release_buffer(db, sub)
                self._subs.clear()
                returned = db.execute(
                    "SELECT id FROM messages WHERE consumer=?", (self._consumer,)
                ).fetchall()
                self._return_rows(db, [r[0] for r in returned])
                self._forget_consumer(db, self._consumer)
        except TransportError as exc:
            log.warning("closing embedded broker %s: %s", self.path, exc)
        finally:
            self._close_db()

    def _close_db(self) -> None:
        if self._db is not None:
            self._db.close()
        self._db = None
        self._consumer = None

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _register(self) -> None:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO consumers(host, pid, pid_start, heartbeat, lease_timeout) "
                "VALUES (?,?,?,?,?)",
                (
                    socket.gethostname(),
                    os.getpid(),
                    procinfo.identity(os.getpid()) or "?",
                    time.time(),
                    self.lease_timeout,
                ),
            )
            self._consumer = cur.lastrowid
            for sub in self._subs.values():
                self._attach(db, sub)
        self._evicted.clear()

    def _heartbeat_loop(self) -> None:
        """Keep our consumer row fresh; runs on its own connection, touches nothing else."""
        assert self.lease_timeout is not None
        interval = max(self.lease_timeout / 6.0, 0.05)
        try:
            db = self._open()
        except sqlite3.Error as exc:
            log.error("embedded broker heartbeat cannot open %s: %s", self.path, exc)
            return
        try:
            while not self._stop.wait(interval):
                consumer = self._consumer
                if consumer is None:
                    continue
                try:
                    cur = db.execute(
                        "UPDATE consumers SET heartbeat=? WHERE id=?", (time.time(), consumer)
                    )
                except sqlite3.Error as exc:
                    log.warning("embedded broker heartbeat failed: %s", exc)
                    continue
                if cur.rowcount == 0 and consumer == self._consumer and not self._stop.is_set():
                    self._evicted.set()
        finally:
            db.close()

    def _check_registered(self) -> None:
        """Re-register if another process declared us dead (we were stopped too long)."""
        if self._evicted.is_set():
            log.warning(
                "embedded broker: this consumer was presumed dead (no heartbeat for %ss); "
                "its messages were handed to others, registering again",
                self.lease_timeout,
            )
            for sub in self._subs.values():
                sub.buffer.clear()
            self._register()

    # -- transactions ------------------------------------------------------------------------
    @contextmanager
    def _tx(self, *, wait: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction: taken at once (BEGIN IMMEDIATE), rolled back on any error.

        ``wait=False``: raise _Locked if the write lock stays taken LEASE_LOCK_WAIT_MS.
        """
        db = self._read()
        try:
            if wait:
                db.execute("BEGIN IMMEDIATE")
            else:
                db.execute(f"PRAGMA busy_timeout={LEASE_LOCK_WAIT_MS}")
                try:
                    db.execute("BEGIN IMMEDIATE")
                finally:
                    db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
        except sqlite3.OperationalError as exc:
            if not wait and "locked" in str(exc):
                raise _Locked from None
            raise TransportError(f"embedded broker {self.path}: {exc}") from None
        except sqlite3.Error as exc:
            raise TransportError(f"embedded broker {self.path}: {exc}") from None
        self._pending_declared.clear()
        try:
            yield db
            db.execute("COMMIT")
        except BaseException as exc:
            self._pending_declared.clear()
            with suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise TransportError(f"embedded broker {self.path}: {exc}") from None
            raise
        self._dirty = True
        self._declared.update(self._pending_declared)

    def _read(self) -> sqlite3.Connection:
        if self._db is None:
            raise TransportError("embedded broker: not connected")
        if self._pid != os.getpid():
            # A forked child shares the parent's SQLite handle and consumer row: unsafe.
            raise TransportError("embedded broker: connection used after fork; connect anew")
        return self._db

    # -- topology ----------------------------------------------------------------------------
    def declare_queue(self, name: str, *, delivery_limit: int | None = None) -> None:
        with self._lock, self._tx() as db:
            self._declare(db, name, delivery_limit)

    def _declare(self, db: sqlite3.Connection, name: str, limit: int | None = None) -> None:
        """Create ``name``, its retry lane and its dead-letter queue unless they exist.

        The first arguments win, as on RabbitMQ. Declaring a lane declares its queue.
        """
        if name in self._declared:
            return
        if not name:
            raise TransportError("embedded broker: a queue needs a name")
        if is_dead_letter_queue(name):
            db.execute("INSERT OR IGNORE INTO queues(name) VALUES (?)", (name,))
        else:
            work = origin_queue(name)
            limit = self.delivery_limit if limit is None else limit
            lane, dlq = retry_name(work), dlq_name(work)
            rows = [(work, 0, lane if lane_limit(limit) is not None else dlq), (dlq, None, None)]
            if lane_limit(limit) is not None:
                rows.append((lane, lane_limit(limit), dlq))
            db.executemany(
                "INSERT OR IGNORE INTO queues(name, delivery_limit, dead_letter_to) VALUES (?,?,?)",
                rows,
            )
        self._pending_declared.add(name)

    def bind(self, queue: str, exchange: str, routing_key: str) -> None:
        """Route messages published to ``exchange`` with exactly ``routing_key`` into ``queue``.

        Direct-exchange semantics like ``amq.direct``; the default exchange ``""``
        routes to the queue named by the routing key without any binding.
        """
        with self._lock, self._tx() as db:
            self._declare(db, queue)
            db.execute(
                "INSERT OR IGNORE INTO bindings(exchange, routing_key, queue) VALUES (?,?,?)",
                (exchange, routing_key, queue),
            )

    def delete_queue(self, name: str) -> None:
        """Delete ``name``, its messages and bindings (not its DLQ); a missing queue is fine."""
        with self._lock, self._tx() as db:
            db.execute("DELETE FROM messages WHERE queue=?", (name,))
            db.execute("DELETE FROM bindings WHERE queue=?", (name,))
            db.execute("DELETE FROM queues WHERE name=?", (name,))
            self._declared.discard(name)

    # -- sending -----------------------------------------------------------------------------
    def publish(self, message: Outgoing) -> None:
        with self._lock, self._tx() as db:
            self._insert(db, message, time.time())

    def publish_many(self, messages: Sequence[Outgoing]) -> None:
        """All in one transaction: either every message is stored or none."""
        with self._lock, self._tx() as db:
            now = time.time()
            for message in messages:
                self._insert(db, message, now)

    def _insert(self, db: sqlite3.Connection, message: Outgoing, now: float) -> None:
        body = message.body
        if not isinstance(body, bytes | bytearray | memoryview):
            raise TransportError(f"message body must be bytes, not {type(body).__name__}")
        ready_at = now + message.delay if message.delay and message.delay > 0 else 0.0
        expires_at = None
        if message.expiration is not None:
            expires_at = max(ready_at, now) + max(message.expiration, 0.0)
        row = (
            bytes(body),
            encode_headers(message.headers),
            message.message_id,
            ready_at,
            expires_at,
        )
        if message.kind == "queue":
            self._declare(db, message.destination)
            db.execute(
                "INSERT INTO messages(queue, body, headers, message_id, ready_at, expires_at) "
                "VALUES (?,?,?,?,?,?)",
                (message.destination, *row),
            )
        elif message.kind == "topic":
            db.execute(
                "INSERT INTO messages(queue, body, headers, message_id, ready_at, expires_at) "
                "SELECT name,?,?,?,?,? FROM queues WHERE topic=?",
                (*row, message.destination),
            )
        elif message.kind == "exchange":
            queues = self._route(db, message.destination, message.routing_key)
            if not queues:
                raise UnroutableError(
                    f"no queue is bound to exchange {message.destination!r} "
                    f"with routing key {message.routing_key!r}"
                )
            db.executemany(
                "INSERT INTO messages(queue, body, headers, message_id, ready_at, expires_at) "
                "VALUES (?,?,?,?,?,?)",
                [(queue, *row) for queue in queues],
            )
        else:
            raise TransportError(f"unknown destination kind {message.kind!r}")

    def _route(self, db: sqlite3.Connection, exchange: str, routing_key: str) -> list[str]:
        if exchange == "":
            found = db.execute(
                "SELECT name FROM queues WHERE name=? AND owner IS NULL", (routing_key,)
            ).fetchall()
        else:
            found = db.execute(
                "SELECT queue FROM bindings WHERE exchange=? AND routing_key=? ORDER BY queue",
                (exchange, routing_key),
            ).fetchall()
        return [r[0] for r in found]

    # -- receiving ---------------------------------------------------------------------------
    def subscribe(self, queue: str, callback: Callback, *, prefetch: int = 1) -> str:
        if prefetch < 1:
            raise TransportError(f"prefetch must be at least 1, not {prefetch}")
        sub = _Subscription(id=uuid.uuid4().hex, queue=queue, callback=callback, prefetch=prefetch)
        with self._lock, self._tx() as db:
            self._declare(db, queue)
            self._attach(db, sub)
        self._subs[sub.id] = sub
        return sub.id

    def subscribe_broadcast(self, topic: str, callback: Callback) -> str:
        sid = uuid.uuid4().hex
        sub = _Subscription(
            id=sid,
            queue=f"bcast.{topic}.{sid}",
            callback=callback,
            prefetch=MAX_BATCH,
            broadcast=True,
            topic=topic,
        )
        with self._lock, self._tx() as db:
            self._attach(db, sub)
        self._subs[sid] = sub
        return sid

    def _attach(self, db: sqlite3.Connection, sub: _Subscription) -> None:
        if sub.broadcast:
            db.execute(
                "INSERT OR REPLACE INTO queues(name, topic, owner) VALUES (?,?,?)",
                (sub.queue, sub.topic, self._consumer),
            )
        else:
            db.execute(
                "INSERT INTO subscriptions(consumer, queue) VALUES (?,?)",
                (self._consumer, sub.queue),
            )

    def unsubscribe(self, subscription: str) -> None:
        sub = self._subs.pop(subscription, None)
        if sub is None:
            return
        sub.active = False
        with self._lock, self._tx() as db:
            self._release_buffer(db, sub)
            if sub.broadcast:
                db.execute("DELETE FROM messages WHERE queue=?", (sub.queue,))
                db.execute("DELETE FROM queues WHERE name=?", (sub.queue,))
            else:
                db.execute(
                    "DELETE FROM subscriptions WHERE rowid IN (SELECT rowid FROM subscriptions "
                    "WHERE consumer=? AND queue=? LIMIT 1)",
                    (self._consumer, sub.queue),
                )

    def _release_buffer(self, db: sqlite3.Connection, sub: _Subscription) -> None:
        """Give back leased messages the callback never saw, without counting a delivery."""
        rows = [m.handle.row for m in sub.buffer if not sub.broadcast]
        sub.buffer.clear()
        db.executemany(
            "UPDATE messages SET consumer=NULL, deliveries=deliveries-1 WHERE id=? AND consumer=?",
            [(row, self._consumer) for row in rows],
        )

    def poll(self, timeout: float) -> int:
        """Deliver what is ready; once something was delivered, return when nothing more is."""
        deadline = time.monotonic() + max(timeout, 0.0)
        delivered = 0
        wait = 0.001
        while True:
            with self._lock:
                try:
                    self._return_stranded()
                    self._check_registered()
                    self._maybe_reclaim()
                    self._fill()
                except (TransportError, sqlite3.Error) as exc:
                    # The write lock busy past the timeout, or the disk full: a service
                    # must not die of it; what is buffered is still delivered.
                    self._warn_busy(exc)
                count = self._dispatch()
            delivered += count
            now = time.monotonic()
            if now >= deadline or (delivered and not count):
                return delivered
            if count:
                wait = 0.001
                continue
            self._wait_for_change(min(deadline, now + wait))
            wait = min(wait * 2, MAX_IDLE_WAIT)

    def _warn_busy(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._busy_warned >= _BUSY_WARNING_INTERVAL:
            self._busy_warned = now
            log.warning("embedded broker %s: %s; trying again", self.path, exc)

    def _return_stranded(self) -> None:
        """Return the deliveries whose nack failed (file locked or full) now that we can.

        Without this a failed nack would hold its lease (and the subscription's
        credit) until the process exits.
        """
        leases = [lease for lease in self._stranded if not lease.settled]
        if not leases:
            self._stranded.clear()
            return
        with self._tx() as db:
            for lease in leases:
                if self._own(db, lease):
                    self._return_rows(db, [lease.row])
        for lease in leases:
            lease.settled = True
            lease.subscription.unsettled -= 1
        self._stranded.clear()
        log.info("embedded broker: returned %d message(s) whose return had failed", len(leases))

    def _wait_for_change(self, until: float) -> None:
        """Sleep until ``until`` or until another connection commits (PRAGMA data_version)."""
        step = 0.001
        while True:
            with self._lock:
                if self._db is None:
                    return
                try:
                    version = self._db.execute("PRAGMA data_version").fetchone()[0]
                except sqlite3.Error:
                    return  # poll looks again (and reports what is wrong)
                changed = version != self._data_version or self._dirty
                self._data_version, self._dirty = version, False
            now = time.monotonic()
            if changed or now >= until:
                return
            time.sleep(min(step, until - now))
            step = min(step * 2, MAX_IDLE_WAIT)

    def _fill(self) -> bool:
        """Lease messages for every subscription with credit; True if any were leased."""
        subs = [s for s in self._subs.values() if s.active and s.credit > 0]
        if not subs or self._db is None:
            return False
        now = time.time()
        wanted = []
        for sub in subs:
            hit = self._db.execute(
                "SELECT 1 FROM messages WHERE queue=? AND consumer IS NULL AND ready_at<=? LIMIT 1",
                (sub.queue, now),
            ).fetchone()
            if hit:
                wanted.append(sub)
        if not wanted:
            return False
        got = False
        try:
            with self._tx(wait=False) as db:
                for sub in wanted:
                    leased = self._lease(db, sub, now)
                    sub.buffer.extend(leased)
                    got |= bool(leased)
        except _Locked:
            # Another process holds the write lock (most likely leasing the same new
            # message): look again after its commit instead of queueing behind it, so
            # one new message does not take every consumer process through the lock.
            return False
        return got

    def _lease(
        self, db: sqlite3.Connection, sub: _Subscription, now: float, limit: int | None = None
    ) -> list[Message]:
        """Lease up to ``limit`` (default: the subscription's credit) ready messages."""
        db.execute(
            "DELETE FROM messages WHERE queue=? AND expires_at<=? AND consumer IS NULL",
            (sub.queue, now),
        )
        limit = min(sub.credit if limit is None else limit, MAX_BATCH)
        picked = (
            "SELECT id FROM messages WHERE queue=? AND consumer IS NULL AND ready_at<=? "
            "ORDER BY id LIMIT ?"
        )
        if sub.broadcast:
            rows = db.execute(
                f"DELETE FROM messages WHERE id IN ({picked}) "
                "RETURNING id, body, headers, message_id, deliveries+1",
                (sub.queue, now, limit),
            ).fetchall()
        else:
            rows = db.execute(
                "UPDATE messages SET consumer=?, deliveries=deliveries+1 "
                f"WHERE id IN ({picked}) RETURNING id, body, headers, message_id, deliveries",
                (self._consumer, sub.queue, now, limit),
            ).fetchall()
        rows.sort()
        return [
            Message(
                body=bytes(body),
                headers=decode_headers(headers),
                queue=sub.topic if sub.broadcast and sub.topic else sub.queue,
                delivery_count=deliveries,
                redelivered=deliveries > 1,
                message_id=message_id,
                handle=_Lease(row_id, self._consumer or 0, deliveries, sub),
            )
            for row_id, body, headers, message_id, deliveries in rows
        ]

    def _dispatch(self) -> int:
        """Run callbacks for buffered messages, one subscription after another."""
        count = 0
        for sub in list(self._subs.values()):
            while sub.buffer and sub.active:
                message = sub.buffer.popleft()
                if sub.broadcast:
                    message.handle.settled = True
                else:
                    sub.unsettled += 1
                count += 1
                try:
                    sub.callback(message)
                except Exception:
                    log.exception("callback for %s failed; returning the message", sub.queue)
                    if not message.handle.settled:
                        with suppress(TransportError):  # stranded: poll returns it later
                            self.nack(message, requeue=True)
        return count

    # -- settling ----------------------------------------------------------------------------
    def _take(self, message: Message) -> _Lease | None:
        """Mark a delivery settled; None if it already was (settling twice is a no-op)."""
        lease = message.handle
        if not isinstance(lease, _Lease):
            raise TransportError("message was not delivered by this embedded broker")
        if lease.settled:
            return None
        lease.settled = True
        lease.subscription.unsettled -= 1
        return lease

    def _unsettle(self, lease: _Lease) -> None:
        lease.settled = False
        lease.subscription.unsettled += 1

    def _own(self, db: sqlite3.Connection, lease: _Lease) -> bool:
        """Whether we still hold this lease (not reclaimed after we were presumed dead)."""
        found = db.execute(
            "SELECT 1 FROM messages WHERE id=? AND consumer=? AND deliveries=?",
            (lease.row, lease.consumer, lease.deliveries),
        ).fetchone()
        if not found:
            log.warning(
                "embedded broker: lease on message %s was lost; someone else processes it",
                lease.row,
            )
        return found is not None

    @contextmanager
    def _settling(self, message: Message) -> Iterator[tuple[sqlite3.Connection, _Lease | None]]:
        """A transaction settling ``message``; yields the lease if it is still ours.

        If the transaction fails the delivery stays unsettled, so it can be nacked.
        """
        with self._lock:
            lease = self._take(message)
            try:
                with self._tx() as db:
                    yield db, lease if lease is not None and self._own(db, lease) else None
            except BaseException:
                if lease is not None:
                    self._unsettle(lease)
                raise

    def ack(self, message: Message) -> None:
        with self._lock:
            lease = self._take(message)
            if lease is None:
                return
            try:
                with self._tx() as db:
                    cur = db.execute(
                        "DELETE FROM messages WHERE id=? AND consumer=? AND deliveries=?",
                        (lease.row, lease.consumer, lease.deliveries),
                    )
            except BaseException:
                self._unsettle(lease)
                raise
        if cur.rowcount == 0:
            log.warning(
                "embedded broker: lease on message %s was lost before its ack; "
                "someone else processes it",
                lease.row,
            )

    def nack(self, message: Message, *, requeue: bool = True) -> None:
        try:
            self._nack(message, requeue=requeue)
        except TransportError:
            if requeue and isinstance(message.handle, _Lease) and not message.handle.settled:
                self._stranded.append(message.handle)  # poll returns it once it can
            raise

    def _nack(self, message: Message, *, requeue: bool) -> None:
        with self._settling(message) as (db, lease):
            if lease is None:
                return
            if requeue:
                self._return_rows(db, [lease.row])
            else:
                self._move_row(
                    db,
                    lease.row,
                    dlq_name(message.queue),
                    lambda h, n: _x_death(h, "rejected", message.queue, n),
                )

    def commit(self, outputs: Sequence[Outgoing], ack: Message) -> Future[None]:
        """Outputs and the ack in one transaction, done when this returns.

        An output that cannot be stored or routed raises at once and the input
        stays unsettled (nothing was written), for the caller to record the failure.
        """
        future: Future[None] = Future()
        with self._settling(ack) as (db, lease):
            now = time.time()
            for out in outputs:
                self._insert(db, out, now)
            # Lease lost or already settled: the outputs still go out (duplicates are fine).
            if lease is not None:
                db.execute("DELETE FROM messages WHERE id=?", (lease.row,))
        future.set_result(None)
        return future

    def flush(self, timeout: float | None = None) -> None:
        """Commits complete before they return; this reports the first failure since last time."""
        failed, self._failed_commits = self._failed_commits, []
        if failed:
            raise TransportError(f"{len(failed)} commit(s) failed; first: {failed[0]}")

    def move(self, message: Message, queue: str, headers: dict[str, Any]) -> None:
        """The copy and the removal of the original in one transaction."""
        with self._settling(message) as (db, lease):
            if lease is not None:
                self._move_row(db, lease.row, queue, lambda _h, _n: headers)

    def hand_back(self, message: Message) -> None:
        """In place: the message keeps its position and its delivery count is given back."""
        with self._settling(message) as (db, lease):
            if lease is None:
                return
            (text,) = db.execute("SELECT headers FROM messages WHERE id=?", (lease.row,)).fetchone()
            headers = decode_headers(text)
            headers[HANDBACK_HEADER] = handbacks(headers) + 1
            db.execute(
                "UPDATE messages SET consumer=NULL, deliveries=deliveries-1, headers=? WHERE id=?",
                (encode_headers(headers), lease.row),
            )

    def fetch(self, queue: str) -> Message | None:
        """Lease the oldest ready message of ``queue`` for the caller to process now."""
        with self._lock:
            self._check_registered()
            self._maybe_reclaim()
            with self._tx() as db:
                self._declare(db, queue)
                messages = self._lease(db, self._fetcher(queue), time.time(), limit=1)
        if not messages:
            return None
        (message,) = messages
        message.handle.subscription.unsettled += 1
        return message

    def _fetcher(self, queue: str) -> _Subscription:
        """The bookkeeping a fetched message's lease points at (no callback, no credit)."""
        sub = self._fetchers.get(queue)
        if sub is None:
            sub = self._fetchers[queue] = _Subscription(
                id=f"fetch.{queue}", queue=queue, callback=_no_callback, prefetch=0
            )
        return sub

    def _return_rows(self, db: sqlite3.Connection, rows: Iterable[int]) -> None:
        """Make leased rows ready again, or dead-letter those past their queue's limit."""
        for row in rows:
            found = db.execute(
                "SELECT m.queue, m.deliveries, q.delivery_limit, q.dead_letter_to FROM messages m "
                "LEFT JOIN queues q ON q.name=m.queue WHERE m.id=?",
                (row,),
            ).fetchone()
            if found is None:
                continue
            queue, deliveries, limit, target = found
            if limit is not None and deliveries > limit:
                self._move_row(
                    db,
                    row,
                    target or dlq_name(queue),
                    lambda h, n, q=queue: _x_death(h, "delivery_limit", q, n),
                )
            else:
                db.execute("UPDATE messages SET consumer=NULL WHERE id=?", (row,))

    def _move_row(self, db: sqlite3.Connection, row: int, queue: str, mark: Any) -> None:
        """Move a row to the tail of ``queue`` with headers from ``mark(headers, n)``.

        The copy starts with no deliveries, like a dead-lettered message on RabbitMQ.
        """
        found = db.execute("SELECT headers, deliveries FROM messages WHERE id=?", (row,)).fetchone()
        if found is None:
            return
        headers = mark(decode_headers(found[0]), found[1])
        self._declare(db, queue)
        db.execute(
            "INSERT INTO messages(queue, body, headers, message_id) "
            "SELECT ?, body, ?, message_id FROM messages WHERE id=?",
            (queue, encode_headers(headers), row),
        )
        db.execute("DELETE FROM messages WHERE id=?", (row,))

    # -- reclaim -----------------------------------------------------------------------------
    def _maybe_reclaim(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_reclaim < RECLAIM_INTERVAL:
            return
        self._last_reclaim = now
        self.reclaim()

    def reclaim(self) -> int:
        """Return the messages of dead consumers and drop their broadcast queues; how many died."""
        with self._lock:
            return self._reclaim()

    def _reclaim(self) -> int:
        """Return the messages of dead consumers (see :mod:`zhpc.transport.deadconsumers`)."""
        gone, stale = self._dead.suspects(self._read(), self._consumer)
        if not gone and not stale:
            return 0
        with self._tx() as db:
            dead = self._dead.confirm(db, gone, stale)
            for cid in dead:
                rows = db.execute("SELECT id FROM messages WHERE consumer=?", (cid,)).fetchall()
                if rows:
                    log.info(
                        "embedded broker: consumer %s is gone, returning %d message(s)",
                        cid,
                        len(rows),
                    )
                self._return_rows(db, [r[0] for r in rows])
                self._forget_consumer(db, cid)
        return len(dead)

    def _forget_consumer(self, db: sqlite3.Connection, cid: int | None) -> None:
        db.execute(
            "DELETE FROM messages WHERE queue IN (SELECT name FROM queues WHERE owner=?)", (cid,)
        )
        db.execute("DELETE FROM queues WHERE owner=?", (cid,))
        db.execute("DELETE FROM subscriptions WHERE consumer=?", (cid,))
        db.execute("DELETE FROM consumers WHERE id=?", (cid,))

    # -- inspection --------------------------------------------------------------------------
    def queue_depth(self, name: str) -> QueueDepth:
        """Ready (visible, unexpired), leased, and live subscribers; zeros if no such queue."""
        with self._lock:
            self._maybe_reclaim()
            db = self._read()
            now = time.time()
            ready, unacked = db.execute(
                "SELECT "
                "  COALESCE(SUM(consumer IS NULL AND ready_at<=? "
                "               AND (expires_at IS NULL OR expires_at>?)), 0),"
                "  COALESCE(SUM(consumer IS NOT NULL), 0) "
                "FROM messages WHERE queue=?",
                (now, now, name),
            ).fetchone()
            (consumers,) = db.execute(
                "SELECT COUNT(*) FROM subscriptions WHERE queue=?", (name,)
            ).fetchone()
        return QueueDepth(ready=int(ready), unacked=int(unacked), consumers=int(consumers))

    def list_queues(self, prefix: str = "") -> list[str]:
        """Work and dead-letter queues whose names start with ``prefix`` (Schlockmeister)."""
        with self._lock:
            rows = (
                self._read()
                .execute(
                    "SELECT name FROM queues WHERE owner IS NULL AND substr(name, 1, ?)=? "
                    "ORDER BY name",
                    (len(prefix), prefix),
                )
                .fetchall()
            )
        return [row[0] for row in rows]


def _no_callback(_message: Message) -> None:
    """Fetched messages are returned to the caller, never passed to a callback."""


def _x_death(headers: dict[str, Any], reason: str, queue: str, count: int) -> dict[str, Any]:
    """Headers as RabbitMQ puts on a dead-lettered message (count: deliveries here)."""
    death = {
        "reason": reason,
        "queue": queue,
        "count": count,
        "exchange": "",
        "routing-keys": [queue],
        "time": time.time(),
    }
    headers["x-death"] = [death, *headers.get("x-death", [])]
    headers.setdefault("x-first-death-reason", reason)
    headers.setdefault("x-first-death-queue", queue)
    headers.setdefault("x-first-death-exchange", "")
    return headers

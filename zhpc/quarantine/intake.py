"""Filing a message read from a dead-letter queue: store it, report it, then ack it.

The order is the whole point: the store commit comes first, the ack last, so
at every moment the message is in the dead-letter queue, in the store, or in
both. A process killed between the two leaves it in both; the copy is then
delivered again and filed again under the same id, which the store merges into
the row already there (dedupe by message id). A message is never in neither.

The ERROR log line and the note on the notification queue go out once per
dead-lettered copy: before the ack, and only if that copy was not reported
already (the row's ``notified`` flag, set once the note is confirmed). The note
is published together with the ack (``Transport.commit``): if the broker
cannot take it, the copy stays in its queue and is filed again later.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import TimeoutError as FutureTimeout

from zhpc.errors import TransportError
from zhpc.message import Message, Outgoing
from zhpc.quarantine.entry import QuarantineEntry
from zhpc.quarantine.store import QuarantineStore, StoreError
from zhpc.transport.base import Transport

log = logging.getLogger("zhpc.quarantine")

#: Test hook: when set to "1", the process exits at once after a store commit, before its ack.
CRASH_AFTER_STORE_ENV = "ZHPC_TEST_CRASH_AFTER_STORE"
CRASH_EXIT_CODE = 86
#: How long a filing waits for the broker to confirm the note and take the ack.
COMMIT_TIMEOUT = 60.0


class Quarantiner:
    """Files dead-lettered messages from one transport into one store."""

    def __init__(
        self, store: QuarantineStore, transport: Transport, *, notify_queue: str = "zhpc.quarantine"
    ) -> None:
        self.store = store
        self.transport = transport
        self.notify_queue = notify_queue
        self.filed = 0
        self.reported = 0
        self._crash_after_store = os.environ.get(CRASH_AFTER_STORE_ENV) == "1"

    def file(self, message: Message) -> QuarantineEntry:
        """Store ``message``, report it if new, ack it; StoreError leaves it unsettled."""
        entry = QuarantineEntry.from_message(message)
        filed = self.store.put(entry)
        if self._crash_after_store:
            os._exit(CRASH_EXIT_CODE)
        self.filed += 1
        if filed.notified:
            log.info(
                "message %s from %s was filed before (copy delivered again); acking it",
                entry.id,
                message.queue,
            )
            self.transport.ack(message)
            return entry
        log.error(
            "quarantined message %s from %s: %s%s%s (recipe %s, step %s, %d deliveries)",
            entry.id,
            entry.queue,
            entry.reason,
            f": {entry.exception}" if entry.exception else "",
            f": {_one_line(entry.error)}" if entry.error else "",
            entry.recipe_id or "-",
            entry.step if entry.step is not None else "-",
            entry.deliveries,
        )
        notes = (
            [Outgoing.json(self.notify_queue, entry.summary_record())] if self.notify_queue else []
        )
        future = self.transport.commit(notes, ack=message)
        try:
            future.result(COMMIT_TIMEOUT)
        except (TransportError, FutureTimeout) as exc:
            # Stored all the same; the copy comes back (or the ack is still on its way).
            log.warning(
                "message %s is stored, but its note/ack was not confirmed: %s", entry.id, exc
            )
            return entry
        self.reported += 1
        try:
            self.store.mark_notified(entry.id, filed.version)
        except StoreError as exc:  # acked already: at worst a later copy is reported again
            log.warning("message %s: could not record that it was reported: %s", entry.id, exc)
        return entry


def _one_line(value: str, limit: int = 300) -> str:
    value = " ".join(value.split())
    return value if len(value) <= limit else value[: limit - 3] + "..."

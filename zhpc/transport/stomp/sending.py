"""Sending on STOMP with the broker's confirmation: receipts and transactions.

A commit (outputs plus the input's ACK) is one STOMP transaction whose COMMIT is
receipted, or, in ``receipts`` mode, a receipt per SEND and the ACK once all are
in (``bench/transport_stomp.py`` times both; docs/stomp.md says why the first
is the default).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future

from zhpc.errors import TransportError, UnroutableError
from zhpc.message import Outgoing
from zhpc.transport.stomp.connection import Connection, ConnectionLostError
from zhpc.transport.stomp.handles import Delivery
from zhpc.transport.stomp.wire import (
    check_name,
    queue_destination,
    send_headers,
    topic_destination,
)

Frame = tuple[dict[str, str], bytes]

#: publish_many sends up to this many messages, or bytes, per transaction: ActiveMQ syncs
#: its journal once per COMMIT, one COMMIT at a time per connection (500 a chunk halved
#: the rate when the disk was busy), and holds a transaction's messages in memory.
PUBLISH_CHUNK, PUBLISH_CHUNK_BYTES = 5000, 8 << 20


def publish_chunks(frames: list[Frame]) -> list[list[Frame]]:
    """The frames in order, cut into transactions of at most PUBLISH_CHUNK(_BYTES)."""
    chunks: list[list[Frame]] = [[]]
    size = 0
    for frame in frames:
        if chunks[-1] and (
            len(chunks[-1]) >= PUBLISH_CHUNK or size + len(frame[1]) > PUBLISH_CHUNK_BYTES
        ):
            chunks.append([])
            size = 0
        chunks[-1].append(frame)
        size += len(frame[1])
    return chunks if chunks[-1] else []


def send_frame(out: Outgoing) -> Frame:
    """The SEND frame of an outgoing message (raises before anything is sent)."""
    if out.kind == "queue":
        check_name(out.destination)
        destination = queue_destination(out.destination)
    elif out.kind == "topic":
        if out.delay:
            raise TransportError("broadcasts cannot be delayed")
        check_name(out.destination)
        destination = topic_destination(out.destination)
    elif out.kind == "exchange":
        raise UnroutableError(
            f"ActiveMQ over STOMP has no exchanges: cannot send to {out.destination!r}"
        )
    else:
        raise TransportError(f"unknown destination kind {out.kind!r}")
    headers = send_headers(out)
    headers["destination"] = destination
    return headers, out.body


class Sender:
    """Frames that need the broker's word, on one connection."""

    def __init__(self, conn: Connection, mode: str) -> None:
        if mode not in ("transaction", "receipts"):
            raise TransportError(f"unknown commit mode {mode!r}")
        self._conn = conn
        self.mode = mode

    def transaction(self, frames: Sequence[Frame], ack: Delivery | None) -> Future[None]:
        """SENDs and the ACK in one transaction; the future completes on the COMMIT's receipt."""
        if ack is not None and ack.generation != self._conn.generation:
            lost: Future[None] = Future()
            lost.set_exception(ConnectionLostError("the input came over a lost connection"))
            return lost
        if (ack is None and len(frames) == 1) or (self.mode == "receipts" and ack is not None):
            return self._receipted(frames, ack)
        tx = self._conn.new_id("tx")
        try:
            self._conn.send_frame("BEGIN", {"transaction": tx})
            for headers, body in frames:
                self._send(headers, body, {"transaction": tx})
            if ack is not None and not ack.broadcast:
                self._conn.send_frame("ACK", {"id": ack.ack_id, "transaction": tx})
        except TransportError as exc:
            failed: Future[None] = Future()
            failed.set_exception(exc)
            return failed
        return self._conn.request("COMMIT", {"transaction": tx})

    def _receipted(self, frames: Sequence[Frame], ack: Delivery | None) -> Future[None]:
        """A receipt per SEND; the ACK once all are in (the other way to commit)."""
        done: Future[None] = Future()
        futures = [self._send(headers, body, None) for headers, body in frames]

        def check(_f: Future[None]) -> None:
            if done.done() or not all(f.done() for f in futures):
                return
            errors = [f.exception() for f in futures if f.exception() is not None]
            if errors:
                done.set_exception(errors[0])  # type: ignore[arg-type]
                return
            if ack is not None and not ack.broadcast:
                try:
                    self._conn.send_frame("ACK", {"id": ack.ack_id})
                except TransportError as exc:
                    done.set_exception(exc)
                    return
            done.set_result(None)

        if not futures:
            check(done)
        for future in futures:
            future.add_done_callback(check)
        return done

    def _send(
        self, headers: dict[str, str], body: bytes, extra: dict[str, str] | None
    ) -> Future[None]:
        frame = {**headers, "content-length": str(len(body)), **(extra or {})}
        if extra is not None:  # inside a transaction: its COMMIT is receipted
            self._conn.send_frame("SEND", frame, body)
            return Future()
        return self._conn.request("SEND", frame, body)

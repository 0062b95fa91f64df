"""One STOMP connection to ActiveMQ: frames in, receipts, reconnection.

Threads, and who owns what:

* **stomp.py's receiver thread** calls :class:`Connection`'s listener methods:
  it routes each MESSAGE to the inbox of its subscription id (a
  ``queue.Queue``), completes the future waiting for each RECEIPT, fails them
  on ERROR or a lost connection. It never runs zhpc callbacks.
* **Caller threads** send frames through :meth:`Connection.send_frame` and
  friends (one lock, so frames never interleave) and wait on futures.
* **A recovery thread** after a lost connection reconnects with tenacity, bumps
  :attr:`generation` (deliveries of an older generation can no longer be
  acked: the broker gives them out again) and calls ``on_reconnect``.
"""

from __future__ import annotations

import itertools
import logging
import queue
import socket
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import stomp
import stomp.exception
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from zhpc.errors import TransportError
from zhpc.transport.stomp.wire import server

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.config import TLSConfig

log = logging.getLogger(__package__)


class ConnectionLostError(TransportError):
    """The connection to ActiveMQ was lost while waiting for the broker."""


class _Connect(Exception):
    """One failed connection attempt (retried by tenacity)."""


class Connection(stomp.ConnectionListener):
    """A STOMP 1.2 connection with receipts as futures and inboxes per subscription."""

    def __init__(
        self,
        url: str,
        *,
        display_url: str,
        heartbeat: int,
        connection_attempts: int,
        retry_delay: float,
        tls: TLSConfig | None,
        on_reconnect: Callable[[int], None],
    ) -> None:
        host, port, self._user, self._password, use_tls = server(url)
        self.display_url = display_url
        self._attempts = connection_attempts
        self._retry_delay = retry_delay
        self._on_reconnect = on_reconnect
        beat = heartbeat * 1000
        self._conn = stomp.Connection12(
            [(host, port)],
            heartbeats=(beat, beat),
            auto_decode=False,
            reconnect_attempts_max=1,
            keepalive=True,
        )
        if use_tls:
            self._conn.set_ssl(
                for_hosts=[(host, port)],
                ca_certs=str(tls.ca_file) if tls and tls.ca_file else None,
                cert_file=str(tls.cert_file) if tls and tls.cert_file else None,
                key_file=str(tls.key_file) if tls and tls.key_file else None,
                ssl_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        self._tls = (host, port, tls) if use_tls else None
        self._conn.set_listener("zhpc", self)
        self._send_lock = threading.RLock()
        self._receipts: dict[str, Future[None]] = {}
        self._receipt_lock = threading.Lock()
        self._ids = itertools.count(1)
        self.inboxes: dict[str, queue.Queue[Any]] = {}
        #: Set whenever a frame is put into an inbox (poll waits on it).
        self.arrived = threading.Event()
        self.generation = 0
        self.closing = False
        self.connected = threading.Event()
        self.fatal: TransportError | None = None

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        self._connect_with_retries()
        self.generation = 1

    def _connect_with_retries(self) -> None:
        retrying = Retrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=self._retry_delay, max=max(self._retry_delay, 30)),
            retry=retry_if_exception_type(_Connect),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    self._connect_once()
        except _Connect as exc:
            raise TransportError(
                f"cannot connect to ActiveMQ at {self.display_url} after "
                f"{self._attempts} attempt(s): {exc}"
            ) from None

    def _connect_once(self) -> None:
        try:
            self._conn.connect(self._user, self._password, wait=True)
        except (stomp.exception.StompException, OSError) as exc:
            self._explain_tls_failure()
            raise _Connect(type(exc).__name__) from None
        if not self._conn.is_connected():
            raise _Connect("refused")
        self._no_delay()
        self.connected.set()

    def _no_delay(self) -> None:
        """Small frames go out at once: with Nagle's algorithm a frame written right after
        another (an UNSUBSCRIBE after an ACK) waits for the broker's delayed ACK, 40 ms."""
        sock = getattr(self._conn.transport, "socket", None)
        try:
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            log.debug("TCP_NODELAY: %s", exc)

    def _explain_tls_failure(self) -> None:
        """stomp.py logs why a TLS handshake failed and raises a bare ConnectFailedException;
        one handshake of our own says it in the error (a wrong CA is not worth retrying)."""
        if self._tls is None:
            return
        host, port, tls = self._tls
        context = ssl.create_default_context(
            cafile=str(tls.ca_file) if tls and tls.ca_file else None
        )
        try:
            with socket.create_connection((host, port), timeout=10) as raw:
                context.wrap_socket(raw, server_hostname=host).close()
        except ssl.SSLCertVerificationError as exc:
            where = f"the CA in {tls.ca_file}" if tls and tls.ca_file else "the system's CAs"
            raise TransportError(
                f"TLS: the certificate of ActiveMQ at {self.display_url} is not verified by "
                f"{where}: {exc.verify_message}"
            ) from None
        except (OSError, ssl.SSLError):
            return

    def stop(self) -> None:
        self.closing = True
        self.connected.clear()
        try:
            with self._send_lock:
                if self._conn.is_connected():
                    self._conn.disconnect(receipt=None)
        except (stomp.exception.StompException, OSError) as exc:
            log.debug("disconnecting: %s", exc)
        self._fail_receipts(TransportError("the STOMP connection was closed"))

    # -- sending -----------------------------------------------------------------
    def send_frame(self, command: str, headers: dict[str, str], body: bytes = b"") -> None:
        """Send one frame; ConnectionLostError if there is no connection right now."""
        if not self.connected.is_set() and (self.closing or not self.connected.wait(30)):
            raise self.fatal or ConnectionLostError(f"not connected to {self.display_url}")
        try:
            with self._send_lock:
                self._conn.send_frame(command, headers, body)
        except (stomp.exception.StompException, OSError) as exc:
            raise ConnectionLostError(f"sending to {self.display_url}: {exc!r}") from None

    def receipt(self) -> tuple[str, Future[None]]:
        """A new receipt id and the future its RECEIPT frame completes."""
        receipt_id = f"r{next(self._ids)}"
        future: Future[None] = Future()
        with self._receipt_lock:
            self._receipts[receipt_id] = future
        return receipt_id, future

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids)}"

    def request(self, command: str, headers: dict[str, str], body: bytes = b"") -> Future[None]:
        """Send a frame with a receipt; the future completes when the broker has it."""
        receipt_id, future = self.receipt()
        try:
            self.send_frame(command, {**headers, "receipt": receipt_id}, body)
        except TransportError as exc:
            self._settle(receipt_id, exc)
        return future

    # -- listener (stomp.py's receiver thread) -------------------------------------
    def on_message(self, frame: Any) -> None:
        inbox = self.inboxes.get(frame.headers.get("subscription", ""))
        if inbox is not None and not _whole(frame):
            # Settling a stump would lose the message: it stays unacked on the broker.
            log.error(
                "a MESSAGE frame from %s arrived cut short (another client sent a NUL "
                "byte in a header); not delivered, left unacked on the broker",
                frame.headers.get("destination", "?"),
            )
            return
        if inbox is not None:
            inbox.put((self.generation, frame))
            self.arrived.set()

    def on_receipt(self, frame: Any) -> None:
        self._settle(frame.headers.get("receipt-id", ""), None)

    def on_error(self, frame: Any) -> None:
        text = frame.headers.get("message", "") or frame.body[:200].decode("utf-8", "replace")
        error = TransportError(f"ActiveMQ refused a frame: {text.strip()}")
        receipt_id = frame.headers.get("receipt-id")
        if receipt_id:
            self._settle(receipt_id, error)
        else:
            log.error("ActiveMQ error: %s", text.strip())

    def on_disconnected(self) -> None:
        self.connected.clear()
        self._fail_receipts(ConnectionLostError(f"lost the connection to {self.display_url}"))
        if not self.closing:
            log.warning("lost the connection to %s; reconnecting", self.display_url)
            threading.Thread(target=self._recover, name="zhpc-stomp-recover", daemon=True).start()

    def _recover(self) -> None:
        try:
            self._connect_with_retries()
        except TransportError as exc:
            log.error("%s", exc)
            self.fatal = exc
            return
        self.generation += 1
        log.info("reconnected to %s", self.display_url)
        self._on_reconnect(self.generation)

    def _settle(self, receipt_id: str, error: BaseException | None) -> None:
        with self._receipt_lock:
            future = self._receipts.pop(receipt_id, None)
        if future is None or future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    def _fail_receipts(self, error: TransportError) -> None:
        with self._receipt_lock:
            pending, self._receipts = self._receipts, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)


def _whole(frame: Any) -> bool:
    """Whether a MESSAGE arrived whole. stomp.py ends a frame at the first NUL byte; one
    inside a header (ActiveMQ keeps what another client sent) leaves a stump without the
    rest of the headers and the body, and the rest is dropped as an unknown frame."""
    headers = frame.headers
    if "message-id" not in headers or "destination" not in headers:
        return False
    length = headers.get("content-length")
    return length is None or length == str(len(frame.body))

"""A tiny client for RabbitMQ's management HTTP API: what AMQP cannot tell.

A passive ``queue.declare`` gives ready messages and consumers, not the messages
consumers hold unacknowledged, nor how fast they are acknowledged. The
management plugin knows both. Its figures are samples (every
``collect_statistics_interval``, 5 s by default; a new queue shows none for the
first 5-7 s), so callers take ready and consumers from AMQP, which is exact
and immediate, and only unacked and the ack rate from here.

Standard library only (urllib); the password is sent in the Authorization
header and never appears in a URL, a log line or an error message.
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from zhpc.errors import TransportError

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.config import BrokerConfig

log = logging.getLogger(__name__)

DEFAULT_PORT = 15672
DEFAULT_TLS_PORT = 15671
_COLUMNS = "name,messages_ready,messages_unacknowledged,consumers,message_stats.ack_details"


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One queue as the management plugin last sampled it (None: not sampled yet)."""

    ready: int | None
    unacked: int | None
    consumers: int | None
    #: Acknowledgements per second over the plugin's last sample window.
    ack_rate: float | None


class ManagementClient:
    """Reads queue statistics from ``base_url`` (``http[s]://host:port/``) for one vhost."""

    def __init__(
        self,
        base_url: str,
        *,
        username: str,
        password: str | None,
        vhost: str = "/",
        timeout: float = 3.0,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TransportError(f"management URL {self.display(base_url)!r} is not http(s)://")
        port = f":{parts.port}" if parts.port else ""
        path = parts.path.rstrip("/")
        #: The URL without any credentials: safe to show.
        self.base_url = urlunsplit((parts.scheme, f"{parts.hostname}{port}", path, "", ""))
        self.vhost = vhost
        self.timeout = timeout
        if parts.username:  # credentials in the URL win over the broker's
            username = unquote(parts.username)
            password = unquote(parts.password) if parts.password else password
        token = base64.b64encode(f"{username}:{password or ''}".encode()).decode("ascii")
        self._headers = {"Authorization": f"Basic {token}", "Accept": "application/json"}

    def __repr__(self) -> str:
        return f"ManagementClient({self.base_url!r}, vhost={self.vhost!r})"

    @staticmethod
    def display(url: str) -> str:
        parts = urlsplit(url)
        if not (parts.username or parts.password):
            return url
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return urlunsplit((parts.scheme, f"***@{host}{port}", parts.path, "", ""))

    @classmethod
    def from_config(cls, config: BrokerConfig, *, timeout: float = 3.0) -> ManagementClient | None:
        """The client for a RabbitMQ broker; None for the embedded broker or when disabled."""
        if config.scheme not in ("amqp", "amqps") or config.management_url == "":
            return None
        amqp = urlsplit(config.resolved_url_without_password())
        username = unquote(amqp.username or "guest")
        password = config.password()
        vhost = unquote(amqp.path[1:]) if len(amqp.path) > 1 else "/"
        url = config.management_url
        if url is None:
            tls = amqp.scheme == "amqps"
            scheme, port = ("https", DEFAULT_TLS_PORT) if tls else ("http", DEFAULT_PORT)
            url = f"{scheme}://{amqp.hostname or 'localhost'}:{port}/"
        return cls(url, username=username, password=password, vhost=vhost, timeout=timeout)

    def _get(self, path: str) -> Any:
        request = urllib.request.Request(self.base_url + path, headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            if exc.code in (401, 403):
                raise TransportError(
                    f"management API at {self.base_url} refused the broker's credentials "
                    f"(HTTP {exc.code}; the user needs the 'monitoring' or 'management' tag)"
                ) from None
            raise TransportError(f"management API at {self.base_url}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TransportError(
                f"management API at {self.base_url} unreachable: {reason}"
            ) from None

    def queue(self, name: str) -> QueueStats | None:
        """The statistics of one queue; None if it does not exist. TransportError if the
        API cannot be reached or refuses."""
        path = f"/api/queues/{quote(self.vhost, safe='')}/{quote(name, safe='')}"
        data = self._get(f"{path}?columns={_COLUMNS}")
        if not isinstance(data, dict):
            return None
        rate = (data.get("message_stats") or {}).get("ack_details", {}).get("rate")
        return QueueStats(
            ready=_count(data.get("messages_ready")),
            unacked=_count(data.get("messages_unacknowledged")),
            consumers=_count(data.get("consumers")),
            ack_rate=float(rate) if isinstance(rate, int | float) else None,
        )


def _count(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None

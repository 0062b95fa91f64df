"""Checks behind the configuration's validators: what would otherwise fail only later.

Each function raises ``ValueError`` with a message that never repeats the
value it refuses (a URL may hold a password); the loader turns it into one line
naming the file and the key. ``zhpc config check`` therefore catches what a
job would trip over an hour later, on another machine.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "check_allowed_roots",
    "check_bounded_numbers",
    "check_broker_url",
    "check_existing_directory",
    "check_host_port",
    "check_job_counts",
    "check_time_limit",
    "split_broker_urls",
    "with_host",
]

#: The largest integer a broker header, an SQLite column or Slurm can hold.
MAX_INT = 2**63 - 1
_ENCODE_HINT = (
    "percent-encode '#', '/', '?' and '@' in the user name and password "
    "(%23, %2F, %3F, %40), or put the password in broker.password_file"
)


def check_broker_url(url: str, schemes: list[str] | None = None) -> str:
    """A URL of an installed transport's scheme that means what it says (``amqp://``,
    ``amqps://`` and ``sqlite:///`` are checked closely)."""
    if not url:
        return url
    if any(not c.isprintable() or c.isspace() for c in url):
        raise ValueError("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError("does not parse as a URL") from None
    known = schemes or ["amqp", "amqps", "sqlite"]
    if parts.scheme not in known:
        words = [f"{scheme}://" for scheme in known]
        raise ValueError(
            "must start with " + " or ".join(filter(None, [", ".join(words[:-1]), words[-1]]))
        )
    if parts.scheme not in ("amqp", "amqps", "sqlite"):
        return url  # a site's own transport checks its own URLs
    if parts.scheme == "sqlite":
        if parts.query or parts.fragment or "?" in url or "#" in url:
            raise ValueError("a sqlite:/// path must not contain '?' or '#' (write %3F, %23)")
        return url
    if parts.fragment or "#" in url or "@" in parts.path + parts.query:
        # A raw '#', '/' or '?' in a password ends the host part early: pika would try to
        # connect to the user name as a host, so this URL can never work.
        raise ValueError(f"does not parse as user:password@host:port/vhost; {_ENCODE_HINT}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise ValueError("the port must be a number from 1 to 65535")
    return url


def split_broker_urls(urls: list[Any]) -> tuple[str, list[str]]:
    """A list of node URLs as one URL (the first) and the ``host:port`` of every node.

    The nodes of one cluster share scheme, user, password and vhost; a list that
    does not is refused rather than half-used.
    """
    if not urls or not all(isinstance(url, str) and url for url in urls):
        raise ValueError("broker.url as a list needs one or more URLs")
    first = check_broker_url(urls[0])
    common = _without_host(first)
    hosts = []
    for url in urls:
        check_broker_url(url)
        if _without_host(url) != common:
            raise ValueError(
                "the URLs in broker.url must differ only in host and port "
                "(same scheme, user, password and vhost)"
            )
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
        host = parts.hostname or ""
        hosts.append(f"[{host}]{port}" if ":" in host else f"{host}{port}")
    return first, hosts


def _without_host(url: str) -> tuple[str, str, str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.rpartition("@")[0], parts.path, parts.query


def check_host_port(host: str) -> str:
    """``host``, ``host:port`` or ``[v6]:port``, nothing else."""
    if not host or any(c in host for c in "/@?#") or any(c.isspace() for c in host):
        raise ValueError("each entry must be host or host:port")
    try:
        port = urlsplit(f"//{host}").port
    except ValueError:
        raise ValueError(
            "each entry must be host or host:port with a port from 1 to 65535"
        ) from None
    if port is not None and not 1 <= port <= 65535:
        raise ValueError("the port must be a number from 1 to 65535")
    return host


def with_host(url: str, host: str) -> str:
    """``url`` pointing at ``host`` (``host:port``) instead, all else kept."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}" if userinfo else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def check_time_limit(value: str | None) -> str | None:
    """A Slurm time limit zhpc can read (``HH:MM:SS``, ``MM``, ``D-HH:MM:SS``), if given."""
    if value is None:
        return value
    from zhpc.cluster.base import time_limit_seconds
    from zhpc.errors import ClusterError

    if not value.isascii() or len(value) > 32:
        raise ValueError(f"bad time limit {value[:40]!r}: use HH:MM:SS, MM, or D-HH:MM:SS")
    try:
        time_limit_seconds(value)
    except ClusterError as exc:
        raise ValueError(str(exc)) from None
    return value


def check_job_counts(min_jobs: int, max_jobs: int) -> None:
    if min_jobs > max_jobs:
        raise ValueError(f"must be at least min_jobs ({min_jobs}), not {max_jobs}")


def check_existing_directory(path: Path | None) -> Path | None:
    """``path`` with ``~`` expanded, which must be an existing directory."""
    if path is None:
        return None
    expanded = path.expanduser()
    if not expanded.exists():
        raise ValueError(f"{path} does not exist")
    if not expanded.is_dir():
        raise ValueError(f"{path} is not a directory")
    return expanded


def check_allowed_roots(roots: list[Any]) -> list[Any]:
    """Every root, as written, is a non-empty absolute path other than ``/``.

    An empty entry would become ``.``, silently allowing whatever directory a job runs in.
    """
    for number, root in enumerate(roots, 1):
        root = os.fspath(root)
        if not root.strip():
            raise ValueError(f"entry {number} is empty; list absolute directories")
        path = Path(root).expanduser()
        if not path.is_absolute():
            raise ValueError(f"entry {number} ({root!r}) must be an absolute path")
        if path == Path(path.anchor):
            raise ValueError(f"entry {number} ({root!r}) would allow every file on the machine")
    return roots


def check_bounded_numbers(value: Any, where: str = "") -> Any:
    """No integer beyond 64 bits and no NaN or infinity, however deeply nested."""
    at = f"{where}: " if where else ""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and not -MAX_INT - 1 <= value <= MAX_INT:
        raise ValueError(f"{at}integer out of range (at most {MAX_INT})")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{at}must be a finite number, not {value}")
    if isinstance(value, dict):
        for key, item in value.items():
            check_bounded_numbers(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list | tuple):
        for number, item in enumerate(value):
            check_bounded_numbers(item, f"{where}[{number}]" if where else f"[{number}]")
    return value

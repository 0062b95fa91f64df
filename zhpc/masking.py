"""Keeping secrets out of everything zhpc prints or logs.

Two kinds of secret reach a configuration: values under a key whose name says
it is a secret (``ispyb_password``, ``api_token``...), and passwords inside
URLs (``mysql://user:pw@db/ispyb``). A URL whose password was not
percent-encoded (``amqp://u:p#ss@host/``) does not parse as having a password
at all: the text after ``#``, ``/`` or ``?`` becomes the fragment, path or
query. Masking here therefore does not trust the parser; it masks up to the
last ``@`` after the user name, which may hide more than needed but never
less. Imports only the standard library.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["MASK", "is_secret_key", "mask_secrets", "mask_url"]

MASK = "***"

#: Words that make a key a secret wherever they occur in its name (``dbpassword``).
_SECRET_WORDS = ("password", "passwd", "passphrase", "secret", "token", "credential")
#: Words that make a key a secret only as a whole word (``api_key``, not ``monkey``).
_SECRET_PARTS = frozenset({"pw", "pwd", "key", "keys", "apikey", "cookie"})
#: Names with ``key`` in them that are well known not to be secrets.
_NOT_SECRET = frozenset({"routing_key", "sort_key", "primary_key", "foreign_key"})
#: A key ending in one of these names where a secret is kept, not the secret itself.
_LOCATION_PARTS = frozenset({"file", "path", "dir", "directory", "env"})

#: ``scheme://user:anything@`` up to the last ``@``: the userinfo, however badly encoded.
_USERINFO = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*):(?P<secret>.*)@", re.DOTALL
)


def is_secret_key(name: object) -> bool:
    """Whether a value stored under ``name`` must never be shown."""
    if not isinstance(name, str):
        return False
    lowered = name.lower().replace("-", "_")
    if lowered in _NOT_SECRET:
        return False
    parts = [part for part in re.split(r"[^a-z0-9]+", lowered) if part]
    if parts and parts[-1] in _LOCATION_PARTS:
        return False
    return any(word in lowered for word in _SECRET_WORDS) or any(
        part in _SECRET_PARTS for part in parts
    )


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``; safe to print even if it does not parse."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
    except ValueError:
        netloc = ""
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" not in userinfo:
            return url
        user = userinfo.split(":", 1)[0]
        masked = f"{user}:{MASK}@{hostport}"
        return urlunsplit((parts.scheme, masked, parts.path, parts.query, parts.fragment))
    # No userinfo as a parser sees it; a raw '#', '/' or '?' in a password hides it from the
    # parser, so mask everything from the first ':' after the user name to the last '@'.
    return _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", url, count=1)


def mask_secrets(data: Any, key: object = None) -> Any:
    """A copy of plain data (dicts, lists, strings) with secret keys and URL passwords masked."""
    if is_secret_key(key) and data not in (None, "", [], {}):
        return MASK  # the whole value, even a mapping: {user, password} under "credentials"
    if isinstance(data, dict):
        return {k: mask_secrets(v, k) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [mask_secrets(item) for item in data]
    if isinstance(data, str) and "://" in data:
        return mask_url(data)
    return data

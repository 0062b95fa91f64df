"""The JSON of an outgoing recipe message, each part written by the encoder that suits it.

The recipe is the bulk of every body and JSON-only data already, so msgspec writes
it; what a service builds (payload, environment) is written by json, which refuses
what a message cannot carry.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from zhpc.recipe.data import json_default

__all__ = ["encode_body", "encode_recipe"]

#: The payload and environment of every message: they come from the service, and json
#: refuses what a message cannot carry (NaN, sets, bytes, dates), which msgspec would
#: write (NaN as null, a set as a list). One encoder: ``json.dumps(default=)`` builds one a call.
_ENCODE_PART = json.JSONEncoder(default=json_default, allow_nan=False, separators=(",", ":")).encode
_MSGSPEC_ENCODE = msgspec.json.Encoder().encode


def _recipe_json(data: Any) -> bytes:
    """The recipe of an outgoing message: the bulk of every body, and JSON-only data
    already (``Recipe`` copies and checks what it is given, a decoded one is JSON), so
    msgspec writes it (ten times faster than json).

    Only a service that changes the recipe in place can put something else there.
    msgspec would write a NaN or Infinity as null: with a null in the output, json
    writes it instead, and refuses those. A set or bytes put there would go out as
    a list or base64 text (json would refuse them); payloads and environments,
    which services do build, are written by json.
    """
    try:
        encoded = _MSGSPEC_ENCODE(data)
    except (TypeError, ValueError, OverflowError, RecursionError):
        encoded = b""  # json says what is wrong (or writes a key msgspec refuses: True)
    if not encoded or b"null" in encoded:
        encoded = _ENCODE_PART(data).encode("utf-8")
    return encoded


def encode_recipe(data: Any) -> bytes:
    """A recipe's data as an outgoing body carries it (what :func:`encode_body` writes)."""
    return _recipe_json(data)


def encode_body(body: dict[str, Any], recipe_json: bytes | None = None) -> bytes:
    """A workflows message body (``RecipeWrapper.body``) as compact JSON in its key order;
    ``recipe_json``: the recipe already encoded (by :func:`encode_recipe`).

    TypeError or ValueError if a part cannot be carried (RecursionError if nested too deep).
    """
    return b"".join(
        (
            b'{"environment":',
            _ENCODE_PART(body["environment"]).encode("utf-8"),
            b',"payload":',
            _ENCODE_PART(body["payload"]).encode("utf-8"),
            b',"recipe":',
            recipe_json if recipe_json is not None else _recipe_json(body["recipe"]),
            b',"recipe-path":',  # node numbers (checked ints): msgspec's
            _MSGSPEC_ENCODE(body["recipe-path"]),
            b',"recipe-pointer":',
            _MSGSPEC_ENCODE(body["recipe-pointer"]),
            b"}",
        )
    )

"""The JSON of an outgoing recipe message, each part written by the encoder that suits it.

The recipe is the bulk of every body and JSON-only data already, so msgspec writes
it; what a service builds (payload, environment) is written by json, which refuses
what a message cannot carry.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable
from typing import Any

import msgspec

from zhpc.recipe.data import json_default

__all__ = ["encode_body", "encode_recipe"]

_JSON_ENCODER = json.JSONEncoder(default=json_default, allow_nan=False, separators=(",", ":"))


def _part_encoder() -> Callable[[Any], str]:
    """The payload and environment of every message: they come from the service, and json
    refuses what a message cannot carry (NaN, sets, bytes, dates), which msgspec would
    write (NaN as null, a set as a list).

    ``JSONEncoder.encode`` builds json's C encoder again on every call, three quarters
    of what encoding a small payload costs (3.0 against 0.7 us here); this one is built
    once, with the same settings, so the text is the same. It keeps no table of the
    containers being written (the table is what makes json's single-use): a payload
    that contains itself runs into the recursion limit, and ``JSONEncoder.encode``
    then says which it is, circular or deep. Without json's C part (another Python),
    ``JSONEncoder.encode`` it is.
    """
    make = json.encoder.c_make_encoder
    if make is None:  # pragma: no cover - CPython has it
        return _JSON_ENCODER.encode
    encoder = make(
        None,
        json_default,
        json.encoder.encode_basestring_ascii,
        None,
        ":",
        ",",
        False,
        False,
        False,
    )

    def encode(value: Any) -> str:
        try:
            return "".join(encoder(value, 0))
        except RecursionError:  # json's own says whether it is circular or just deep
            return _JSON_ENCODER.encode(value)

    return encode


_ENCODE_PART = _part_encoder()
_MSGSPEC_ENCODE = msgspec.json.Encoder().encode


def encode_recipe(data: Any) -> bytes:
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
            recipe_json if recipe_json is not None else encode_recipe(body["recipe"]),
            b',"recipe-path":',  # node numbers (checked ints): msgspec's
            _MSGSPEC_ENCODE(body["recipe-path"]),
            b',"recipe-pointer":',
            _MSGSPEC_ENCODE(body["recipe-pointer"]),
            b"}",
        )
    )

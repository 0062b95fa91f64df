"""The messages that put a quarantined entry back to work (``zhpc dlq reinject``).

At the failed step (the default): the stored body, unchanged, so the recipe
path and the step are kept and earlier steps do not run again, goes to the
queue it failed in (or ``--to``). The copy keeps the message id and every
header except those that record failures and dead-lettering, so it has a
fresh failure budget, and ``zhpc-reinjected`` says how often it came back.

From the start: the recipe carried in the body is started again, as the
Dispatcher starts one (``RecipeWrapper.start``), with the same recipe id
(``environment``) and new message ids, so the start messages are not taken
for duplicates of the first ones.
"""

from __future__ import annotations

import datetime
import decimal
import uuid
from typing import Any

from zhpc.errors import InvalidHeaders, RecipeError, ZhpcError
from zhpc.message import MESSAGE_ID_HEADER, Outgoing, check_headers
from zhpc.quarantine.entry import REINJECTED_HEADER, QuarantineEntry

#: Headers (or prefixes of them) about earlier failures: a reinjected copy has none of them.
FAILURE_HEADERS = (
    "x-death",
    "x-first-death-",
    "x-last-death-",
    "x-delivery-count",
    "zhpc-dead-letter-",
    "zhpc-failure",
    "zhpc-last-error",
    "zhpc-last-exception",
    "zhpc-handbacks",
    "zhpc-retry",
)


def fresh_headers(entry: QuarantineEntry) -> dict[str, Any]:
    """The original headers without failure history, plus ``zhpc-reinjected``."""
    original = entry.original_headers()
    headers = {
        key: _carryable(value)
        for key, value in original.items()
        if not key.startswith(FAILURE_HEADERS) and key != REINJECTED_HEADER
    }
    before = original.get(REINJECTED_HEADER)
    count = before if isinstance(before, int) and not isinstance(before, bool) else 0
    headers[REINJECTED_HEADER] = count + 1
    return headers


def at_failed_step(entry: QuarantineEntry, to: str | None = None) -> list[Outgoing]:
    """The stored message, back on its queue (or ``to``) with a fresh failure budget."""
    headers = fresh_headers(entry)
    message_id = str(headers.get(MESSAGE_ID_HEADER) or entry.id)
    headers[MESSAGE_ID_HEADER] = message_id
    try:
        return [Outgoing(to or entry.queue, entry.body, headers=headers, message_id=message_id)]
    except InvalidHeaders as exc:  # e.g. a header name longer than 255 bytes
        raise ZhpcError(f"entry {entry.id}: headers cannot be sent again: {exc}") from None


def from_start(entry: QuarantineEntry) -> list[Outgoing]:
    """The start messages of the recipe the stored message belongs to."""
    from zhpc.recipe import Recipe, RecipeWrapper

    body = entry.body_json()
    if not isinstance(body, dict) or not isinstance(body.get("recipe"), dict):
        raise ZhpcError(
            f"entry {entry.id} is not a recipe message; it can only be "
            "reinjected as it is (without --from-start)"
        )
    environment = body.get("environment")
    try:
        recipe = Recipe(body["recipe"], source=f"entry {entry.id}")
        recipe.validate()
        wrapper = RecipeWrapper(
            recipe, environment=dict(environment or {}), message_id=uuid.uuid4().hex
        )
        count = fresh_headers(entry)[REINJECTED_HEADER]
        return wrapper.start(headers={REINJECTED_HEADER: count})
    except (RecipeError, TypeError, ValueError) as exc:
        raise ZhpcError(f"entry {entry.id}: its recipe cannot be started again: {exc}") from None


def _carryable(value: Any) -> Any:
    """A header value every broker can send (see ``message.check_headers``)."""
    try:
        check_headers({"value": value})
        return value
    except InvalidHeaders:
        pass
    if isinstance(value, dict):
        return {str(k): _carryable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_carryable(v) for v in value]
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, float | decimal.Decimal):
        return repr(value) if isinstance(value, float) else str(value)
    return str(value)

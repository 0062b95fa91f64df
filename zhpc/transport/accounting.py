"""Failure accounting: which returns of a message count against its delivery limit.

The same rule on every broker, so a message is quarantined for the same reasons
on the embedded broker and on RabbitMQ.

Why it is needed: a consumer that dies returns every message it held, and the
broker counts a delivery for each, prefetched or not. One poison message that
kills its consumer would then push the good messages that consumer had
prefetched towards the dead-letter queue, and preemption, ``scancel`` or a lost
node would do the same. Only the message being processed may count.

How, with broker features only (no state outside the messages):

* A work queue ``Q`` has delivery limit 0 and dead-letters to its *retry lane*
  ``retry.Q``: whatever comes back from ``Q`` (a dead consumer's prefetched
  messages, a lost channel, a failure) moves to the lane at once, uncounted.
* The lane is read one message at a time (``Transport.fetch``), so a consumer
  holds a lane message only while it processes it: a return from the lane is a
  crash of that very message. The lane's delivery limit is ``N - 1``, then
  ``dlq.Q``: with the first delivery from ``Q``, at most ``N + 1`` deliveries,
  the rule zhpc has always had.
* A failure that zhpc sees (``process`` raised, a permanent publish error) is
  recorded in the message itself: the runner republishes it to the lane with
  the failure appended to ``zhpc-failures`` (host, pid, job, error, exception,
  time) and acks the original, so the history and the last error travel with
  the message into the dead-letter queue. Crashes seen in the lane are carried
  over into ``zhpc-crashes`` whenever a message is republished (a hand-back, a
  recorded failure), so the broker's count restarting never resets the budget.
* A hand-back (drain) is not a failure; it keeps the counts and goes back to
  where the message came from. After ``max_handbacks`` of them the message is
  dead-lettered instead (a message that never fits the time left must stop
  bouncing).

Dead-letter queues themselves get no limit and no further dead-letter queue:
RabbitMQ drops a message dead-lettered back into its own queue (measured), so
zhpc never creates ``dlq.dlq.Q``; ordinary services refuse to consume them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from zhpc.errors import ZhpcError
from zhpc.message import Message

#: The lane between a work queue and its dead-letter queue.
RETRY_PREFIX = "retry."
DLQ_PREFIX = "dlq."
#: One entry per failure zhpc saw: {host, pid, job_id, error, exception, time}.
FAILURES_HEADER = "zhpc-failures"
#: Crashes (returns by a dead consumer) counted in the lane before the last republish.
CRASHES_HEADER = "zhpc-crashes"
LAST_ERROR_HEADER = "zhpc-last-error"
LAST_EXCEPTION_HEADER = "zhpc-last-exception"
#: Header counting how often a message was handed back on drain (not failures).
HANDBACK_HEADER = "zhpc-handbacks"
#: Hand-backs after which a message is dead-lettered (it never fits the time left).
DEFAULT_MAX_HANDBACKS = 20
#: Error texts kept in headers are cut to this many characters.
_ERROR_TEXT = 500
#: Headers the broker sets on delivery; never copied into a republished message.
BROKER_HEADERS = ("x-delivery-count",)


def dlq_name(queue: str) -> str:
    """The dead-letter queue of a work queue (of a lane: of the lane's queue)."""
    if is_dead_letter_queue(queue):
        return queue
    return DLQ_PREFIX + origin_queue(queue)


def retry_name(queue: str) -> str:
    """The retry lane of a work queue."""
    return RETRY_PREFIX + origin_queue(queue)


def origin_queue(queue: str) -> str:
    """The work queue a lane belongs to (a work queue is its own origin)."""
    return queue[len(RETRY_PREFIX) :] if is_retry_lane(queue) else queue


def is_retry_lane(queue: str) -> bool:
    return queue.startswith(RETRY_PREFIX)


def is_dead_letter_queue(queue: str) -> bool:
    return queue.startswith(DLQ_PREFIX)


def refuse_as_work_queue(queue: str) -> None:
    """Refuse a lane or dead-letter queue as an ordinary service's input: it would fail
    every message again, in a hot loop (Schlockmeister may: it files them)."""
    if is_dead_letter_queue(queue) or is_retry_lane(queue):
        raise ZhpcError(
            f"queue {queue!r} holds dead or retried messages of {origin_queue(queue)!r}; "
            "a service consumes the work queue (its retry lane is read by itself), and "
            "dead letters are for schlockmeister and 'zhpc dlq'"
        )


def lane_limit(delivery_limit: int) -> int | None:
    """The lane's broker delivery limit for a work queue's limit (None: no lane)."""
    return delivery_limit - 1 if delivery_limit >= 1 else None


def _int(value: Any) -> int:
    try:
        return max(int(value or 0), 0)
    except (TypeError, ValueError):
        return 0


def failure_history(headers: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The failures recorded in a message's headers (oldest first)."""
    found = headers.get(FAILURES_HEADER)
    return [entry for entry in found if isinstance(entry, dict)] if isinstance(found, list) else []


def crashes(message: Message) -> int:
    """Crashes of this message so far: carried over, plus returns in the lane."""
    seen = message.delivery_count - 1 if is_retry_lane(message.queue) else 0
    return _int(message.headers.get(CRASHES_HEADER)) + max(seen, 0)


def spent(message: Message) -> int:
    """Counted returns so far (failures and crashes), before this delivery's outcome."""
    return len(failure_history(message.headers)) + crashes(message)


def exhausted(message: Message, delivery_limit: int) -> bool:
    """True if this delivery must not be processed: the limit is used up already.

    Needed where crashes and recorded failures mix: each republish restarts the
    broker's own count, so the runner checks the carried-over total itself.
    """
    return is_retry_lane(message.queue) and spent(message) > delivery_limit


def carried_headers(message: Message) -> dict[str, Any]:
    """The headers for a republished copy: broker headers dropped, crashes carried over."""
    headers = {k: v for k, v in message.headers.items() if k not in BROKER_HEADERS}
    count = crashes(message)
    if count:
        headers[CRASHES_HEADER] = count
    return headers


def with_failure(
    message: Message, error: BaseException | str, where: Mapping[str, Any]
) -> dict[str, Any]:
    """Headers for the copy of a message that just failed, the failure appended."""
    headers = carried_headers(message)
    if isinstance(error, BaseException):
        text, kind = str(error) or type(error).__name__, type(error).__name__
    else:
        text, kind = error, "Error"
    text = text[:_ERROR_TEXT]
    entry = {**where, "error": text, "exception": kind, "time": round(time.time(), 3)}
    headers[FAILURES_HEADER] = [*failure_history(message.headers), entry]
    headers[LAST_ERROR_HEADER] = text
    headers[LAST_EXCEPTION_HEADER] = kind
    return headers


def dead_after_failure(message: Message, delivery_limit: int) -> bool:
    """Whether the failure that just happened uses up the limit (limit N: N+1 deliveries)."""
    return spent(message) + 1 > delivery_limit


def handbacks(headers: Mapping[str, Any]) -> int:
    return _int(headers.get(HANDBACK_HEADER))


def with_handback(message: Message) -> dict[str, Any]:
    """Headers for a handed-back copy: counts kept, hand-backs + 1."""
    headers = carried_headers(message)
    headers[HANDBACK_HEADER] = handbacks(message.headers) + 1
    return headers


def handback_target(message: Message) -> str:
    """Where a handed-back message goes: back where it came from (a lane stays a lane)."""
    return message.queue

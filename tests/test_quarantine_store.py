"""The quarantine store and what it keeps of a message (SQLite always; PostgreSQL if configured).

PostgreSQL: set ``ZHPC_TEST_POSTGRES_URL`` (e.g. ``postgresql://zhpc@127.0.0.1/zhpc_test``);
each test runs in a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import datetime
import decimal
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from testsupport import unavailable

from zhpc.config import QuarantineConfig
from zhpc.errors import ZhpcError
from zhpc.message import Message
from zhpc.quarantine import QuarantineEntry, QuarantineStore, open_store
from zhpc.quarantine.entry import PARSE_LIMIT, decode_value, encode_value, work_queue
from zhpc.quarantine.store import StoreError

POSTGRES_ENV = "ZHPC_TEST_POSTGRES_URL"


def _postgres_url(schema: str) -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        unavailable(
            f"no PostgreSQL server for the quarantine store (set {POSTGRES_ENV})",
            "the coordinator's scripts/setup-cluster is to provide one",
        )
    try:
        import psycopg
    except ImportError:
        unavailable("psycopg is not installed", "pip install -e '.[test]'")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}"


def _drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(os.environ[POSTGRES_ENV], autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QuarantineStore]:
    if request.param == "sqlite":
        opened = open_store(QuarantineConfig(url=f"sqlite://{tmp_path / 'q.sqlite'}"))
        yield opened
        opened.close()
        return
    schema = f"zhpc_test_{uuid.uuid4().hex[:10]}"
    opened = open_store(QuarantineConfig(url=_postgres_url(schema)))
    try:
        yield opened
    finally:
        opened.close()
        _drop_schema(schema)


def dead_letter(body: bytes = b'{"value": 1}', queue: str = "dlq.work", **headers: Any) -> Message:
    return Message(
        body=body, headers=headers, queue=queue, message_id=headers.get("zhpc-message-id")
    )


def recipe_body(step: int = 2, payload: Any = None) -> bytes:
    import json

    return json.dumps(
        {
            "environment": {"ID": "recipe-1"},
            "payload": payload or {"v": 1},
            "recipe": {"1": {"queue": "a"}, "2": {"queue": "b"}},
            "recipe-path": [1],
            "recipe-pointer": step,
        }
    ).encode()


# -- what is kept of a message ---------------------------------------------------------------
def test_a_rabbitmq_delivery_limit_death_is_read_with_its_history_and_failures() -> None:
    died = datetime.datetime(2026, 12, 1, 10, 0, tzinfo=datetime.UTC)
    message = dead_letter(
        recipe_body(),
        "dlq.retry.work",
        **{
            "zhpc-message-id": "m1",
            "workflows-recipe": True,
            "x-death": [
                {
                    "count": 1,
                    "reason": "delivery_limit",
                    "queue": "retry.work",
                    "time": died,
                    "exchange": "",
                    "routing-keys": ["retry.work"],
                }
            ],
            "x-first-death-queue": "work",
            "zhpc-failures": [
                {
                    "host": "n1",
                    "pid": 11,
                    "job_id": "71",
                    "error": "boom",
                    "exception": "ValueError",
                    "time": "2026-12-01T09:59:00Z",
                },
                {
                    "host": "n2",
                    "pid": 12,
                    "job_id": "72",
                    "error": "boom again",
                    "exception": "ValueError",
                    "time": "2026-12-01T09:59:30Z",
                },
            ],
            "zhpc-last-error": "boom again",
            "zhpc-last-exception": "ValueError",
        },
    )
    entry = QuarantineEntry.from_message(message)
    assert (entry.id, entry.queue, entry.dlq) == ("m1", "work", "dlq.retry.work")
    assert (entry.recipe_id, entry.step, entry.reason) == ("recipe-1", 2, "delivery_limit")
    assert (entry.error, entry.exception, entry.deliveries) == ("boom again", "ValueError", 2)
    assert [f["host"] for f in entry.failures] == ["n1", "n2"]
    assert entry.history[0]["time"] == {"$datetime": died.isoformat()}
    assert entry.summary == '{"v":1}'
    events = [(e["event"], e["where"]) for e in entry.timeline()]
    assert events == [
        ("failed", "host n1, pid 11, job_id 71"),
        ("failed", "host n2, pid 12, job_id 72"),
        ("dead-lettered", "retry.work"),
        ("quarantined", "dlq.retry.work"),
    ]


def test_without_the_new_headers_the_entry_still_says_what_is_known() -> None:
    message = dead_letter(
        recipe_body(1),
        "dlq.work",
        **{
            "zhpc-dead-letter-reason": "malformed: recipe-pointer 7 names no step",
            "zhpc-dead-letter-queue": "work",
            "zhpc-dead-letter-count": 3,
        },
    )
    entry = QuarantineEntry.from_message(message)
    assert (entry.queue, entry.reason, entry.deliveries) == ("work", "malformed", 3)
    assert entry.error == "recipe-pointer 7 names no step" and entry.exception is None
    assert entry.failures == [] and entry.history == []
    assert entry.id.startswith("sha-")  # no message id: a stable one from the content


@pytest.mark.parametrize(
    "body, summary",
    [
        (b"\xff\xfe\x00binary", "9 bytes of binary data: fffe0062696e617279"),
        (b"plain text, not JSON", "plain text, not JSON (not JSON, 20 bytes)"),
        (b"", "(empty body)"),
    ],
)
def test_bodies_that_are_not_json_are_kept_as_they_are(body: bytes, summary: str) -> None:
    entry = QuarantineEntry.from_message(dead_letter(body))
    assert entry.body == body and entry.summary == summary
    assert entry.recipe_id is None and entry.step is None


def test_a_huge_body_is_kept_whole_but_not_parsed() -> None:
    body = b'{"payload": "' + b"x" * PARSE_LIMIT + b'"}'
    entry = QuarantineEntry.from_message(dead_letter(body))
    assert entry.body == body
    assert entry.summary == f"{len(body)} bytes (too large to inspect)"


def test_odd_headers_survive_the_json_safe_form() -> None:
    headers = {
        "when": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        "raw": b"\x00\xff",
        "price": decimal.Decimal("1.50"),
        "ratio": 0.25,
        "nan": float("nan"),
        "nested": [{"$bytes": "looks like a tag"}],
        "n": None,
    }
    encoded = encode_value(headers)
    import json

    again = decode_value(json.loads(json.dumps(encoded)))
    assert again["when"] == headers["when"] and again["raw"] == headers["raw"]
    assert again["price"] == headers["price"] and again["ratio"] == 0.25
    assert again["nested"] == [{"$bytes": "looks like a tag"}] and again["n"] is None
    assert str(again["nan"]) == "nan"


def test_odd_x_death_shapes_do_not_stop_the_filing() -> None:
    entry = QuarantineEntry.from_message(
        dead_letter(b"{}", **{"x-death": [{"count": "many", "reason": b"delivery_limit"}]})
    )
    assert entry.reason == "unknown" and entry.queue == "work"


@pytest.mark.parametrize(
    "name, queue",
    [
        ("dlq.work", "work"),
        ("retry.work", "work"),
        ("dlq.retry.work", "work"),
        ("dlq.dlq.work", "work"),
        ("dlq.", "dlq."),
        ("work.retry.x", "work.retry.x"),
    ],
)
def test_retry_lanes_and_dead_letter_queues_map_back_to_the_work_queue(
    name: str, queue: str
) -> None:
    assert work_queue(name) == queue


def test_the_fingerprint_ignores_what_changes_while_a_copy_waits() -> None:
    first = QuarantineEntry.from_message(dead_letter(b"x", **{"a": 1}))
    again = QuarantineEntry.from_message(
        dead_letter(b"x", **{"a": 1, "x-delivery-count": 3, "zhpc-handbacks": 1})
    )
    other = QuarantineEntry.from_message(dead_letter(b"x", **{"a": 2}))
    assert first.fingerprint == again.fingerprint and first.id == again.id
    assert other.fingerprint != first.fingerprint


def test_an_export_record_round_trips_and_bad_records_are_named() -> None:
    entry = QuarantineEntry.from_message(
        dead_letter(b"\x00\x01", **{"zhpc-message-id": "m9", "k": b"v"})
    )
    again = QuarantineEntry.from_record(entry.to_record())
    assert again.to_record() == entry.to_record() and again.body == b"\x00\x01"
    for bad, problem in [
        ({"id": ""}, "'id' must be a non-empty string"),
        ({"body": "%%%"}, "'body' is not base64"),
        ({"step": "2"}, "'step' must be an integer"),
        ({"extra": 1}, "unknown key(s): extra"),
        ({"quarantined_at": "soon"}, "'quarantined_at' is not a time"),
    ]:
        with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
            QuarantineEntry.from_record({**entry.to_record(), **bad})


# -- the store ---------------------------------------------------------------------------------
def test_the_same_copy_filed_twice_is_one_entry(store: QuarantineStore) -> None:
    message = dead_letter(recipe_body(), **{"zhpc-message-id": "dup-1"})
    first = store.put(QuarantineEntry.from_message(message))
    assert first.new and not first.notified and first.copies == 1
    store.mark_notified("dup-1", first.version)
    message.headers["x-delivery-count"] = 1  # the same copy, delivered again
    second = store.put(QuarantineEntry.from_message(message))
    assert not second.new and second.notified and second.copies == 1
    stored = store.get("dup-1")
    assert stored is not None and stored.version == 2 and stored.body == message.body
    assert [e.id for e in store.entries()] == ["dup-1"]


def test_another_copy_with_the_same_id_updates_the_entry(store: QuarantineStore) -> None:
    store.put(
        QuarantineEntry.from_message(
            dead_letter(b"1", **{"zhpc-message-id": "m", "zhpc-last-error": "old"}), now=1000.0
        )
    )
    store.mark_notified("m", 1)
    filed = store.put(
        QuarantineEntry.from_message(
            dead_letter(b"1", **{"zhpc-message-id": "m", "zhpc-last-error": "new"}), now=2000.0
        )
    )
    assert filed.copies == 2 and not filed.notified  # a new death is reported again
    entry = store.get("m")
    assert entry is not None and entry.error == "new"
    assert entry.quarantined_at == 1000.0 and entry.updated_at == 2000.0


def test_delete_can_insist_on_the_version_it_saw(store: QuarantineStore) -> None:
    store.put(QuarantineEntry.from_message(dead_letter(b"1", **{"zhpc-message-id": "v"})))
    store.put(QuarantineEntry.from_message(dead_letter(b"2", **{"zhpc-message-id": "v"})))
    assert not store.delete("v", version=1)
    assert store.get("v") is not None
    assert store.delete("v", version=2) and store.get("v") is None
    assert not store.delete("v")


def test_ids_resolve_from_unique_prefixes(store: QuarantineStore) -> None:
    for message_id in ("abcd1111", "abcd2222", "ffff0000"):
        store.put(
            QuarantineEntry.from_message(dead_letter(b"x", **{"zhpc-message-id": message_id}))
        )
    assert store.resolve("ffff") == "ffff0000" and store.resolve("abcd1") == "abcd1111"
    with pytest.raises(ZhpcError, match="ambiguous"):
        store.resolve("abcd")
    with pytest.raises(ZhpcError, match="no quarantined message"):
        store.resolve("0000")
    with pytest.raises(ZhpcError, match="no quarantined message"):
        store.resolve("ff")  # too short to be a prefix


def test_entries_filter_by_queue_and_time(store: QuarantineStore) -> None:
    for number, (queue, at) in enumerate([("dlq.a", 100.0), ("dlq.b", 200.0), ("dlq.a", 300.0)]):
        store.put(
            QuarantineEntry.from_message(
                dead_letter(b"x", queue, **{"zhpc-message-id": f"e{number}"}), now=at
            )
        )
    assert [e.id for e in store.entries()] == ["e0", "e1", "e2"]
    assert [e.id for e in store.entries(queue="a")] == ["e0", "e2"]
    assert [e.id for e in store.entries(since=200.0)] == ["e1", "e2"]
    assert [e.id for e in store.entries(before=200.0)] == ["e0"]
    assert store.entries()[0].body == b"" and store.entries(full=True)[0].body == b"x"
    assert store.count() == 3


def test_restore_adds_only_what_is_missing(store: QuarantineStore) -> None:
    entry = QuarantineEntry.from_message(dead_letter(b"x", **{"zhpc-message-id": "r"}))
    assert store.restore(entry) and not store.restore(entry)
    assert store.count() == 1


def test_a_store_that_cannot_be_opened_says_where(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match=str(blocker)):
        open_store(QuarantineConfig(url=f"sqlite://{blocker / 'q.sqlite'}"))

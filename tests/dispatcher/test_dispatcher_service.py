"""The Dispatcher on the embedded broker: merging, parameters, guid, lookups, error queue."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from testsupport import collect

from zhpc import dispatch as dispatcher_module
from zhpc.config import Config, RecipesConfig, ServiceConfig
from zhpc.errors import RecipeError
from zhpc.message import Outgoing
from zhpc.service import ServiceRunner
from zhpc.services.dispatcher import (
    DISPATCHER_QUEUE,
    Dispatcher,
    DispatchInfo,
    DispatchRequest,
    RecipeCache,
)
from zhpc.transport.base import DEAD_LETTER_REASON_HEADER, death_record, dlq_name
from zhpc.transport.embedded import EmbeddedTransport


def step(queue: str, **extra: Any) -> dict[str, Any]:
    return {"service": queue, "queue": queue, **extra}


@pytest.fixture
def recipes(tmp_path: Path) -> Path:
    directory = tmp_path / "recipes"
    directory.mkdir()
    (directory / "alpha.json").write_text(
        json.dumps(
            {
                "1": step(
                    "q.alpha", parameters={"x": "{x}", "id": "{guid}", "host": "{dispatch_host}"}
                ),
                "start": [[1, {"from": "alpha"}]],
            }
        )
    )
    (directory / "beta.yaml").write_text(
        "1: {service: b, queue: q.beta, output: 2}\n"
        "2: {service: b2, queue: q.beta2, parameters: {file: '{x}.out'}}\n"
        "start: [[1, {from: beta}]]\n"
    )
    (directory / "badtemplate.json").write_text(
        json.dumps({"1": step("q.bad", parameters={"f": "{x"}), "start": [[1, {}]]})
    )
    return directory


@pytest.fixture
def transport(tmp_path: Path) -> Iterator[EmbeddedTransport]:
    with EmbeddedTransport(tmp_path / "broker.sqlite") as t:
        yield t


def make_dispatcher(recipes: Path, *extra_lookups: tuple[str, Any]) -> Dispatcher:
    config = Config(recipes=RecipesConfig(directory=recipes))
    dispatcher = Dispatcher("dispatcher", ServiceConfig(idle_timeout=0.1), config)
    if extra_lookups:
        original_setup = dispatcher.setup

        def setup() -> None:
            original_setup()
            dispatcher.lookups.extend(extra_lookups)

        dispatcher.setup = setup  # type: ignore[method-assign]
    return dispatcher


def run(dispatcher: Dispatcher, transport: EmbeddedTransport) -> ServiceRunner:
    runner = ServiceRunner(dispatcher, transport, queue=DISPATCHER_QUEUE)
    assert runner.run() == 0
    return runner


def send(transport: EmbeddedTransport, body: Any, **kwargs: Any) -> Outgoing:
    if isinstance(body, bytes):
        message = Outgoing(DISPATCHER_QUEUE, body, **kwargs)
    else:
        message = Outgoing.json(DISPATCHER_QUEUE, body, **kwargs)
    transport.publish(message)
    return message


def test_merges_custom_then_named_recipes_applies_parameters_and_guid(
    recipes: Path, transport: EmbeddedTransport
) -> None:
    custom = {"1": step("q.custom", parameters={"x": "{x}"}), "start": [[1, {"from": "custom"}]]}
    send(
        transport,
        {
            "recipes": ["alpha", "beta"],
            "custom_recipe": custom,
            "parameters": {"x": "7", "guid": "guid-1"},
        },
        headers={"zocalo.go.user": "someone", "zocalo.go.host": "somewhere"},
    )
    runner = run(make_dispatcher(recipes), transport)
    assert (runner.processed, runner.dead_lettered) == (1, 0)
    assert transport.queue_depth(DISPATCHER_QUEUE).ready == 0

    # The Dispatcher has run: all it sent is queued already, no need to listen for more.
    bodies = {
        q: collect(transport, q, 1, exact=True, listen=0)[0].json()
        for q in ("q.custom", "q.alpha", "q.beta")
    }
    # As Zocalo's Dispatcher: the custom recipe comes first, named recipes follow in order.
    assert bodies["q.custom"]["recipe-pointer"] == 1
    assert bodies["q.alpha"]["recipe-pointer"] == 2
    assert bodies["q.beta"]["recipe-pointer"] == 3
    recipe = bodies["q.alpha"]["recipe"]
    assert set(recipe) == {"1", "2", "3", "4", "start"}
    assert recipe["3"]["output"] == [4]
    assert recipe["4"]["parameters"] == {"file": "7.out"}
    assert recipe["2"]["parameters"]["x"] == "7"
    assert recipe["2"]["parameters"]["id"] == "guid-1"
    # The built-in lookup ran and its parameter was substituted.
    assert recipe["2"]["parameters"]["host"] == DispatchInfo().host
    for body in bodies.values():
        assert body["environment"] == {"ID": "guid-1"}
    assert [b["payload"]["from"] for b in bodies.values()] == ["custom", "alpha", "beta"]
    assert transport.queue_depth("q.beta2").ready == 0  # only start messages were sent


def test_guid_is_made_when_missing_and_is_the_same_for_a_redelivered_request(
    recipes: Path, transport: EmbeddedTransport
) -> None:
    body = {"recipes": ["alpha"], "parameters": {"x": "1"}}
    send(transport, body, message_id="request-1")
    send(transport, body, message_id="request-1")  # the same request delivered again
    send(transport, body, message_id="request-2")
    run(make_dispatcher(recipes), transport)
    started = collect(transport, "q.alpha", 3, exact=True, listen=0)
    ids = [m.json()["environment"]["ID"] for m in started]
    assert all(uuid.UUID(i) for i in ids)
    assert ids[0] == ids[1] != ids[2]


def test_lookups_are_made_once_and_never_override_the_request(
    recipes: Path, transport: EmbeddedTransport
) -> None:
    calls: list[dict[str, Any]] = []

    class Counting:
        made = 0

        def __init__(self) -> None:
            Counting.made += 1

        def __call__(self, parameters: dict[str, Any]) -> dict[str, Any]:
            calls.append(dict(parameters))
            return {"x": "from-lookup", "dispatch_host": "ignored-by-setdefault"}

    for n in range(3):
        send(transport, {"recipes": ["alpha"], "parameters": {"guid": f"g{n}"}})
    send(transport, {"recipes": ["alpha"], "parameters": {"guid": "g3", "x": "mine"}})
    run(make_dispatcher(recipes, ("counting", Counting())), transport)
    assert Counting.made == 1
    assert len(calls) == 4
    # Lookups see what earlier lookups added (dispatch_info runs first).
    assert all("dispatch_time" in c for c in calls)
    started = collect(transport, "q.alpha", 4, exact=True, listen=0)
    xs = sorted(m.json()["recipe"]["1"]["parameters"]["x"] for m in started)
    assert xs == ["from-lookup"] * 3 + ["mine"]


def test_lookups_are_chosen_by_the_service_parameters(
    recipes: Path, transport: EmbeddedTransport
) -> None:
    config = Config(recipes=RecipesConfig(directory=recipes))
    dispatcher = Dispatcher(
        "dispatcher", ServiceConfig(idle_timeout=0.3, parameters={"lookups": []}), config
    )
    send(transport, {"recipes": ["alpha"], "parameters": {"guid": "g"}})
    run(dispatcher, transport)
    (started,) = collect(transport, "q.alpha", 1, exact=True, listen=0)
    params = started.json()["recipe"]["1"]["parameters"]
    assert params["host"] == "{dispatch_host}"  # no lookup ran: left for a later stage


def failing_lookup(parameters: dict[str, Any]) -> dict[str, Any]:
    """Fails for requests that ask for it (parameter "boom"), like a row missing from a database."""
    if "boom" in parameters:
        raise ConnectionError("database is down")
    return {}


BAD_REQUESTS = [
    pytest.param(b"{not json", "request is not JSON", id="not-json"),
    pytest.param(b"\xff\xfe", "not UTF-8", id="not-utf8"),
    pytest.param(["alpha"], "must be a JSON object", id="list-body"),
    pytest.param({"recipes": "alpha"}, "list of recipe names", id="recipes-not-list"),
    pytest.param({"recipes": []}, "names no recipe", id="no-recipe"),
    pytest.param(
        {"recipes": ["alpha"], "parameters": [1]},
        "'parameters' must be",
        id="parameters-not-object",
    ),
    pytest.param({"recipes": ["alpha"], "parameters": {"guid": 5}}, "'guid'", id="guid-int"),
    pytest.param({"recipes": ["alpha"], "parameters": {"guid": "../x"}}, "'guid'", id="guid-path"),
    pytest.param({"recipes": ["nosuch"]}, "no recipe 'nosuch'", id="unknown-recipe"),
    pytest.param({"recipes": ["../alpha"]}, "invalid recipe name", id="path-in-name"),
    pytest.param({"recipes": ["badtemplate"]}, "node 1", id="bad-template"),
    pytest.param({"custom_recipe": {"1": {"queue": "q"}}}, "start", id="invalid-custom"),
    pytest.param({"custom_recipe": "text"}, "'custom_recipe' must be", id="custom-not-object"),
    pytest.param({"rcipes": ["alpha"]}, "names no recipe", id="typo-key"),
    pytest.param(
        {"recipes": ["alpha"], "parameters": {"boom": "1"}},
        "lookup 'failing' failed: database is down",
        id="failed-lookup",
    ),
]


@pytest.mark.parametrize(("body", "reason"), BAD_REQUESTS)
def test_bad_requests_end_in_the_error_queue_with_the_reason(
    recipes: Path, transport: EmbeddedTransport, body: Any, reason: str
) -> None:
    sent = send(transport, body)
    send(transport, {"recipes": ["alpha"], "parameters": {"guid": "good"}})  # not held up
    runner = run(make_dispatcher(recipes, ("failing", failing_lookup)), transport)
    assert (runner.processed, runner.dead_lettered, runner.failed) == (1, 1, 0)
    assert transport.queue_depth(DISPATCHER_QUEUE).ready == 0
    [dead] = collect(transport, dlq_name(DISPATCHER_QUEUE), 1, exact=True, listen=0)
    assert dead.body == sent.body  # the request itself is kept, unchanged
    assert reason in str(dead.headers[DEAD_LETTER_REASON_HEADER])
    record = death_record(dead)
    assert record is not None and record.queue == DISPATCHER_QUEUE
    assert "\n" not in record.detail
    collect(transport, "q.alpha", 1, exact=True, listen=0)
    assert transport.queue_depth("q.bad").ready == 0


def test_recipe_cache_rereads_a_changed_file(
    recipes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[Path] = []
    real = dispatcher_module.load_recipe_file
    monkeypatch.setattr(
        dispatcher_module, "load_recipe_file", lambda path: reads.append(path) or real(path)
    )
    cache = RecipeCache(recipes)
    first = cache.get("alpha")
    first.data[1]["queue"] = "changed by the caller"
    assert cache.get("alpha")[1]["queue"] == "q.alpha"  # copies: the cache is not shared
    assert len(reads) == 1
    path = recipes / "alpha.json"
    path.write_text(json.dumps({"1": step("q.alpha2"), "start": [[1, {}]]}))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert cache.get("alpha")[1]["queue"] == "q.alpha2"
    assert len(reads) == 2
    path.unlink()
    with pytest.raises(RecipeError, match="no recipe 'alpha'"):
        cache.get("alpha")


def test_request_round_trip_is_zocalo_go_format() -> None:
    body = {"recipes": ["a"], "parameters": {"guid": "g", "ispyb_dcid": 5}}
    assert DispatchRequest.from_body(body).to_body() == body
    custom = {"1": {"queue": "q"}, "start": [[1, {}]]}
    request = DispatchRequest.from_body({"custom_recipe": custom})
    assert request.to_body() == {"recipes": [], "parameters": {}, "custom_recipe": custom}
    # zocalo.go leaves out "parameters" never, but other senders may: it defaults to {}.
    assert DispatchRequest.from_body({"recipes": ["a"]}).parameters == {}

"""Steps sent by their plan (zhpc.recipe.plans) send exactly what a fully checked step sends."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from zhpc.errors import RecipeError
from zhpc.message import Message, Outgoing
from zhpc.recipe import RecipeWrapper, plans


def received(out: Outgoing) -> Message:
    return Message(out.body, dict(out.headers), out.destination, message_id=out.message_id)


def first_message(recipe: dict[str, Any]) -> Message:
    return received(RecipeWrapper.from_recipe(recipe, environment={"ID": "r-1"}).start()[0])


def wire(outputs: list[Outgoing]) -> list[tuple[Any, ...]]:
    return [
        (o.destination, o.kind, o.routing_key, o.delay, o.headers, o.body, o.message_id)
        for o in outputs
    ]


def step_sends(message: Message, act: Callable[[RecipeWrapper], Any]) -> list[tuple[Any, ...]]:
    rw = RecipeWrapper.from_message(message)
    act(rw)
    return wire(rw.outbox)


def fresh_copy(message: Message) -> Message:
    """The same message again, as a redelivery would bring it (nothing parsed yet)."""
    return Message(
        message.body, dict(message.headers), message.queue, message_id=message.message_id
    )


RECIPES: dict[str, tuple[dict[str, Any], Callable[[RecipeWrapper], Any]]] = {
    "one output": (
        {"1": {"queue": "a", "output": 2}, "2": {"queue": "b"}, "start": [[1, {"v": 1}]]},
        lambda rw: rw.send({"v": 2}),
    ),
    "fan-out to queue, topic and exchange": (
        {
            "1": {"queue": "a", "output": [2, 3, 4]},
            "2": {"queue": "b", "transport-delay": 5},
            "3": {"topic": "news"},
            "4": {"queue": "c", "exchange": "x"},
            "start": [[1, {}]],
        },
        lambda rw: rw.send([1, 2, 3]),
    ),
    "named outputs": (
        {
            "1": {"queue": "a", "output": {"good": [2], "bad": 3}},
            "2": {"queue": "b"},
            "3": {"queue": "c"},
            "start": [[1, None]],
        },
        lambda rw: (rw.send_to("good", "g"), rw.send_to("bad", "b"), rw.send_to("none", "n")),
    ),
    "default channel": (
        {"1": {"queue": "a", "output": {"main": 2}}, "2": {"queue": "b"}, "start": [[1, 0]]},
        lambda rw: (rw.set_default_channel("main"), rw.send("x")),
    ),
    "step error route": (
        {"1": {"queue": "a", "error": 2}, "2": {"queue": "errors"}, "start": [[1, 0]]},
        lambda rw: rw.send_error({"error": "boom"}),
    ),
    "top-level error route": (
        {"1": {"queue": "a"}, "2": {"queue": "errors"}, "error": 2, "start": [[1, 0]]},
        lambda rw: rw.send_error({"error": "boom"}),
    ),
    "checkpoint": (
        {"1": {"queue": "a", "output": 2}, "2": {"queue": "b"}, "start": [[1, 0]]},
        lambda rw: rw.checkpoint({"again": True}, delay=3),
    ),
    "parameters read": (
        {
            "1": {"queue": "a", "output": 2, "parameters": {"n": 3}},
            "2": {"queue": "b"},
            "start": [[1, 0]],
        },
        lambda rw: rw.send(rw.parameters["n"] * [rw.recipe_step["queue"]]),
    ),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_a_planned_step_sends_what_a_checked_step_sends(name: str) -> None:
    recipe, act = RECIPES[name]
    message = first_message(recipe)
    checked = step_sends(message, act)  # the first: checked in full, its plan kept
    assert plans.plan_for(plans.recipe_bytes(message.body), 1) is not None
    assert checked
    for _ in range(2):
        assert step_sends(fresh_copy(message), act) == checked


def test_a_step_that_cannot_be_sent_is_refused_every_time() -> None:
    body = {"environment": {}, "payload": 0, "recipe": {"1": {"queue": "a", "output": 9}}}
    message = Message(
        json.dumps({**body, "recipe-path": [], "recipe-pointer": 1}).encode(),
        {"workflows-recipe": True},
        "a",
    )
    for _ in range(2):
        with pytest.raises(RecipeError, match="node 9, which does not exist"):
            RecipeWrapper.from_message(fresh_copy(message))
    assert plans.plan_for(plans.recipe_bytes(message.body), 1) is None


def test_what_a_service_changes_in_its_recipe_goes_with_its_messages_only() -> None:
    recipe = {"1": {"queue": "a", "output": 2}, "2": {"queue": "b"}, "start": [[1, 0]]}
    message = first_message(recipe)
    plain = step_sends(fresh_copy(message), lambda rw: rw.send("x"))

    def reroute(rw: RecipeWrapper) -> None:
        rw.recipe.data[2]["queue"] = "elsewhere"  # in place, as workflows allows
        rw.send("x")

    for _ in range(2):  # checked in full (the plan is made then), and by its plan
        plans._plans.clear()
        rerouted = step_sends(fresh_copy(message), reroute)
        assert [out[0] for out in rerouted] == ["elsewhere"]
        assert b'"queue":"elsewhere"' in rerouted[0][5]
        rerouted = step_sends(fresh_copy(message), reroute)
        assert [out[0] for out in rerouted] == ["elsewhere"]
        assert step_sends(fresh_copy(message), lambda rw: rw.send("x")) == plain

    def add_output(rw: RecipeWrapper) -> None:
        rw.recipe_step["output"] = [2, 2]
        rw.send("x")

    assert [out[0] for out in step_sends(fresh_copy(message), add_output)] == ["b", "b"]
    # the next message of the same recipe is sent as the recipe says, not as changed
    assert step_sends(fresh_copy(message), lambda rw: rw.send("x")) == plain


def test_a_replaced_recipe_is_what_the_step_sends_from() -> None:
    message = first_message(
        {"1": {"queue": "a", "output": 2}, "2": {"queue": "b"}, "start": [[1, 0]]}
    )
    step_sends(message, lambda rw: rw.send("x"))
    rw = RecipeWrapper.from_message(fresh_copy(message))
    replacement = RecipeWrapper.from_recipe(
        {"1": {"queue": "a", "output": 2}, "2": {"queue": "c"}, "start": [[1, 0]]}
    ).recipe
    rw.recipe = replacement
    rw.send("x")
    assert [o.destination for o in rw.outbox] == ["c"]


def test_plans_are_bounded() -> None:
    for number in range(plans.MAX_PLANS + 10):
        recipe = {"1": {"queue": f"q{number}", "output": 2}, "2": {"queue": "b"}, "start": [[1, 0]]}
        step_sends(first_message(recipe), lambda rw: rw.send("x"))
    assert len(plans._plans) <= plans.MAX_PLANS


def test_a_changed_top_level_error_route_is_taken() -> None:
    recipe = {
        "1": {"queue": "a"},
        "2": {"queue": "errors", "output": 3},
        "3": {"queue": "other-errors"},
        "error": [2],
        "start": [[1, 0]],
    }
    message = first_message(recipe)

    def reroute_errors(rw: RecipeWrapper) -> None:
        rw.recipe.data["error"] = [3]
        rw.send_error("boom")

    for _ in range(2):  # the second by its plan
        assert [o[0] for o in step_sends(fresh_copy(message), reroute_errors)] == ["other-errors"]
    assert [o[0] for o in step_sends(fresh_copy(message), lambda rw: rw.send_error("e"))] == [
        "errors"
    ]

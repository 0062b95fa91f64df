"""The recipe model and wrapper: validation paths, malformed input, routing, files."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zhpc.errors import RecipeError
from zhpc.message import MESSAGE_ID_HEADER, RECIPE_HEADER, Message, Outgoing
from zhpc.recipe import (
    MAX_DEPTH,
    Recipe,
    RecipeInvalid,
    RecipeWrapper,
    find_recipe,
    load_recipe,
    load_recipe_file,
)

SHIPPED = ["demo", "per-image-analysis", "xia2-cluster", "with-error-route"]


def good() -> dict[str, Any]:
    return {
        "1": {
            "service": "A",
            "queue": "a",
            "output": {"success": 2, "failure": [3]},
            "error": 4,
            "cluster": {"command": ["prog", "{x}"]},
            "wrapper": "prog",
        },
        "2": {"queue": "b", "output": 5},
        "3": {"topic": "t"},
        "4": {"queue": "errors"},
        "5": {"queue": "sink"},
        "6": {"queue": "global-errors"},
        "error": 6,
        "start": [[1, {"x": 1}]],
    }


# ------------------------------------------------------------------ validation


def test_good_recipe_is_valid_and_round_trips_free_sections() -> None:
    recipe = Recipe(good())
    assert recipe.problems() == []
    again = Recipe.from_json(recipe.to_json())
    assert again == recipe
    assert again[1]["cluster"] == {"command": ["prog", "{x}"]}
    assert again[1]["wrapper"] == "prog"
    assert again["error"] == [6], "a single top-level error is listed, as workflows needs"


def broken(change: Any) -> list[str]:
    data = good()
    change(data)
    return Recipe(data).problems()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.pop("start"), "start: missing"),
        (lambda d: d.update(start=[]), "start: must be a non-empty list"),
        (lambda d: d.update(start="1"), "start: must be a non-empty list"),
        (lambda d: d.update(start=[[1]]), "start[0]: must be a [node, payload] pair"),
        (lambda d: d.update(start=[[1, {}], "x"]), "start[1]: must be a [node, payload] pair"),
        (lambda d: d.update(start=[["start", {}]]), "start[0]: 'start' is not a node number"),
        (lambda d: d.update(start=[[9, {}]]), "start[0]: node 9 does not exist"),
        (lambda d: d.update(start=[[True, {}]]), "start[0]: True is not a node number"),
        (lambda d: d.update(error="6"), "error: must be a node number or a list"),
        (lambda d: d.update(error=[7]), "error: node 7 does not exist"),
        (lambda d: d.update(junk={}), "top-level key 'junk': not a node number"),
        (lambda d: d.update({"0": {"queue": "z"}}), "node 0: node numbers start at 1"),
        (lambda d: d.update({"7": "queue"}), "node 7: must be a mapping"),
        (lambda d: d["2"].pop("queue"), "node 2: no destination"),
        (lambda d: d["2"].update(queue=""), "node 2: queue must be a non-empty string"),
        (lambda d: d["2"].update(queue=3), "node 2: queue must be a non-empty string"),
        (lambda d: d["3"].update(exchange="x"), "node 3: exchange needs a 'queue'"),
        (lambda d: d["2"].update({"transport-delay": -1}), "node 2: transport-delay must be"),
        (lambda d: d["2"].update({"transport-delay": "5"}), "node 2: transport-delay must be"),
        (lambda d: d["3"].update({"transport-delay": 5}), "node 3: transport-delay cannot apply"),
        (lambda d: d["2"].update(parameters=[1]), "node 2: parameters must be a mapping"),
        (lambda d: d["2"].update(output=9), "node 2: output: node 9 does not exist"),
        (lambda d: d["2"].update(output=[5, "x"]), "node 2: output: 'x' is not a node number"),
        (lambda d: d["2"].update(output=None), "node 2: output: None is not a node number"),
        (
            lambda d: d["1"]["output"].update(success="2"),
            "node 1: output.success: must be a node number or a list",
        ),
        (lambda d: d["1"]["output"].update(success=[8]), "node 1: output.success: node 8 does not"),
        (lambda d: d["1"].update(error={"a": 4}), "node 1: error: must be a node number or a list"),
        (lambda d: d["1"].update(error=[4.5]), "node 1: error: 4.5 is not a node number"),
        (
            lambda d: d["1"].update(error="x"),
            "node 1: error: must be a node number, a list of them, or named outputs, not 'x'",
        ),
        (
            lambda d: d["1"]["output"].update({"": [2]}),
            "node 1: output: output name '' must be a non-empty string",
        ),
        (lambda d: d["5"].update(output=2), "cycle: 2 -> 5 -> 2"),
        (lambda d: d["5"].update(output=5), "cycle: 5 -> 5"),
        (lambda d: d.update({"8": {"queue": "lonely"}}), "node 8: unreachable"),
        (
            lambda d: d["2"].update(parameters={"f": "{}"}),
            "node 2: parameters.f: '{}' names no parameter",
        ),
        (
            lambda d: d["2"].update(parameters={"f": ["ok", "{0}"]}),
            "node 2: parameters.f[1]: '{0}' is positional",
        ),
        (
            lambda d: d["2"].update(parameters={"f": "{x.attr}"}),
            "node 2: parameters.f: attribute access '.attr'",
        ),
        (lambda d: d["2"].update(parameters={"f": "oops }"}), "node 2: parameters.f: Single '}'"),
        (lambda d: d["2"].update(parameters={"f": "{x!z}"}), "unknown conversion '!z'"),
        (
            lambda d: d["2"].update(parameters={"f": "{$REPLACE:{a}}"}),
            "'{$REPLACE:...}' names no parameter",
        ),
        (lambda d: d["2"].update(parameters={"{x.y}": 1}), "node 2: parameters (a key)"),
        (
            lambda d: d.update(start=[[1, "{a:{b:{c}}}"]]),
            "start[0][1]: format specifications nested too deeply",
        ),
    ],
)
def test_every_problem_names_where_it_is(change: Any, expected: str) -> None:
    problems = broken(change)
    assert any(expected in p for p in problems), problems


def test_links_show_what_makes_sense_even_in_a_broken_recipe() -> None:
    recipe = Recipe(
        {
            "1": {
                "queue": "a",
                "output": {"ok": 2, "all": [2, 3], "none": None, "text": "ab"},
                "error": {"e": 3},
            },
            "2": {"queue": "b", "output": 3, "error": "x"},
            "3": {"queue": "c"},
            "start": [[1, None]],
        }
    )
    assert recipe.links(1) == {"ok": [2], "all": [2, 3]}
    assert recipe.links(1, "error") == {"e": [3]}
    assert recipe.links(2) == {None: [3]}
    assert recipe.links(2, "error") == {}
    assert recipe.links(3) == {} and recipe.links(9) == {}


def test_duplicate_node_keys_are_reported() -> None:
    problems = Recipe({"1": {"queue": "a"}, "01": {"queue": "b"}, "start": [[1, None]]}).problems()
    assert "node 1: defined more than once" in problems


def test_empty_recipe() -> None:
    assert Recipe({}).problems() == ["recipe is empty"]
    with pytest.raises(RecipeInvalid, match="recipe is empty"):
        Recipe().validate()


def test_validate_raises_with_all_problems() -> None:
    data = good()
    data["2"].pop("queue")
    data.pop("start")
    with pytest.raises(RecipeInvalid) as caught:
        Recipe(data, source="r.json").validate()
    assert str(caught.value).startswith("r.json: invalid recipe: ")
    assert len(caught.value.problems) >= 2


def test_single_output_is_listed_as_workflows_does() -> None:
    assert Recipe({"1": {"queue": "a", "output": 2}})[1]["output"] == [2]


# ------------------------------------------------------------------ malformed input


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{", "not valid JSON"),
        ("[1, 2]", "a recipe must be a mapping"),
        ('"x"', "a recipe must be a mapping"),
        (b"\xff\xfe", "not UTF-8"),
        ("[" * 5000 + "]" * 5000, "nested"),
        (
            '{"1": {"queue": "a", "p": ' + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "}}",
            "nested more than",
        ),
    ],
)
def test_malformed_json(text: Any, expected: str) -> None:
    with pytest.raises(RecipeError, match=expected):
        Recipe.from_json(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1: [unclosed", "not valid YAML"),
        ("- a\n- b\n", "a recipe must be a mapping"),
        ("1: {queue: a}\n? [1, 2]\n: x\n", "not valid YAML|is not a string"),
        ("1: {queue: a, f: 1.5}\n1.5: x\n", "key 1.5 is not a string"),
        (
            "a: &a [1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
            "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
            "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
            "g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n",
            "more than",
        ),
    ],
)
def test_malformed_yaml(text: str, expected: str) -> None:
    with pytest.raises(RecipeError, match=expected):
        Recipe.from_yaml(text)


def test_yaml_dates_stay_strings() -> None:
    recipe = Recipe.from_yaml("1: {queue: a, parameters: {day: 2024-01-31}}\nstart: [[1, {}]]\n")
    assert recipe[1]["parameters"]["day"] == "2024-01-31"
    assert recipe.problems() == []


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(
                st.text(max_size=3)
                | st.sampled_from(["1", "2", "start", "error", "output", "queue"]),
                inner,
                max_size=4,
            )
        ),
        max_leaves=20,
    )
)
def test_garbage_never_escapes_as_another_exception(data: Any) -> None:
    """Any JSON value as a recipe or message body: a RecipeError at worst."""
    try:
        recipe = Recipe(data)
        recipe.problems()
        recipe.apply_parameters({"x": 1})
    except RecipeError:
        pass
    try:
        wrapper = RecipeWrapper.from_body(data)
        wrapper.send({"r": 1})
        wrapper.send_error("e")
        wrapper.checkpoint(None)
    except RecipeError:
        pass


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ([1], "must be a JSON object"),
        ({}, "no 'recipe' object"),
        ({"recipe": "x", "recipe-pointer": 1}, "no 'recipe' object"),
        ({"recipe": {"1": {"queue": "a"}}}, "recipe-pointer None is not a node number"),
        ({"recipe": {"1": {"queue": "a"}}, "recipe-pointer": "one"}, "is not a node number"),
        ({"recipe": {"1": {"queue": "a"}}, "recipe-pointer": 2}, "recipe-pointer 2 names no step"),
        (
            {"recipe": {"1": {"queue": "a"}}, "recipe-pointer": 1, "recipe-path": "1"},
            "recipe-path '1' is not a list",
        ),
        (
            {"recipe": {"1": {"queue": "a"}}, "recipe-pointer": 1, "environment": []},
            "environment must be an object",
        ),
        (
            {"recipe": {"1": {"queue": "a", "output": 5}}, "recipe-pointer": 1},
            "step 1 output: link to node 5, which does not exist",
        ),
        (
            {"recipe": {"1": {"queue": "a", "output": {"ok": 2}}, "2": {}}, "recipe-pointer": 1},
            "step 1 output 'ok': node 2 has no queue or topic",
        ),
        (
            {"recipe": {"1": {"queue": "a", "error": "x"}}, "recipe-pointer": 1},
            "step 1 error: 'x' is not a valid link",
        ),
        (
            {"recipe": {"1": {"queue": "a", "error": {"e": 1}}}, "recipe-pointer": 1},
            r"step 1 error: \{'e': 1\} is not a valid link",
        ),
        (
            {"recipe": {"1": {"queue": "a", "output": [1, "x"]}}, "recipe-pointer": 1},
            r"step 1 output: \[1, 'x'\] is not a list of node numbers",
        ),
        (
            {"recipe": {"1": {"queue": "a", "output": {"ok": 1, "no": "x"}}}, "recipe-pointer": 1},
            "step 1 output 'no': 'x' is not a list of node numbers",
        ),
    ],
)
def test_bad_message_bodies(body: Any, expected: str) -> None:
    with pytest.raises(RecipeError, match=expected):
        RecipeWrapper.from_body(body)


def test_bad_messages() -> None:
    body = json.dumps({"recipe": {"1": {"queue": "a"}}, "recipe-pointer": 1}).encode()
    with pytest.raises(RecipeError, match="not a recipe message"):
        RecipeWrapper.from_message(Message(body=body, headers={}, queue="a"))
    with pytest.raises(RecipeError, match="not JSON"):
        RecipeWrapper.from_message(Message(body=b"{nope", headers={RECIPE_HEADER: True}, queue="a"))
    with pytest.raises(RecipeError, match="not a recipe message"):
        RecipeWrapper.from_body(json.loads(body), {RECIPE_HEADER: "false"})
    wrapper = RecipeWrapper.from_message(
        Message(body=body, headers={RECIPE_HEADER: "True"}, queue="a")
    )
    assert wrapper.recipe_pointer == 1 and wrapper.payload is None


# ------------------------------------------------------------------ wrapper semantics


def at(pointer: int, data: dict[str, Any] | None = None, **body: Any) -> RecipeWrapper:
    message = {
        "recipe": data or good(),
        "recipe-pointer": pointer,
        "recipe-path": [],
        "environment": {"ID": "r-1"},
        **body,
    }
    encoded = json.dumps(message).encode()
    return RecipeWrapper.from_message(
        Message(body=encoded, queue="q", headers={RECIPE_HEADER: True, MESSAGE_ID_HEADER: "in-1"})
    )


def destinations(outgoing: list[Outgoing]) -> list[tuple[str, str, int]]:
    return [(o.kind, o.destination, json.loads(o.body)["recipe-pointer"]) for o in outgoing]


def test_named_outputs_need_a_channel() -> None:
    wrapper = at(1)
    with pytest.raises(RecipeError, match=r"named outputs \(success, failure\)"):
        wrapper.send({"r": 1})
    assert wrapper.outbox == []
    assert destinations(wrapper.send_to("success", 1)) == [("queue", "b", 2)]
    assert destinations(wrapper.send_to("failure", 1)) == [("topic", "t", 3)]
    assert wrapper.send_to("not-connected", 1) == []
    wrapper.set_default_channel("failure")
    assert destinations(wrapper.send(1)) == [("topic", "t", 3)]
    assert len(wrapper.outbox) == 3


def test_send_error_follows_the_step_then_the_recipe() -> None:
    step_level = at(1).send_error({"why": "boom"})
    assert destinations(step_level) == [("queue", "errors", 4)]
    body = json.loads(step_level[0].body)
    assert body["payload"] == {"why": "boom"}
    assert body["recipe-path"] == [1]
    assert destinations(at(2).send_error("x")) == [("queue", "global-errors", 6)]
    data = good()
    data.pop("error")
    data.pop("6")
    assert at(2, data).send_error("x") == [], "no route: the caller must dead-letter"


def test_end_point_sends_nothing() -> None:
    assert at(5).send({"done": True}) == []


def test_checkpoint_returns_to_the_same_step_with_a_delay() -> None:
    wrapper = at(2, **{"recipe-path": [1]})
    [out] = wrapper.checkpoint({"n": 1}, delay=30)
    body = json.loads(out.body)
    assert (out.destination, out.delay) == ("b", 30)
    assert body["recipe-pointer"] == 2 and body["recipe-path"] == [1]
    [sent] = wrapper.send("x")
    assert json.loads(sent.body)["recipe-path"] == [1, 2]


def test_transport_delay_and_exchange() -> None:
    data = {
        "1": {"queue": "a", "output": [2, 3]},
        "2": {"queue": "slow", "transport-delay": 5},
        "3": {"queue": "routed", "exchange": "ex"},
        "start": [[1, None]],
    }
    out = at(1, data).send("p")
    assert [(o.kind, o.destination, o.routing_key, o.delay) for o in out] == [
        ("queue", "slow", "", 5),
        ("exchange", "ex", "routed", None),
    ]
    delayed = at(1, data).send("p", delay=2)
    assert [(o.kind, o.destination, o.delay) for o in delayed] == [
        ("queue", "slow", 2),
        ("queue", "routed", 2),
    ], "a delay bypasses the exchange"


def test_broadcasts_cannot_be_delayed_and_nothing_is_half_sent() -> None:
    data = {
        "1": {"queue": "a", "output": [2, 3]},
        "2": {"queue": "b"},
        "3": {"topic": "t"},
        "start": [[1, None]],
    }
    wrapper = at(1, data)
    with pytest.raises(RecipeError, match="cannot be delayed"):
        wrapper.send("p", delay=3)
    assert wrapper.outbox == []


def test_headers_and_ids() -> None:
    first = at(1).send_to("success", 1, headers={"x-custom": "y"})[0]
    assert first.headers == {
        "x-custom": "y",
        RECIPE_HEADER: True,
        MESSAGE_ID_HEADER: first.message_id,
    }
    assert first.persistent
    again = at(1).send_to("success", 1)[0]
    assert again.message_id == first.message_id, "redone work gets the same id"
    other = at(1)
    ids = {o.message_id for o in other.send_to("success", 1) + other.send_to("success", 1)}
    assert len(ids) == 2


def test_payload_that_is_not_json() -> None:
    with pytest.raises(RecipeError, match="cannot be encoded"):
        at(2).send({1, 2})


@pytest.mark.parametrize("value", [math.nan, math.inf, {1, 2}, b"bytes"])
@pytest.mark.parametrize("where", ["payload", "environment"])
def test_what_json_cannot_carry_is_refused_in_a_payload_or_environment(
    value: Any, where: str
) -> None:
    rw = at(2)
    payload: Any = {"v": 1}
    if where == "payload":
        payload = {"v": value}
    else:
        rw.environment["extra"] = value
    with pytest.raises(RecipeError, match="cannot be encoded"):
        rw.send(payload)


def test_a_payload_that_contains_itself_is_refused_in_one_line() -> None:
    looped: dict[str, Any] = {"v": 1}
    looped["again"] = looped
    for _ in range(2):  # and the encoder still works for the next one
        with pytest.raises(RecipeError, match="cannot be encoded: Circular reference"):
            at(2).send(looped)
        assert json.loads(at(2).send({"v": 2})[0].body)["payload"] == {"v": 2}


@pytest.mark.parametrize(
    "payload",
    [
        {"f": 1.5, "e": "\u00e9\u2028", "n": None, "l": [True, False, -0.0, 10**30]},
        "text",
        7,
        None,
        {3: "int key", True: "bool key", None: "null key", 2.5: "float key"},
        {"d": Decimal("1.25")},
    ],
)
def test_payloads_are_written_as_json_writes_them(payload: Any) -> None:
    body = at(2).send(payload)[0].body
    written = body.split(b',"payload":', 1)[1].split(b',"recipe":', 1)[0]
    expected = json.dumps(payload, separators=(",", ":"), default=float)
    assert written.decode("ascii") == expected


@pytest.mark.parametrize("value", [math.nan, -math.inf])
def test_a_recipe_its_service_gave_a_non_finite_number_is_refused(value: float) -> None:
    """msgspec writes the recipe (faster) and would write NaN as null: still refused."""
    rw = at(2)
    rw.recipe.data[2]["parameters"] = {"v": value}
    with pytest.raises(RecipeError, match="cannot be encoded"):
        rw.send({"v": 1})


def test_a_recipe_with_nulls_and_unicode_is_sent_as_it_is() -> None:
    data = good()
    data["2"]["parameters"] = {"none": None, "text": "\u00e9t\u00e9 \u2603", "n": [1.5, -0.0]}
    rw = at(2, data)
    sent = json.loads(rw.send({"v": None})[0].body)
    assert sent["recipe"]["2"]["parameters"] == data["2"]["parameters"]
    assert sent["payload"] == {"v": None}
    assert list(sent) == ["environment", "payload", "recipe", "recipe-path", "recipe-pointer"]


def test_emit_callback_receives_everything() -> None:
    seen: list[Outgoing] = []
    wrapper = RecipeWrapper.from_recipe(good(), emit=seen.append)
    produced = wrapper.start()
    assert seen == produced and wrapper.outbox == []
    assert destinations(produced) == [("queue", "a", 1)]


def test_from_recipe_applies_parameters_and_assigns_an_id() -> None:
    wrapper = RecipeWrapper.from_recipe(good(), {"x": "value"}, environment={"source": "t"})
    assert wrapper.recipe[1]["cluster"]["command"] == ["prog", "value"]
    assert wrapper.environment["source"] == "t" and len(wrapper.recipe_id or "") == 36
    with pytest.raises(RecipeError, match="already been started"):
        at(1).start()
    with pytest.raises(RecipeError, match="no current step"):
        wrapper.send(1)
    bad = good()
    bad["1"]["parameters"] = {"f": "{x[nope]}"}
    with pytest.raises(RecipeError, match=r"node 1: parameters.f: no item \[nope\]"):
        RecipeWrapper.from_recipe(bad, {"x": {"a": 1}})


def test_apply_parameters_leaves_recipe_unchanged_on_error() -> None:
    recipe = Recipe(good())
    recipe.data[2]["parameters"] = {"ok": "{x}", "bad": "{x[0]}"}
    before = recipe.to_dict()
    with pytest.raises(RecipeError, match=r"node 2: parameters.bad: cannot look up \[0\]"):
        recipe.apply_parameters({"x": 5})
    assert recipe.to_dict() == before


def test_unknown_names_stay_as_written() -> None:
    recipe = Recipe(
        {
            "1": {
                "queue": "a",
                "parameters": {
                    "a": "{later:>5}",
                    "b": "{later[0]}",
                    "c": "{known:{later}}",
                    "d": "{later[k]}",
                },
            },
            "start": [[1, None]],
        }
    )
    recipe.apply_parameters({"known": 3})
    assert recipe[1]["parameters"] == {
        "a": "{later:>5}",
        "b": "{later[0]}",
        "c": "{known:{later}}",
        "d": "{later[k]}",
    }
    del recipe[1]["parameters"]["c"], recipe[1]["parameters"]["d"]
    recipe.apply_parameters({"later": "7"})
    assert recipe[1]["parameters"] == {"a": "    7", "b": "7"}


def test_command_arguments_are_substituted_one_by_one() -> None:
    recipe = Recipe(
        {
            "1": {"queue": "a", "cluster": {"command": ["xia2", "image={image}"]}},
            "start": [[1, None]],
        }
    )
    recipe.apply_parameters({"image": "/data/a b; rm -rf /"})
    assert recipe[1]["cluster"]["command"] == ["xia2", "image=/data/a b; rm -rf /"]


def test_merge_renumbers() -> None:
    first = Recipe(
        {"1": {"queue": "a", "output": 2}, "2": {"queue": "b"}, "start": [[1, "p"]], "error": 2}
    )
    second = Recipe(
        {
            "1": {"queue": "c", "output": [2], "error": 2},
            "2": {"queue": "d"},
            "start": [[1, "q"]],
            "error": [2],
        }
    )
    merged = first.merge(second)
    assert merged[3] == {"queue": "c", "output": [4], "error": 4}
    assert merged["start"] == [[1, "p"], [3, "q"]]
    assert merged["error"] == [2, 4]
    assert first.merge(None) == first and first.merge(Recipe({})) == first
    with pytest.raises(RecipeInvalid):
        first.merge(Recipe({"1": {"queue": "x"}}))


# ------------------------------------------------------------------ files


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipes_are_valid(name: str) -> None:
    recipe = load_recipe(name)
    assert recipe.problems() == []


def test_demo_recipe_is_what_zhpc_demo_needs() -> None:
    recipe = load_recipe("demo")
    assert recipe[1]["queue"] == "double" and recipe[1]["output"] == [2]
    assert recipe[2]["queue"] == "jsonlines" and "output_filename" in recipe[2]["parameters"]


@pytest.mark.parametrize(
    "name", ["../demo", "a/b", "", ".hidden", "x..y", "/etc/passwd", "demo\\x", 5]
)
def test_find_recipe_refuses_paths(name: Any) -> None:
    with pytest.raises(RecipeError, match="invalid recipe name"):
        find_recipe(name)


def test_find_recipe_in_a_directory(tmp_path: Path) -> None:
    (tmp_path / "one.yml").write_text("1: {queue: a}\nstart: [[1, {}]]\n")
    (tmp_path / "two.json").write_text("{}")
    (tmp_path / "two.yaml").write_text("{}")
    assert find_recipe("one", tmp_path) == tmp_path / "one.yml"
    assert load_recipe("one", tmp_path).problems() == []
    with pytest.raises(RecipeError, match="ambiguous"):
        find_recipe("two", tmp_path)
    with pytest.raises(RecipeError, match="no recipe 'three'"):
        find_recipe("three", tmp_path)
    with pytest.raises(RecipeError, match="does not exist"):
        find_recipe("one", tmp_path / "missing")


def test_load_recipe_file_errors(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe_file(tmp_path / "none.json")
    with pytest.raises(RecipeError, match="is a directory"):
        load_recipe_file(tmp_path)
    (tmp_path / "bin.json").write_bytes(b"\x80\x81")
    with pytest.raises(RecipeError, match="not UTF-8"):
        load_recipe_file(tmp_path / "bin.json")
    (tmp_path / "r.txt").write_text("1: {queue: a}\nstart: [[1, 0]]\n")
    assert load_recipe_file(tmp_path / "r.txt").problems() == []


def test_receiving_does_not_modify_the_message() -> None:
    body = {"recipe": {"1": {"queue": "a", "output": 2}, "2": {"queue": "b"}}, "recipe-pointer": 1}
    message = Message(body=json.dumps(body).encode(), headers={RECIPE_HEADER: True}, queue="a")
    wrapper = RecipeWrapper.from_message(message)
    assert wrapper.recipe_step == {"queue": "a", "output": [2]}
    assert message.json() == body


def test_derived_message_ids_are_uuid5_of_the_input_id_and_counter() -> None:
    """Ids must stay what they were (uuid5), or redone work would not match earlier outputs."""
    import uuid

    from zhpc.recipe.wrapper import _ID_NAMESPACE, derived_id

    for name in ("", "a/0", "0123456789abcdef/17", "ünïcode/3", "x" * 500):
        assert derived_id(name) == uuid.uuid5(_ID_NAMESPACE, name).hex

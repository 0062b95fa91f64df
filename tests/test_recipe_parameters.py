"""zhpc.recipe.substitute: parameter substitution outside a recipe (as ``zhpc wrap`` uses it)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import workflows.recipe as wr
from hypothesis import given, settings
from hypothesis import strategies as st

from zhpc.errors import RecipeError
from zhpc.recipe import Recipe, substitute


def test_each_string_is_filled_in_on_its_own() -> None:
    command = ["xia2", "image={payload[image]}", "nproc={payload[n]}"]
    names = {"payload": {"image": "/data/a b; rm -rf /", "n": 4}}
    assert substitute(command, names) == ["xia2", "image=/data/a b; rm -rf /", "nproc=4"]
    assert command == ["xia2", "image={payload[image]}", "nproc={payload[n]}"]


def test_the_result_shares_nothing_with_value_or_parameters() -> None:
    value = {"files": ["{$REPLACE:files}"], "fixed": {"a": [1]}}
    parameters = {"files": ["a.cbf", "b.cbf"]}
    result = substitute(value, parameters)
    assert result == {"files": [["a.cbf", "b.cbf"]], "fixed": {"a": [1]}}
    result["files"][0].append("c.cbf")
    result["fixed"]["a"].append(2)
    assert parameters == {"files": ["a.cbf", "b.cbf"]}
    assert value == {"files": ["{$REPLACE:files}"], "fixed": {"a": [1]}}


def test_unknown_names_stay_as_written_so_values_can_be_filled_in_stages() -> None:
    value = ["{later}", "{later:>5}", "{later[0]}", "{known}-{later}", "{{braces}}"]
    first = substitute(value, {"known": 3})
    assert first == ["{later}", "{later:>5}", "{later[0]}", "3-{later}", "{braces}"]
    assert substitute(value[:3], {"later": "7"}) == ["7", "    7", "7"]
    # as in python-workflows, $REPLACE of an unknown name gives None
    assert substitute("{$REPLACE:missing}", {}) is None


def test_keys_are_filled_in_and_must_stay_strings() -> None:
    assert substitute({"{name}": 1}, {"name": "k"}) == {"k": 1}
    with pytest.raises(RecipeError, match=r"^value\.\{\$REPLACE:n\}: a key must stay a string"):
        substitute({"{$REPLACE:n}": 1}, {"n": 5})


def test_tuples_come_back_as_lists() -> None:
    assert substitute(("{a}", ("{a}",)), {"a": "x"}) == ["x", ["x"]]


@pytest.mark.parametrize(
    ("value", "parameters", "where", "expected"),
    [
        ("{x!q}", {"x": 1}, "value", r"^value: unknown conversion '!q'"),
        (["ok", "{x!q}"], {"x": 1}, "command", r"^command\[1\]: unknown conversion '!q'"),
        (
            {"k": "{x[0]}"},
            {"x": []},
            "step parameters",
            r"^step parameters\.k: index \[0\] out of range",
        ),
        ({"k": ["{x"]}, {}, "value", r"^value\.k\[0\]: expected '\}' before end of string"),
        ("{x.real}", {"x": 1}, "value", r"attribute access '\.real'"),
        ("{}", {}, "value", r"names no parameter"),
        ("{x:>{w}}", {"x": [1], "w": "z"}, "value", r"cannot format \[1\]"),
    ],
)
def test_errors_are_one_line_naming_the_place(
    value: Any, parameters: dict[str, Any], where: str, expected: str
) -> None:
    with pytest.raises(RecipeError, match=expected) as caught:
        substitute(value, parameters, where=where)
    assert "\n" not in str(caught.value)


def test_refuses_what_json_cannot_carry() -> None:
    with pytest.raises(RecipeError, match=r"^parameters must be a mapping, not list"):
        substitute("{x}", [("x", 1)])  # type: ignore[arg-type]
    with pytest.raises(RecipeError, match=r"^command: set value .* cannot be sent as JSON"):
        substitute(["{x}", {1.5}], {}, where="command")
    with pytest.raises(RecipeError, match=r"^value after substitution: object value"):
        substitute("{$REPLACE:x}", {"x": object()})


templates = st.sampled_from(["{p}", "{p[a]}", "{p!r}", "{$REPLACE:p}", "{q}", "x={p}y", "plain"])
values = st.recursive(
    templates | st.integers() | st.none(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)
parameters = st.fixed_dictionaries(
    {"p": st.fixed_dictionaries({"a": st.integers()}) | st.text(max_size=4) | st.integers()}
)


@settings(max_examples=200, deadline=None)
@given(values, parameters)
def test_same_result_as_python_workflows_on_a_recipe(value: Any, names: dict[str, Any]) -> None:
    """The value substituted alone equals the value substituted inside a workflows recipe."""
    recipe = wr.Recipe(
        {"1": {"queue": "q", "parameters": {"v": copy.deepcopy(value)}}, "start": [[1, None]]}
    )
    try:
        recipe.apply_parameters(names)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        with pytest.raises(RecipeError):
            substitute(value, names)
        return
    assert substitute(value, names) == recipe[1]["parameters"]["v"]


@settings(max_examples=200, deadline=None)
@given(values, parameters)
def test_same_result_as_recipe_apply_parameters(value: Any, names: dict[str, Any]) -> None:
    recipe = Recipe({"1": {"queue": "q", "parameters": {"v": value}}, "start": [[1, None]]})
    try:
        recipe.apply_parameters(names)
    except RecipeError as exc:
        with pytest.raises(RecipeError) as caught:
            substitute(value, names, where="node 1: parameters.v")
        assert str(caught.value) == str(exc)
        return
    assert substitute(value, names) == recipe[1]["parameters"]["v"]

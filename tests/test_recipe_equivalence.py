"""zhpc.recipe against the real python-workflows package (installed from PyPI).

The same inputs go to both implementations; results, message bodies and
destinations must match wherever workflows gives an answer at all.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import workflows.recipe as wr
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from workflows.transport.offline_transport import OfflineTransport
from workflows.transport.pika_transport import PikaTransport

from zhpc.errors import RecipeError
from zhpc.message import MESSAGE_ID_HEADER, RECIPE_HEADER, Message
from zhpc.recipe import Recipe, RecipeWrapper

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def lists(value: Any) -> Any:
    """Tuples as lists: workflows keeps start entries as tuples, JSON has none."""
    if isinstance(value, list | tuple):
        return [lists(v) for v in value]
    if isinstance(value, dict):
        return {k: lists(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------- apply_parameters

PARAMETERS = {
    "a": "alpha",
    "b": 42,
    "c": 2.5,
    "d": {"k": "v", "n": [1, 2], "0": "zero"},
    "l": [1, "two", [3]],
    "n": None,
    "t": True,
    "s": ">6",
}
KNOWN = sorted(PARAMETERS)
names = st.sampled_from([*KNOWN, "missing", "other"])
items = st.sampled_from(["[k]", "[n]", "[0]", "[1]", "[5]", "[zz]", "[n][1]", "[0][0]"])
specs = st.sampled_from(
    [
        ">5",
        "<3",
        "^7",
        ".2f",
        "d",
        "05d",
        "x",
        ",",
        "s",
        "%",
        "{a}",
        "{s}",
        "{missing}",
        ">{b}",
        "*^9",
        "+",
        "e",
    ]
)
conversions = st.sampled_from(["!r", "!s", "!a"])


@st.composite
def fields(draw: st.DrawFn) -> str:
    text = draw(names)
    if draw(st.booleans()):
        text += draw(items)
    if draw(st.integers(0, 3)) == 0:
        text += draw(conversions)
    if draw(st.integers(0, 2)) == 0:
        text += ":" + draw(specs)
    return text


literal = st.text(alphabet="ab /-_.$:", max_size=4)
piece = st.one_of(literal, st.just("{{"), st.just("}}"), fields().map(lambda f: "{" + f + "}"))


@st.composite
def templates(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return "{$REPLACE:" + draw(fields()) + "}"
    if kind == 1:  # several fields after $REPLACE: workflows returns the last one
        return "{$REPLACE:" + draw(fields()) + "}" + draw(literal) + "{" + draw(fields()) + "}"
    return "".join(draw(st.lists(piece, max_size=5)))


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


def recipe_with(template: str, key_template: str) -> dict[str, Any]:
    return {
        "1": {
            "queue": "q",
            "parameters": {"t": template, key_template: "x", "list": [template, 1, None]},
        },
        "start": [[1, {"p": template}]],
    }


def both_apply(data: dict[str, Any], parameters: dict[str, Any]) -> tuple[Any, Any]:
    """(workflows result or exception, zhpc result or exception)."""
    try:
        theirs = wr.Recipe(copy.deepcopy(data))
        theirs.apply_parameters(parameters)
        wf: Any = lists(theirs.recipe)
    except Exception as exc:  # workflows crashes on malformed templates
        wf = exc
    try:
        ours = Recipe(copy.deepcopy(data))
        ours.apply_parameters(parameters)
        zh: Any = ours.data
    except RecipeError as exc:
        zh = exc
    return wf, zh


@SETTINGS
@given(templates(), templates())
def test_apply_parameters_matches_workflows(template: str, key_template: str) -> None:
    wf, zh = both_apply(recipe_with(template, key_template), PARAMETERS)
    if isinstance(zh, Exception) and "key must stay a string" in str(zh):
        # documented refusal: $REPLACE turning a mapping key into a non-string
        assert key_template.startswith("{$REPLACE")
        return
    if not isinstance(wf, Exception):
        assert zh == wf, f"workflows gave {wf!r}, zhpc gave {zh!r}"
    elif not isinstance(zh, Exception):
        # zhpc may only succeed where workflows crashes because of an unknown name,
        # which zhpc leaves as written instead.
        assert "missing" in template + key_template or "other" in template + key_template


@SETTINGS
@given(st.text(alphabet="{}[]!:.$REPLACEabd01 ", max_size=20), json_values)
def test_apply_parameters_on_arbitrary_text(template: str, extra: Any) -> None:
    """Any text: zhpc never raises anything but RecipeError, and agrees when both succeed."""
    parameters = {**PARAMETERS, "e": extra}
    wf, zh = both_apply(recipe_with(template, "k"), parameters)
    if not isinstance(wf, Exception) and not isinstance(zh, Exception):
        assert zh == wf
    if not isinstance(wf, Exception) and isinstance(zh, Exception):
        # the documented refusals: attribute access and $REPLACE naming nothing
        assert "." in template or "$REPLACE" in template, (template, zh)


@SETTINGS
@given(st.dictionaries(st.sampled_from(KNOWN), json_values, max_size=4), templates())
def test_apply_parameters_with_generated_values(parameters: dict[str, Any], template: str) -> None:
    wf, zh = both_apply(recipe_with(template, "k"), parameters)
    if not isinstance(wf, Exception):
        assert zh == wf, f"workflows gave {wf!r}, zhpc gave {zh!r}"


def test_replace_substitutes_the_object_itself() -> None:
    wf, zh = both_apply(recipe_with("{$REPLACE:l}", "k"), PARAMETERS)
    assert zh == wf
    assert zh[1]["parameters"]["t"] == [1, "two", [3]]
    assert zh[1]["parameters"]["t"] is not PARAMETERS["l"]


# ---------------------------------------------------------------- wrappers


class Recording(OfflineTransport):
    """workflows' own offline transport, keeping what it was asked to publish."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[Any, ...]] = []

    def _send(
        self,
        destination,
        message,
        headers=None,
        delay=None,
        expiration=None,
        exchange=None,
        **kwargs,
    ):
        self.sent.append(("send", destination, message, dict(headers or {}), delay, exchange))

    def _broadcast(self, destination, message, headers=None, delay=None, expiration=None, **kwargs):
        # pika's transport asserts here (even for delay=0, which zhpc reads as "no delay")
        assert not delay, "broadcasts cannot be delayed"
        self.sent.append(("broadcast", destination, message, dict(headers or {}), delay, None))


def as_read(body: str) -> Any:
    """A body as its consumer reads it, key order kept (objects as lists of pairs).

    The text itself may differ: workflows writes ``", "`` between items and escapes
    non-ASCII; zhpc writes compact UTF-8. Every JSON parser reads both the same.
    """
    return json.loads(body, object_pairs_hook=list)


def theirs_published(transport: Recording) -> list[tuple[Any, ...]]:
    """What pika would publish for each recorded call: delay wins over exchange."""
    out = []
    for method, destination, body, headers, delay, exchange in transport.sent:
        delay = delay or None
        out.append(
            (
                method,
                destination,
                as_read(body),
                headers,
                delay,
                None if delay else exchange or None,
            )
        )
    return out


def ours_published(outgoing: list[Any]) -> list[tuple[Any, ...]]:
    out = []
    for o in outgoing:
        headers = {k: v for k, v in o.headers.items() if k != MESSAGE_ID_HEADER}
        assert o.headers[MESSAGE_ID_HEADER] == o.message_id
        assert o.persistent
        body = as_read(o.body.decode("utf-8"))
        if o.kind == "topic":
            out.append(("broadcast", o.destination, body, headers, o.delay, None))
        elif o.kind == "exchange":
            out.append(("send", o.routing_key, body, headers, o.delay, o.destination))
        else:
            out.append(("send", o.destination, body, headers, o.delay, None))
    return out


queue_names = st.text(alphabet="abcxyz._-", min_size=1, max_size=8)


plain_text = st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=6)
plain_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(10**6), 10**6), plain_text),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(plain_text, inner, max_size=3),
    max_leaves=6,
)


@st.composite
def recipes(draw: st.DrawFn, valid: bool = False) -> dict[str, Any]:
    """Random acyclic recipes in JSON form (string node keys), as found on the wire.

    With ``valid``, every node is reachable and no text holds a template brace.
    """
    values = plain_values if valid else json_values
    count = draw(st.integers(1, 6))
    data: dict[str, Any] = {}
    for number in range(1, count + 1):
        later = list(range(number + 1, count + 1))
        node: dict[str, Any] = {"service": draw(queue_names)}
        where = draw(st.sampled_from(["queue", "topic", "both"]))
        if where != "topic":
            node["queue"] = draw(queue_names)
            if draw(st.integers(0, 3)) == 0:
                node["exchange"] = draw(queue_names)
        if where != "queue":
            node["topic"] = draw(queue_names)
        elif draw(st.integers(0, 3)) == 0:
            node["transport-delay"] = draw(st.integers(0, 60) | st.floats(0, 60))
        if later and draw(st.integers(0, 4)):
            style = draw(st.sampled_from(["int", "list", "named"]))
            if style == "int":
                node["output"] = draw(st.sampled_from(later))
            elif style == "list":
                node["output"] = draw(st.lists(st.sampled_from(later), max_size=3))
            else:
                node["output"] = draw(
                    st.dictionaries(
                        st.sampled_from(["success", "failure", "any"]),
                        st.sampled_from(later) | st.lists(st.sampled_from(later), max_size=2),
                        max_size=3,
                    )
                )
        if later and draw(st.integers(0, 3)) == 0:
            node["error"] = draw(
                st.sampled_from(later) | st.lists(st.sampled_from(later), min_size=1, max_size=2)
            )
        if draw(st.booleans()):
            node["parameters"] = draw(st.dictionaries(plain_text, values, max_size=2))
        if draw(st.integers(0, 3)) == 0:
            node["cluster"] = {"command": ["prog", "{x}"], "cpus": 2}
        data[str(number)] = node
    data["start"] = [
        [draw(st.integers(1, count)), draw(values)] for _ in range(draw(st.integers(1, 3)))
    ]
    if valid:
        reached = {entry[0] for entry in data["start"]}
        for number in range(1, count + 1):  # links only point forward
            if number not in reached:
                data["start"].append([number, None])
                reached.add(number)
            node = data[str(number)]
            for kind in ("output", "error"):
                for targets in Recipe({"1": {kind: node.get(kind)}}).links(1, kind).values():
                    reached.update(targets)
    return json.loads(json.dumps(data))


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    recipe = draw(recipes())
    pointer = draw(st.integers(1, len(recipe) - 1))
    return {
        "environment": {"ID": draw(st.uuids()).hex, "extra": draw(json_values)},
        "payload": draw(json_values),
        "recipe": recipe,
        "recipe-path": draw(st.lists(st.integers(1, 9), max_size=3)),
        "recipe-pointer": pointer,
    }


actions = st.one_of(
    st.tuples(st.just("send"), json_values, st.none() | st.sampled_from(["success", "other"])),
    st.tuples(st.just("send_to"), json_values, st.sampled_from(["success", "failure", "nope"])),
    st.tuples(st.just("checkpoint"), json_values, st.sampled_from([0, 0.5, 3, 7])),
)


@SETTINGS
@given(messages(), actions)
def test_wrapper_sends_what_workflows_sends(message: dict[str, Any], action: tuple) -> None:
    wire = json.dumps(message)
    transport = Recording()
    theirs = wr.RecipeWrapper(message=json.loads(wire), transport=transport)
    ours = RecipeWrapper.from_body(json.loads(wire))
    name, payload, extra = action
    their_error: Exception | None = None
    our_error: Exception | None = None
    try:
        if name == "send":
            if extra:
                theirs.set_default_channel(extra)
            theirs.send(payload)
        elif name == "send_to":
            theirs.send_to(extra, payload)
        else:
            theirs.checkpoint(payload, delay=extra)
    except AssertionError as exc:  # workflows' pika transport cannot delay a broadcast
        their_error = exc
    try:
        if name == "send":
            if extra:
                ours.set_default_channel(extra)
            produced = ours.send(payload)
        elif name == "send_to":
            produced = ours.send_to(extra, payload)
        else:
            produced = ours.checkpoint(payload, delay=extra)
    except RecipeError as exc:
        our_error = exc
        produced = []
    step = message["recipe"][str(message["recipe-pointer"])]
    if name == "send" and not extra and isinstance(step.get("output"), dict):
        # the workflows pitfall: named outputs, no default channel -> silently nothing
        assert transport.sent == []
        assert our_error is not None and "named outputs" in str(our_error)
        return
    if their_error is not None:
        assert our_error is not None and "cannot be delayed" in str(our_error)
        return
    assert our_error is None
    assert ours_published(produced) == theirs_published(transport)
    assert ours.outbox == produced


@SETTINGS
@given(recipes(), st.dictionaries(st.text(max_size=5), json_values, max_size=2))
def test_start_matches_workflows(recipe: dict[str, Any], environment: dict[str, Any]) -> None:
    transport = Recording()
    wr.RecipeWrapper(
        recipe=copy.deepcopy(recipe), transport=transport, environment=environment
    ).start()
    produced = RecipeWrapper(Recipe(recipe), environment=environment).start()
    assert ours_published(produced) == theirs_published(transport)


@SETTINGS
@given(messages(), st.sampled_from(["send", "checkpoint"]), json_values)
def test_zhpc_parses_what_workflows_produced(
    message: dict[str, Any], how: str, payload: Any
) -> None:
    transport = Recording()
    theirs = wr.RecipeWrapper(message=json.loads(json.dumps(message)), transport=transport)
    if how == "send":
        theirs.set_default_channel("success")
        theirs.send(payload)
    else:
        theirs.checkpoint(payload)
    for _method, _dest, body, headers, _delay, _exchange in transport.sent:
        received = Message(body=body.encode(), headers=headers, queue="q")
        ours = RecipeWrapper.from_message(received)
        decoded = json.loads(body)
        assert ours.recipe_pointer == decoded["recipe-pointer"]
        assert ours.recipe_path == decoded["recipe-path"]
        assert ours.payload == payload
        assert ours.environment == message["environment"]
        assert ours.recipe.data == lists(wr.Recipe(decoded["recipe"]).recipe)
        # and what we send on from there is what workflows would send on from there
        again = Recording()
        wr.RecipeWrapper(message=decoded, transport=again).checkpoint(payload)
        assert ours_published(ours.checkpoint(payload)) == theirs_published(again)


def workflows_receive(outgoing: Any) -> wr.RecipeWrapper:
    """Hand an Outgoing to workflows' own subscription unwrapping, as pika would."""
    transport = OfflineTransport()
    transport.connect()
    got: list[Any] = []
    subscription = wr.wrap_subscribe(
        transport,
        "q",
        lambda rw, header, payload: got.append((rw, header, payload)),
        mangle_for_receiving=PikaTransport._mangle_for_receiving,
    )
    transport.subscription_callback(subscription)(
        dict(outgoing.headers), outgoing.body.decode("utf-8")
    )
    assert len(got) == 1, "workflows did not accept the message as a recipe message"
    return got[0][0]


@SETTINGS
@given(messages(), json_values)
def test_workflows_parses_what_zhpc_produced(message: dict[str, Any], payload: Any) -> None:
    ours = RecipeWrapper.from_body(json.loads(json.dumps(message)))
    produced = ours.checkpoint(payload)
    step = ours.recipe_step or {}
    output = step.get("output")
    if isinstance(output, dict) and output:
        produced += ours.send_to(sorted(output)[0], payload)
    elif output:
        produced += ours.send(payload)
    for outgoing in produced:
        theirs = workflows_receive(outgoing)
        body = json.loads(outgoing.body)
        assert theirs.recipe_pointer == body["recipe-pointer"]
        assert theirs.recipe_path == body["recipe-path"]
        assert theirs.payload == payload
        assert theirs.environment == message["environment"]
        assert lists(theirs.recipe.recipe) == Recipe(body["recipe"]).data


@pytest.mark.parametrize("value", [True, "True", "true", 1])
def test_recipe_header_spellings_accepted_by_both(value: Any) -> None:
    ours = RecipeWrapper.from_recipe({"1": {"queue": "q"}, "start": [[1, "x"]]})
    outgoing = ours.start()[0]
    relabelled = type(outgoing)(
        destination=outgoing.destination,
        body=outgoing.body,
        headers={**outgoing.headers, RECIPE_HEADER: value},
    )
    assert workflows_receive(relabelled).payload == "x"
    received = Message(body=outgoing.body, headers=dict(relabelled.headers), queue="q")
    assert RecipeWrapper.from_message(received).payload == "x"


@SETTINGS
@given(recipes(valid=True), recipes(valid=True))
def test_merge_matches_workflows(first: dict[str, Any], second: dict[str, Any]) -> None:
    ours_a, ours_b = Recipe(first), Recipe(second)
    assume(not ours_a.problems() and not ours_b.problems())
    merged = ours_a.merge(ours_b)
    theirs = wr.Recipe(copy.deepcopy(first)).merge(wr.Recipe(copy.deepcopy(second)))
    assert merged.data == lists(theirs.recipe)
    assert ours_a == Recipe(first), "merge must not modify its inputs"
    merged.validate()


@SETTINGS
@given(recipes(valid=True) | recipes())
def test_validation_agrees_with_workflows_on_what_it_checks(recipe: dict[str, Any]) -> None:
    """Whatever zhpc accepts, workflows accepts too (zhpc is only ever stricter)."""
    if not Recipe(recipe).problems():
        wr.Recipe(copy.deepcopy(recipe)).validate()

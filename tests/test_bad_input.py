"""Bad input (issue 12, items 12-14, 16, 17, 19, 21): one clear line, exit 2, nothing lost.

The table runs each bad input through the real command line in a subprocess, as
a user would, and asserts exit 2, exactly one line on stderr, and neither a
traceback nor ``internal error``. The Dispatcher and the JSONLines sink get the
same inputs on the embedded broker: over a bound means dead-lettered with the reason.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from testsupport import collect

from zhpc.config import Config, LimitsConfig, RecipesConfig, ServiceConfig
from zhpc.errors import RecipeError
from zhpc.message import Outgoing
from zhpc.recipe import Recipe, RecipeWrapper
from zhpc.recipe.parameters import substitute
from zhpc.service import ServiceRunner
from zhpc.services.dispatcher import DISPATCHER_QUEUE, Dispatcher
from zhpc.services.jsonlines import JSONLines
from zhpc.transport.base import DEAD_LETTER_REASON_HEADER, dlq_name
from zhpc.transport.embedded import EmbeddedTransport

#: Seconds a CLI run may take on a loaded machine; a blocking FIFO read would exceed it.
CLI_TIMEOUT = 120

STEP = {"service": "s", "queue": "q"}


def recipe_text(parameters: str = "{}", starts: int = 1) -> str:
    """A one-step recipe as JSON text, with ``parameters`` written verbatim."""
    start = ",".join(["[1, {}]"] * starts)
    return (
        '{"1": {"service": "s", "queue": "q", "parameters": '
        + parameters
        + '}, "start": ['
        + start
        + "]}"
    )


def deep_recipewrapper(depth: int) -> str:
    return (
        '{"recipe": {"1": {"queue": "q", "parameters": '
        + "[" * depth
        + "]" * depth
        + '}}, "recipe-pointer": 1}'
    )


class Case:
    """One bad input: files to write into the test directory, then the zhpc arguments."""

    def __init__(
        self,
        args: list[str],
        files: dict[str, str] | None = None,
        fifo: str | None = None,
        config: str = "",
        expect: str = "",
    ) -> None:
        self.args, self.files, self.fifo, self.config = args, files or {}, fifo, config
        self.expect = expect


BIG_INT = "9" * 5000
LONG_NAME = "a" * 5000

CASES = {
    # item 12: non-finite numbers wherever a recipe is parsed
    "12-go-json-infinity": Case(
        ["go", "-f", "r.json", "--dry-run"],
        {"r.json": recipe_text('{"a": Infinity}')},
        expect="Infinity",
    ),
    "12-go-json-nan": Case(
        ["go", "-f", "r.json", "--dry-run"], {"r.json": recipe_text('{"a": NaN}')}, expect="NaN"
    ),
    "12-go-json-1e400": Case(
        ["go", "-f", "r.json", "--dry-run"],
        {"r.json": recipe_text('{"a": 1e400}')},
        expect="too large",
    ),
    "12-go-yaml-inf": Case(
        ["go", "-f", "r.yaml", "--dry-run"],
        {"r.yaml": "1: {service: s, queue: q, parameters: {a: .inf}}\nstart: [[1, {}]]\n"},
        expect=".inf",
    ),
    "12-go-yaml-nan": Case(
        ["go", "-f", "r.yaml", "--dry-run"],
        {"r.yaml": "1: {service: s, queue: q, parameters: {a: .nan}}\nstart: [[1, {}]]\n"},
        expect=".nan",
    ),
    # item 13: bounds
    "13-format-width": Case(
        ["go", "-f", "r.json", "-s", "p=1", "--dry-run"],
        {"r.json": recipe_text('{"a": "{p:>100000000}"}')},
        expect="larger than",
    ),
    "13-start-fan-out": Case(
        ["go", "-f", "r.json", "--dry-run"],
        {"r.json": recipe_text(starts=1001)},
        expect="limits.max_start_messages",
    ),
    "13-request-size": Case(
        ["go", "-f", "r.json", "-s", "x=" + "y" * 40_000, "--dry-run"],
        {"r.json": recipe_text()},
        config="limits: {max_message_bytes: 20000}\n",
        expect="limits.max_message_bytes",
    ),
    # item 14: internal errors
    "14-long-recipe-name": Case(["go", LONG_NAME, "--dry-run"], expect="longer than"),
    "14-go-5000-digit-int": Case(
        ["go", "-f", "r.json", "--dry-run"],
        {"r.json": recipe_text('{"a": ' + BIG_INT + "}")},
        expect="5000 digits",
    ),
    "14-go-yaml-5000-digit-int": Case(
        ["go", "-f", "r.yaml", "--dry-run"],
        {
            "r.yaml": "1: {service: s, queue: q, parameters: "
            f"{{a: {BIG_INT}}}}}\nstart: [[1, {{}}]]\n"
        },
        expect="5000 digits",
    ),
    "14-config-5000-digit-int": Case(
        ["config", "check"],
        {"zhpc.yaml": f"services: {{x: {{prefetch: {BIG_INT}}}}}\n"},
        expect="5000 digits",
    ),
    "14-recipewrapper-5000-digit-int": Case(
        ["wrap", "--recipewrapper", "rw.json", "--", "true"],
        {
            "rw.json": '{"recipe": {"1": {"queue": "q", "parameters": {"a": '
            + BIG_INT
            + '}}}, "recipe-pointer": 1}'
        },
        expect="5000 digits",
    ),
    "14-time-5000-digits": Case(
        ["submit-services", "-s", "dispatcher", "--time", BIG_INT, "--dry-run"],
        expect="bad time limit",
    ),
    "14-broker-port-99999": Case(
        ["config", "check"],
        {"zhpc.yaml": 'broker: {url: "amqp://u:p@127.0.0.1:99999/"}\n'},
        expect="port",
    ),
    "14-max-runtime-inf": Case(
        ["service", "-s", "dispatcher", "--max-runtime", "inf"], expect="--max-runtime"
    ),
    "14-max-runtime-nan": Case(
        ["service", "-s", "dispatcher", "--max-runtime", "nan"], expect="--max-runtime"
    ),
    "14-config-max-runtime-inf": Case(
        ["config", "check"],
        {"zhpc.yaml": "services: {x: {max_runtime: .inf}}\n"},
        expect="max_runtime",
    ),
    "14-wrap-heartbeat-inf": Case(
        ["wrap", "--heartbeat", "inf", "--", "true"], expect="--heartbeat"
    ),
    "14-recipewrapper-nested-100000": Case(
        ["wrap", "--recipewrapper", "rw.json", "--", "true"],
        {"rw.json": deep_recipewrapper(100_000)},
        expect="nested too deeply",
    ),
    # item 16: submit-services
    "16-count-huge": Case(
        ["submit-services", "-s", "dispatcher", "--count", "99999999999999999999", "--dry-run"],
        expect="--count",
    ),
    "16-time-non-ascii-digits": Case(
        [
            "submit-services",
            "-s",
            "dispatcher",
            "--time",
            "\u0661\u0662:\u0660\u0660:\u0660\u0660",
            "--dry-run",
        ],
        expect="ASCII",
    ),
    # item 19: FIFOs, idle timeout, duplicate keys
    "19-go-fifo": Case(
        ["go", "-f", "pipe.json", "--dry-run"], fifo="pipe.json", expect="not a regular file"
    ),
    "14-prefetch-huge": Case(
        ["service", "-s", "dispatcher", "--prefetch", "99999999999999"], expect="--prefetch"
    ),
    "19-idle-timeout-nan": Case(
        ["service", "-s", "dispatcher", "--idle-timeout", "nan"], expect="--idle-timeout"
    ),
    "19-idle-timeout-negative": Case(
        ["service", "-s", "dispatcher", "--idle-timeout", "-1"], expect="--idle-timeout"
    ),
    "19-duplicate-step-json": Case(
        ["go", "-f", "r.json", "--dry-run"],
        {
            "r.json": '{"1": {"service": "s", "queue": "q"}, '
            '"1": {"service": "s", "queue": "r"}, '
            '"start": [[1, {}]]}'
        },
        expect="twice",
    ),
    "19-duplicate-key-json": Case(
        ["go", "-f", "r.json", "--dry-run"],
        {"r.json": '{"1": {"service": "s", "queue": "q", "queue": "r"}, "start": [[1, {}]]}'},
        expect="twice",
    ),
    "19-duplicate-step-yaml": Case(
        ["go", "-f", "r.yaml", "--dry-run"],
        {"r.yaml": "1: {service: s, queue: q}\n1: {service: s, queue: r}\nstart: [[1, {}]]\n"},
        expect="twice",
    ),
    # item 21: unfilled templates
    "21-go-unfilled": Case(["go", "demo"], expect="{output_filename}"),
    "21-dry-run-unfilled": Case(["go", "demo", "--dry-run"], expect="{output_filename}"),
}


def zhpc(args: list[str], directory: Path, home: Path) -> subprocess.CompletedProcess[str]:
    config = directory / "zhpc.yaml"
    argv = [sys.executable, "-m", "zhpc", "--config", str(config), *args]
    env = {**os.environ, "ZHPC_HOME": str(home)}
    return subprocess.run(
        argv,
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def write_case(case: Case, directory: Path) -> None:
    broker = f'broker: {{url: "sqlite://{directory}/broker.sqlite"}}\n'
    (directory / "zhpc.yaml").write_text(broker + case.config)
    for name, text in case.files.items():  # a case's own zhpc.yaml replaces the default
        (directory / name).write_text(text)
    if case.fifo:
        os.mkfifo(directory / case.fifo)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    write_case(case, tmp_path)
    result = zhpc(case.args, tmp_path, tmp_path / "home")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, (
        result.stderr[-2000:]
    )
    assert result.returncode == 2, (result.returncode, result.stderr[-500:])
    assert len(lines) == 1, result.stderr[-2000:]
    assert case.expect in lines[0], lines[0][:500]
    assert not (tmp_path / "home" / "spool").exists() or not any(
        (tmp_path / "home" / "spool").iterdir()
    ), "a refused request must not be spooled"


# -- recipe validate: refuses as a checker does (exit 1, one line per file), never hangs ----


@pytest.mark.parametrize(
    ("files", "fifo", "expect"),
    [
        pytest.param({}, "pipe.json", "not a regular file", id="19-validate-fifo"),
        pytest.param(
            {"r.json": recipe_text('{"a": ' + BIG_INT + "}")},
            None,
            "5000 digits",
            id="14-validate-5000-digit-int",
        ),
        pytest.param(
            {"r.yaml": "1: {service: s, queue: q}\n1: {service: s, queue: r}\nstart: [[1, {}]]\n"},
            None,
            "twice",
            id="19-validate-duplicate",
        ),
    ],
)
def test_recipe_validate_reports_bad_files_in_one_line(
    tmp_path: Path, files: dict[str, str], fifo: str | None, expect: str
) -> None:
    write_case(Case([], files, fifo), tmp_path)
    target = fifo or next(iter(files))
    result = zhpc(["recipe", "validate", target], tmp_path, tmp_path / "home")
    output = (result.stdout + result.stderr).strip().splitlines()
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert result.returncode == 1 and len(output) == 1 and expect in output[0], output


# -- commands that must work although the input looks odd -----------------------------------


def test_local_dry_run_prints_what_the_local_backend_runs(tmp_path: Path) -> None:
    """item 16: the local backend runs no sbatch, so its dry run must not print one."""
    write_case(Case([]), tmp_path)
    result = zhpc(
        ["submit-services", "-s", "dispatcher", "-n", "3", "--dry-run"], tmp_path, tmp_path / "home"
    )
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("# local backend (no sbatch): 3 detached local process(es)")
    assert "sbatch --" not in result.stdout


def test_braces_in_a_parameter_value_are_inserted_literally(tmp_path: Path) -> None:
    """item 17: ``-s output_filename=out{1}.jsonl`` is a file name, not a template."""
    write_case(Case([]), tmp_path)
    result = zhpc(
        ["go", "demo", "-s", "output_filename=out{1}.jsonl", "--dry-run"],
        tmp_path,
        tmp_path / "home",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["unfilled"] == []


def test_allow_unfilled_sends_and_dry_run_lists_the_templates(tmp_path: Path) -> None:
    """item 21: --allow-unfilled is the way to send such a request; the dry run lists them."""
    write_case(Case([]), tmp_path)
    result = zhpc(["go", "demo", "--dry-run", "--allow-unfilled"], tmp_path, tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["unfilled"] == ["{output_filename}"]


def test_a_directory_named_json_in_the_spool_does_not_block_pickup(tmp_path: Path) -> None:
    """item 14: ``go --pickup`` sends the real spooled request past a ``*.json`` directory."""
    from zhpc.spool import Spool

    home = tmp_path / "home"
    spool = home / "spool"
    (spool / "0000-a-directory.json").mkdir(parents=True)
    Spool(spool).save(DISPATCHER_QUEUE, {"recipes": ["demo"], "parameters": {}}, {})
    write_case(Case([]), tmp_path)
    result = zhpc(["go", "--pickup"], tmp_path, home)
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert result.returncode == 0, result.stderr
    assert "sent 1 spooled request(s)" in result.stdout
    with EmbeddedTransport(tmp_path / "broker.sqlite") as transport:
        assert transport.queue_depth(DISPATCHER_QUEUE).ready == 1


# -- the Dispatcher and the JSONLines sink on the embedded broker ---------------------------


@pytest.fixture
def transport(tmp_path: Path) -> Iterator[EmbeddedTransport]:
    with EmbeddedTransport(tmp_path / "broker.sqlite") as t:
        yield t


def dispatch(
    transport: EmbeddedTransport, tmp_path: Path, body: Any, limits: LimitsConfig | None = None
) -> ServiceRunner:
    config = Config(recipes=RecipesConfig(directory=tmp_path), limits=limits or LimitsConfig())
    transport.publish(Outgoing.json(DISPATCHER_QUEUE, body))
    runner = ServiceRunner(
        Dispatcher("dispatcher", ServiceConfig(idle_timeout=0.1), config),
        transport,
        queue=DISPATCHER_QUEUE,
    )
    assert runner.run() == 0
    return runner


def custom(parameters: dict[str, Any], starts: int = 1) -> dict[str, Any]:
    return {"1": {**STEP, "parameters": parameters}, "start": [[1, {}]] * starts}


@pytest.mark.parametrize(
    ("body", "limits", "reason"),
    [
        pytest.param(
            {"custom_recipe": custom({"a": "{p:>100000000}"}), "parameters": {"p": 1}},
            None,
            "format width or precision 100000000",
            id="13-format-width",
        ),
        pytest.param(
            {"custom_recipe": custom({"a": "{p}" * 20}), "parameters": {"p": "x" * 60}},
            LimitsConfig(max_substituted_chars=1000),
            "more than 1000 characters",
            id="13-substituted-length",
        ),
        pytest.param(
            {"custom_recipe": custom({}, starts=1001)},
            None,
            "limits.max_start_messages",
            id="13-start-fan-out",
        ),
        pytest.param(
            {"custom_recipe": custom({"a": "x" * 3000}, starts=40)},
            LimitsConfig(max_dispatch_bytes=100_000),
            "limits.max_dispatch_bytes",
            id="13-total-start-bytes",
        ),
        pytest.param(
            {"custom_recipe": custom({"a": "x" * 5000})},
            LimitsConfig(max_message_bytes=4096),
            "limits.max_message_bytes",
            id="13-request-bytes",
        ),
    ],
)
def test_dispatcher_dead_letters_a_request_over_a_bound(
    transport: EmbeddedTransport,
    tmp_path: Path,
    body: dict[str, Any],
    limits: LimitsConfig | None,
    reason: str,
) -> None:
    runner = dispatch(transport, tmp_path, body, limits)
    assert (runner.dead_lettered, runner.failed) == (1, 0)
    [dead] = collect(transport, dlq_name(DISPATCHER_QUEUE), 1, exact=True, listen=0)
    assert reason in str(dead.headers[DEAD_LETTER_REASON_HEADER])
    assert transport.queue_depth("q").ready == 0


def test_dispatcher_inserts_braces_from_values_literally(
    transport: EmbeddedTransport, tmp_path: Path
) -> None:
    """item 17: the start message carries the value as given; a later stage keeps it."""
    runner = dispatch(
        transport,
        tmp_path,
        {
            "custom_recipe": custom({"output_filename": "{output_filename}"}),
            "parameters": {"output_filename": "out{1}.jsonl"},
        },
    )
    assert (runner.processed, runner.dead_lettered) == (1, 0)
    [start] = collect(transport, "q", 1, exact=True, listen=0)
    step = start.json()["recipe"]["1"]
    assert step["parameters"]["output_filename"] == "out{1}.jsonl"
    # zhpc wrap substitutes the payload into step parameters again: literal text stays.
    later = substitute(step["parameters"], {"payload": {"n": 3}}, strict=False)
    assert later == {"output_filename": "out{1}.jsonl"}
    assert substitute(["{payload[n]}", "x{0}y"], {"payload": {"n": 3}}, strict=False) == [
        "3",
        "x{0}y",
    ]


def test_jsonlines_never_creates_a_file_named_by_an_unfilled_template(
    transport: EmbeddedTransport, tmp_path: Path
) -> None:
    """item 21: a sink given ``{output_filename}`` dead-letters the message, writes nothing."""
    recipe = Recipe(
        {
            "1": {
                "service": "JSONLines",
                "queue": "jsonlines",
                "parameters": {"output_filename": "{output_filename}"},
            },
            "start": [[1, {"value": 42}]],
        }
    )
    rw = RecipeWrapper.from_recipe(recipe)  # workflows' way: unknown names stay as written
    for out in rw.start():
        transport.publish(out)
    roots = tmp_path / "out"
    roots.mkdir()
    sink = JSONLines(
        "jsonlines", ServiceConfig(idle_timeout=0.1, parameters={"output_roots": [str(roots)]})
    )
    runner = ServiceRunner(sink, transport, queue="jsonlines")
    assert runner.run() == 0
    assert runner.dead_lettered == 1
    [dead] = collect(transport, dlq_name("jsonlines"), 1, exact=True, listen=0)
    assert "unfilled template {output_filename}" in str(dead.headers[DEAD_LETTER_REASON_HEADER])
    assert not list(sink.roots[0].glob("*output_filename*"))
    assert not list(roots.iterdir())


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_a_service_never_emits_infinity_or_nan(value: float) -> None:
    """item 12: a non-finite payload is refused when the message is built, never sent."""
    recipe = Recipe({"1": {**STEP, "output": 2}, "2": dict(STEP), "start": [[1, {}]]})
    first = RecipeWrapper.from_recipe(recipe).start()[0]
    rw = RecipeWrapper.from_body(json.loads(first.body), decoded=True)
    sent: list[Outgoing] = []
    rw.emit = sent.append
    with pytest.raises(RecipeError, match="cannot be encoded"):
        rw.send({"score": value})
    assert sent == []


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            lambda: Recipe({"1": {**STEP, "parameters": {"a": math.inf}}, "start": [[1, {}]]}),
            id="recipe-from-data",
        ),
        pytest.param(lambda: Recipe.from_json(recipe_text('{"a": -Infinity}')), id="recipe-json"),
    ],
)
def test_recipes_refuse_non_finite_numbers(make: Callable[[], Recipe]) -> None:
    with pytest.raises(RecipeError, match="not a number JSON allows"):
        make()

"""``zhpc recipe validate|show`` through the real command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from zhpc.cli import main

SHIPPED = ["demo", "per-image-analysis", "xia2-cluster", "with-error-route"]


def test_validate_shipped_recipes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipe", "validate", *SHIPPED]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{n}: OK" for n in SHIPPED]


def test_validate_reports_one_line_per_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"1": {"queue": "a", "output": 7}, "2": {}, "start": [[1, {}]]}))
    broken = tmp_path / "broken.yaml"
    broken.write_text("1: [unclosed\n")
    code = main(["recipe", "validate", str(bad), "demo", str(broken), str(tmp_path / "no.json")])
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    assert f"{bad}: node 1: output: node 7 does not exist" in out
    assert f"{bad}: node 2: no destination: needs 'queue' or 'topic'" in out
    assert f"{bad}: node 2: unreachable from start or error" in out
    assert "demo: OK" in out
    assert any(line.startswith(f"{broken}: not valid YAML") for line in out)
    assert f"{tmp_path / 'no.json'}: no such recipe file" in out
    assert len(out) == 6


@pytest.mark.parametrize("form", ["text", "mermaid", "dot"])
def test_show_draws_a_recipe_with_malformed_links(
    form: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Links that make no sense are left out of the drawing and listed as problems."""
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "1": {"queue": "a", "output": {"ok": 2, "s": None, "t": "ab"}},
                "2": {"queue": "b"},
                "start": [[1, {}]],
            }
        )
    )
    assert main(["recipe", "show", str(bad), "--format", form]) == 1
    out, err = capsys.readouterr()
    assert "2" in out and "internal error" not in err
    assert err.splitlines() == [
        f"{bad}: node 1: output.s: must be a node number or a list of them, not None",
        f"{bad}: node 1: output.t: must be a node number or a list of them, not 'ab'",
    ]


@pytest.mark.parametrize("name", SHIPPED)
def test_show_mermaid(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipe", "show", name, "--format", "mermaid"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("flowchart TD\n")
    assert "start -->" in out


def test_show_substitutes_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "recipe",
            "show",
            "xia2-cluster",
            "-s",
            "image_path=/d/a.cbf",
            "-s",
            "partition=gpu",
            "-s",
            "pipeline=dials",
            "--format",
            "text",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "runs: xia2 image=/d/a.cbf nproc=4 pipeline=dials" in out
    assert "partition=gpu" in out
    assert "    success -> 2" in out and "    failure -> 3" in out


def test_show_dot_marks_error_routes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipe", "show", "with-error-route", "--format", "dot"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("digraph recipe {") and out.rstrip().endswith("}")
    assert 'n1 -> n4 [label="error", style=dashed];' in out
    assert "error -> n5 [style=dashed];" in out


def test_show_escapes_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "q.json"
    path.write_text(
        json.dumps({"1": {"queue": "a", "service": 'say "hi" <b>'}, "start": [[1, {}]]})
    )
    assert main(["recipe", "show", str(path), "--format", "mermaid"]) == 0
    assert "say #quot;hi#quot; #lt;b#gt;" in capsys.readouterr().out
    assert main(["recipe", "show", str(path), "--format", "dot"]) == 0
    assert 'say \\"hi\\" <b>' in capsys.readouterr().out


def test_show_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipe", "show", "demo", "-s", "novalue"]) == 2
    assert capsys.readouterr().err == "zhpc: error: -s 'novalue': expected KEY=VALUE\n"
    assert main(["recipe", "show", "../etc/passwd"]) == 2
    assert "no such recipe file" in capsys.readouterr().err
    assert main(["recipe", "show", "no-such-recipe"]) == 2
    assert "no recipe 'no-such-recipe'" in capsys.readouterr().err
    path = tmp_path / "t.json"
    path.write_text(
        json.dumps({"1": {"queue": "a", "parameters": {"p": "{x[k]}"}}, "start": [[1, {}]]})
    )
    assert main(["recipe", "show", str(path), "-s", "x=abc"]) == 2
    assert capsys.readouterr().err.startswith(
        "zhpc: error: node 1: parameters.p: cannot look up [k] in str 'abc'"
    )


def test_show_invalid_recipe_still_renders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cycle.json"
    path.write_text(
        json.dumps(
            {"1": {"queue": "a", "output": 2}, "2": {"queue": "b", "output": 1}, "start": [[1, {}]]}
        )
    )
    assert main(["recipe", "show", str(path), "--format", "mermaid"]) == 1
    captured = capsys.readouterr()
    assert "n2 --> n1" in captured.out
    assert "cycle: 1 -> 2 -> 1" in captured.err


def test_installed_command_never_shows_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 100000 + "]" * 100000)
    result = subprocess.run(
        [sys.executable, "-m", "zhpc.cli", "recipe", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout.strip() == f"{path}: nested too deeply"


HOSTILE_NAMES = ["a|b", "x]y", "p)q", "%%gone", "#quot;lit", "new\nline", "back\\", "{c}"]


def hostile_recipe(tmp_path: Path) -> Path:
    """Output, service and queue names that end Mermaid labels or start comments."""
    path = tmp_path / "hostile.json"
    outputs = {name: [2 + number % 2] for number, name in enumerate(HOSTILE_NAMES)}
    path.write_text(
        json.dumps(
            {
                "1": {"queue": "q]u)e|ue", "service": "%%svc [x] (y) {z}\nnext", "output": outputs},
                "2": {"queue": "two"},
                "3": {"queue": "three"},
                "start": [[1, {}]],
            }
        )
    )
    return path


def test_mermaid_labels_survive_any_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 12.18: every statement keeps its shape and every label decodes to the name."""
    import re

    assert main(["recipe", "show", str(hostile_recipe(tmp_path)), "--format", "mermaid"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["flowchart TD", '    start(["start"])']
    # Nothing that could end a label or start a comment: only entity codes and line breaks.
    label = r'(?:[^"\[\]()|{}%\n;`<>#]|#\w+;|<br/>)*'
    node = re.compile(rf'    n\d+(\["(?P<label>{label})"\]|\{{\{{"{label}"\}}\}})\Z')
    edge = re.compile(rf"    (start|n\d+) -->(\|(?P<label>{label})\|)? n\d+\Z")
    nodes = [node.match(line) for line in lines[2:] if node.match(line)]
    edges = [edge.match(line) for line in lines[2:] if edge.match(line)]
    assert len(nodes) + len(edges) == len(lines) - 2, lines
    assert len(nodes) == 3 and len(edges) == 1 + len(HOSTILE_NAMES)

    def decode(text: str) -> str:
        named = {"quot": '"', "lt": "<", "gt": ">"}
        return re.sub(r"#(\d+|quot|lt|gt);", lambda m: named.get(m[1]) or chr(int(m[1])), text)

    assert [decode(m["label"]) for m in edges if m["label"]] == HOSTILE_NAMES
    assert decode(nodes[0]["label"]).split("<br/>") == [
        "1",
        "%%svc [x] (y) {z}\nnext",
        "queue: q]u)e|ue",
    ]


def test_dot_labels_survive_any_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import re

    assert main(["recipe", "show", str(hostile_recipe(tmp_path)), "--format", "dot"]) == 0
    lines = capsys.readouterr().out.splitlines()
    quoted = r'"(?:[^"\\\n]|\\.)*"'
    statement = re.compile(
        rf"    (rankdir=TB|\w+( -> \w+)?( \[\w+=(\w+|{quoted})"
        rf"(, \w+=(\w+|{quoted}))*\])?);\Z"
    )
    assert lines[0] == "digraph recipe {" and lines[-1] == "}"
    assert all(statement.match(line) for line in lines[1:-1]), lines
    labels = [
        json.loads(m)
        for m in re.findall(r'label=("(?:[^"\\]|\\.)*")', "\n".join(lines))
        if m != '"start"'
    ]
    assert labels[-len(HOSTILE_NAMES) :] == HOSTILE_NAMES

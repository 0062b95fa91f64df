"""``zhpc wrap`` as a real process on the embedded broker: outputs, exit codes, signals,
injection, staging and results kept when the broker is away."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jobs_support import recipe_message, wrapped_recipe, write_config, zhpc, zhpc_env
from testsupport import ARGV_DUMP, collect, wait_until

from zhpc.jobfiles import write_recipewrapper
from zhpc.transport.embedded import EmbeddedTransport

Q = "wraptest"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    return root


@pytest.fixture
def config(tmp_path: Path, data: Path) -> Path:
    return write_config(
        tmp_path / "zhpc.yaml",
        {
            "broker": {"url": f"sqlite:///{tmp_path / 'broker.sqlite'}"},
            "staging": {"allowed_roots": [str(data)]},
        },
    )


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedTransport]:
    with EmbeddedTransport(tmp_path / "broker.sqlite") as transport:
        for name in ("success", "failure", "done"):
            transport.declare_queue(f"{Q}.{name}")
        yield transport


def recipewrapper(
    tmp_path: Path,
    step: dict[str, Any],
    payload: Any = None,
    parameters: dict[str, Any] | None = None,
) -> Path:
    """A recipe-wrapper file as the cluster submission service writes it."""
    message = recipe_message(wrapped_recipe(Q, step, payload or {}), parameters)
    path = tmp_path / "job" / "recipewrapper.json"
    path.parent.mkdir(exist_ok=True)
    write_recipewrapper(path, json.loads(message.body), message.message_id)
    return path


def run_wrap(
    config: Path, rwfile: Path | None, *command: str, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    args = ["--config", str(config), "wrap", *extra]
    if rwfile is not None:
        args += ["--recipewrapper", str(rwfile), "--workdir", str(rwfile.parent)]
    return zhpc(*args, "--", *command)


def outcome(broker: EmbeddedTransport, expect: str) -> dict[str, Any]:
    """The one payload on ``expect`` (success/failure), checking done came and the other did not."""
    (message,) = collect(broker, f"{Q}.{expect}", 1, timeout=5)
    other = "failure" if expect == "success" else "success"
    assert collect(broker, f"{Q}.{other}", 1, timeout=0.3, check=False) == []
    (done,) = collect(broker, f"{Q}.done", 1, timeout=5)
    payload = message.json()["payload"]
    assert done.json()["payload"] == payload
    assert message.json()["recipe-pointer"] == 2 if expect == "success" else 3
    return payload


def test_without_recipewrapper_it_runs_the_command_and_keeps_its_exit_code(config: Path) -> None:
    code = "import sys; print('to out'); print('to err', file=sys.stderr); sys.exit(3)"
    proc = run_wrap(config, None, sys.executable, "-c", code)
    assert proc.returncode == 3
    assert proc.stdout == "to out\n" and proc.stderr == "to err\n"


def test_success_sends_success_then_done_with_the_run_details(
    config: Path, broker: EmbeddedTransport, tmp_path: Path
) -> None:
    statuses = []
    broker.subscribe_broadcast("transient.status", statuses.append)
    rwfile = recipewrapper(tmp_path, {})
    proc = run_wrap(config, rwfile, sys.executable, "-c", "print('hello')")
    assert proc.returncode == 0, proc.stderr
    payload = outcome(broker, "success")
    assert payload["status"] == "success" and payload["exit_code"] == 0
    assert payload["stdout"] == "hello\n" and payload["stderr"] == ""
    assert payload["command"] == [sys.executable, "-c", "print('hello')"]
    assert payload["runtime"] > 0 and payload["signal"] is None
    assert payload["slurm_job_id"] is None  # not in a Slurm job here
    assert not rwfile.with_name("recipewrapper.results.json").exists()  # sent: not kept
    broker.poll(0.5)
    assert statuses and statuses[-1].json()["statustext"] == "shutdown"
    assert statuses[-1].json()["service"] == "wrap:command"


def test_failure_reaches_failure_and_the_exit_code_is_the_commands(
    config: Path, broker: EmbeddedTransport, tmp_path: Path
) -> None:
    rwfile = recipewrapper(tmp_path, {})
    code = "import sys; sys.stderr.write('x' * 10000 + 'the end'); sys.exit(7)"
    proc = run_wrap(config, rwfile, sys.executable, "-c", code)
    assert proc.returncode == 7
    payload = outcome(broker, "failure")
    assert payload["exit_code"] == 7 and payload["status"] == "failure"
    assert payload["stderr"].endswith("the end") and len(payload["stderr"]) == 4096


def test_parameters_reach_the_command_as_single_literal_arguments(
    config: Path, broker: EmbeddedTransport, tmp_path: Path
) -> None:
    pwned = Path(f"/tmp/zhpc-pwned-{os.getpid()}-{time.monotonic_ns()}")
    evil = f"; touch {pwned}"
    dump = tmp_path / "argv.json"
    step = {
        "cluster": {
            "command": [
                sys.executable,
                "-c",
                ARGV_DUMP,
                str(dump),
                "{evil}",
                "x={payload[evil]}",
                "$(touch {evil})",
                "`{evil}`",
            ]
        }
    }
    rwfile = recipewrapper(tmp_path, step, {"evil": evil}, parameters={"evil": evil})
    body = json.loads(rwfile.read_text())
    command = body["recipe"]["1"]["cluster"]["command"]  # as the submission service passes it
    proc = run_wrap(config, rwfile, *command)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(dump.read_text()) == [evil, f"x={evil}", f"$(touch {evil})", f"`{evil}`"]
    assert not pwned.exists()
    assert outcome(broker, "success")["exit_code"] == 0


def test_staging_dot_dot_is_refused_before_the_command_runs(
    config: Path, broker: EmbeddedTransport, tmp_path: Path, data: Path
) -> None:
    marker = tmp_path / "ran"
    step = {"cluster": {"stage_in": [f"{data}/../../etc/passwd"]}}
    rwfile = recipewrapper(tmp_path, step)
    proc = run_wrap(config, rwfile, sys.executable, "-c", f"open({str(marker)!r}, 'w')")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "'..' is not allowed" in proc.stderr
    payload = outcome(broker, "failure")
    assert "'..' is not allowed" in payload["error"] and payload["exit_code"] == 2
    assert not marker.exists() and not (rwfile.parent / "passwd").exists()


def test_inputs_are_staged_in_and_results_out(
    config: Path, broker: EmbeddedTransport, tmp_path: Path, data: Path
) -> None:
    (data / "input.txt").write_text("42\n")
    step = {
        "cluster": {
            "stage_in": [str(data / "input.txt")],
            "stage_out": ["*.out"],
            "results_directory": f"{data}/results/{{payload[n]}}",
        }
    }
    rwfile = recipewrapper(tmp_path, step, {"n": 7})
    code = "open('result.out', 'w').write(str(2 * int(open('input.txt').read())))"
    proc = run_wrap(config, rwfile, sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr
    payload = outcome(broker, "success")
    assert payload["files"] == [str(data / "results" / "7" / "result.out")]
    assert (data / "results" / "7" / "result.out").read_text() == "84"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signals_are_forwarded_to_the_command(
    config: Path, broker: EmbeddedTransport, tmp_path: Path, sig: signal.Signals
) -> None:
    ready, got = tmp_path / "ready", tmp_path / "got"
    child = (
        "import signal, sys, time\n"
        f"def on(s, f): open({str(got)!r}, 'w').write(str(s)); sys.exit(42)\n"
        f"signal.signal({int(sig)}, on)\n"
        f"open({str(ready)!r}, 'w')\n"
        "time.sleep(60)\n"
    )
    rwfile = recipewrapper(tmp_path, {})
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zhpc",
            "--config",
            str(config),
            "wrap",
            "--recipewrapper",
            str(rwfile),
            "--workdir",
            str(tmp_path),
            "--",
            sys.executable,
            "-c",
            child,
        ],
        env=zhpc_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(
        lambda: ready.exists() or proc.poll() is not None,
        20,
        0.02,
        "the command to start (or zhpc wrap to exit)",
    )
    assert ready.exists(), proc.communicate()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 42, err
    assert got.read_text() == str(int(sig))
    assert outcome(broker, "failure")["exit_code"] == 42


def test_a_broken_or_unknown_plugin_is_reported_as_failure(
    config: Path, broker: EmbeddedTransport, tmp_path: Path
) -> None:
    rwfile = recipewrapper(tmp_path, {})
    proc = run_wrap(config, rwfile, extra=("--wrap", "zhpc_test_broken"))
    assert proc.returncode == 2
    assert "ValueError in wrapper zhpc_test_broken: bug in the plug-in" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "bug in the plug-in" in outcome(broker, "failure")["error"]
    proc = run_wrap(config, rwfile, "true", extra=("--wrap", "no_such_wrapper"))
    assert proc.returncode == 2
    assert "no wrapper named 'no_such_wrapper'" in outcome(broker, "failure")["error"]


def test_bad_input_gives_one_line_and_exit_2(config: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"recipe": {}}')
    for args in (
        ["--recipewrapper", str(bad), "--", "true"],
        ["--recipewrapper", str(tmp_path / "missing.json"), "--", "true"],
        ["--heartbeat", "0", "--", "true"],
        [],
        ["--", "/no/such/program"],
    ):
        proc = zhpc("--config", str(config), "wrap", *args)
        assert proc.returncode == 2, args
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr


def test_results_are_kept_when_the_broker_is_away_and_can_be_resent(
    config: Path, broker: EmbeddedTransport, tmp_path: Path
) -> None:
    away = write_config(
        tmp_path / "away.yaml",
        {
            "broker": {
                "url": "amqp://guest:guest@127.0.0.1:9/",
                "connection_attempts": 1,
                "retry_delay": 0,
            },
        },
    )
    rwfile = recipewrapper(tmp_path, {})
    proc = run_wrap(away, rwfile, sys.executable, "-c", "print('kept')")
    assert proc.returncode == 2
    spool = rwfile.with_name("recipewrapper.results.json")
    assert f"saved in {spool}" in proc.stderr and "guest:guest" not in proc.stderr
    assert spool.is_file()
    resent = zhpc("--config", str(config), "wrap", "--resend", str(spool))
    assert resent.returncode == 0, resent.stderr
    assert outcome(broker, "success")["stdout"] == "kept\n"
    assert not spool.exists()


def test_results_fall_back_to_zhpc_home_and_stay_out_of_the_go_spool(
    config: Path, broker: EmbeddedTransport, tmp_path: Path
) -> None:
    """Results that cannot be written next to FILE go to $ZHPC_HOME/wrap-results, where
    ``zhpc go --pickup`` (which sends only its own requests) leaves them alone."""
    away = write_config(
        tmp_path / "away.yaml",
        {
            "broker": {
                "url": "amqp://guest:guest@127.0.0.1:9/",
                "connection_attempts": 1,
                "retry_delay": 0,
            },
        },
    )
    rwfile = recipewrapper(tmp_path, {})
    rwfile.with_name("recipewrapper.results.json").mkdir()  # not writable as a file
    env = zhpc_env(ZHPC_HOME=str(tmp_path / "home"))
    proc = zhpc(
        "--config",
        str(away),
        "wrap",
        "--recipewrapper",
        str(rwfile),
        "--workdir",
        str(rwfile.parent),
        "--",
        "true",
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    (kept,) = (tmp_path / "home" / "wrap-results").glob("*.results.json")
    assert f"saved in {kept}" in proc.stderr
    pickup = zhpc("--config", str(config), "go", "--pickup", env=env)
    assert pickup.returncode == 0, pickup.stderr
    assert kept.is_file() and not list((tmp_path / "home").rglob("*.bad"))
    resent = zhpc("--config", str(config), "wrap", "--resend", str(kept), env=env)
    assert resent.returncode == 0, resent.stderr
    assert outcome(broker, "success")["exit_code"] == 0

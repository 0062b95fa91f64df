"""``zhpc demo``: run the example recipe end to end on this machine, nothing to set up.

Everything lives in a fresh directory (a new temporary one, or ``--home``):
the embedded broker's database, the service logs, the output file. ``--home``
must be new, empty, or marked as made by an earlier demo: any other directory
may hold someone's configuration and queued messages. The
Dispatcher, ``double`` and ``jsonlines`` run as separate local processes,
exactly as ``zhpc service -s NAME`` would run them in a batch job, and the
request goes through the same path as ``zhpc go``. Progress comes from the
services' status broadcasts (sent every 0.2 s in the demo) and from the
JSONLines output file. Every process started here is stopped here: SIGTERM
(they drain and exit 0), then SIGKILL if one has not exited in time.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

SERVICES = ("dispatcher", "double", "jsonlines")
RECIPE = "demo"
OUTPUT_NAME = "demo.jsonl"
STOP_TIMEOUT = 15.0
#: Marks a directory the demo made, so a second run may reuse it (and nothing else).
MARKER = ".zhpc-demo"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run an example recipe end to end on this machine (no set-up needed)",
        description="Start the Dispatcher and the demo services as local processes on an "
        "embedded broker in a fresh directory, run the 'demo' recipe through them, show each "
        "step, and stop everything again.",
    )
    parser.add_argument(
        "--home",
        metavar="DIR",
        help="directory for the demo's state: new, empty, or one an earlier "
        "demo made (default: a new temporary one)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="give up if the result has not arrived by then (default: 60)",
    )
    parser.set_defaults(handler=_run)


@dataclass
class _Service:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    processed: int = 0
    seen: bool = False
    shown: bool = False
    returncode: int | None = None


@dataclass
class _Demo:
    home: Path
    config_file: Path
    env: dict[str, str]
    started: float = field(default_factory=time.monotonic)
    services: dict[str, _Service] = field(default_factory=dict)

    def elapsed(self) -> str:
        return f"{time.monotonic() - self.started:6.2f} s"


def _run(args: argparse.Namespace) -> int:
    from zhpc.errors import ZhpcError

    if args.timeout <= 0:
        raise ZhpcError("--timeout must be positive")
    home = (
        Path(args.home).expanduser().resolve()
        if args.home
        else Path(tempfile.mkdtemp(prefix="zhpc-demo-"))
    )
    demo = _prepare(home)
    print(f"zhpc demo: recipe '{RECIPE}' on an embedded broker, state in {home}")
    try:
        return _run_demo(demo, args.timeout)
    finally:
        _stop_all(demo)


def _claim(home: Path) -> None:
    """Take ``home`` for the demo only if it is new, empty, or the demo's own (marked).

    Anything else may be someone's state: the demo would replace its ``zhpc.yaml`` and
    its services would consume the messages waiting in its ``broker.sqlite``.
    """
    from zhpc.errors import ZhpcError

    marker = home / MARKER
    if home.is_dir():
        if not marker.is_file() and any(home.iterdir()):
            raise ZhpcError(
                f"--home {home} is not empty and was not made by zhpc demo; "
                "name a new or empty directory (the demo would replace its "
                "zhpc.yaml and consume the messages in its broker.sqlite)"
            )
    elif home.exists() or home.is_symlink():
        raise ZhpcError(f"--home {home} exists and is not a directory")
    home.mkdir(parents=True, exist_ok=True)
    marker.write_text(
        "Made by zhpc demo, which may replace anything here when it runs again.\n", encoding="utf-8"
    )


def _prepare(home: Path) -> _Demo:
    """A configuration of our own, so the user's config and state are never touched."""
    import yaml

    from zhpc.errors import ZhpcError

    try:
        _claim(home)
        (home / "logs").mkdir(parents=True, exist_ok=True)
        config_file = home / "zhpc.yaml"
        config = {
            "broker": {"url": f"sqlite://{home / 'broker.sqlite'}"},
            "services": {name: {"heartbeat_interval": 0.2, "prefetch": 10} for name in SERVICES},
        }
        config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    except OSError as exc:
        raise ZhpcError(f"cannot use {home} for the demo: {exc.strerror}") from None
    env = {**os.environ, "ZHPC_HOME": str(home), "ZHPC_CONFIG": str(config_file)}
    env.pop("ZHPC_ENV", None)
    # This process reads the same settings (the spool and output paths follow ZHPC_HOME).
    os.environ["ZHPC_HOME"] = str(home)
    os.environ.pop("ZHPC_ENV", None)
    return _Demo(home=home, config_file=config_file, env=env)


def _run_demo(demo: _Demo, timeout: float) -> int:
    from zhpc.commands.go import build_request, send_request, validate
    from zhpc.config import load_config
    from zhpc.errors import ZhpcError
    from zhpc.message import Message
    from zhpc.status import STATUS_TOPIC
    from zhpc.transport import get_transport

    config = load_config(demo.config_file)
    output = demo.home / "output" / OUTPUT_NAME
    deadline = time.monotonic() + timeout

    with get_transport(config.broker) as transport:

        def on_status(message: Message) -> None:
            try:
                status = message.json()
            except ValueError:
                return
            service = demo.services.get(str(status.get("service")))
            if service is None:
                return
            service.seen = True
            processed = status.get("processed")
            if isinstance(processed, int) and processed > service.processed:
                service.processed = processed
                _show_steps(demo)

        transport.subscribe_broadcast(STATUS_TOPIC, on_status)
        for name in SERVICES:
            demo.services[name] = _start_service(demo, name)

        _wait(
            transport,
            demo,
            deadline,
            lambda: all(s.seen for s in demo.services.values()),
            "the services to start",
        )
        print(f"{demo.elapsed()}  started {', '.join(SERVICES)} as local processes")

        request = build_request([RECIPE], [f"output_filename={OUTPUT_NAME}"])
        validate(request, config)
        start_payload = load_recipe_start(config)
        sent, why = send_request(request, config)
        if not sent:
            raise ZhpcError(f"could not send the request to the embedded broker: {why}")
        print(
            f"{demo.elapsed()}  sent recipe '{RECIPE}' with {start_payload}, "
            f"recipe id {request.guid}"
        )

        found: list[dict[str, Any]] = []

        def result_arrived() -> bool:
            record = _find_result(output, request.guid or "")
            if record is not None:
                found.append(record)
            return record is not None

        _wait(transport, demo, deadline, result_arrived, "the result")
        # Let the last status broadcasts arrive, so every step is shown before the result.
        _wait(
            transport,
            demo,
            min(deadline, time.monotonic() + 2.0),
            lambda: all(s.processed for s in demo.services.values()),
            "",
            quiet=True,
        )
        payload = json.dumps(found[0]["payload"])
        print(f"{demo.elapsed()}  result      {payload} in {output}")

    stopped = _stop_all(demo)
    print(
        f"{demo.elapsed()}  stopped {len(stopped)} services "
        + (
            "(all exited 0)"
            if all(code == 0 for code in stopped.values())
            else "(" + ", ".join(f"{n} exited {c}" for n, c in stopped.items()) + ")"
        )
    )
    print(
        f"done in {time.monotonic() - demo.started:.1f} s: recipe '{RECIPE}' turned "
        f"{start_payload} into {payload}; service logs in {demo.home / 'logs'}"
    )
    return 0 if all(code == 0 for code in stopped.values()) else 1


def load_recipe_start(config: Any) -> str:
    """The demo recipe's start payload, as JSON text (for the progress line)."""
    from zhpc.recipe import load_recipe

    start = load_recipe(RECIPE, config.recipes.directory).start
    return json.dumps(start[0][1] if len(start) == 1 else [p for _, p in start])


def _show_steps(demo: _Demo) -> None:
    """Show each step once it has processed its message, in the recipe's order
    (status broadcasts may arrive in any order)."""
    for service in demo.services.values():
        if not service.processed:
            return
        if not service.shown:
            service.shown = True
            _show_step(demo, service)


def _show_step(demo: _Demo, service: _Service) -> None:
    what = {
        "dispatcher": "started the recipe",
        "double": "doubled the value and sent it on",
        "jsonlines": "appended the result to the output file",
    }.get(service.name, "processed a message")
    print(
        f"{demo.elapsed()}  {service.name:<11} {what} "
        f"({service.processed} message{'s' if service.processed != 1 else ''})"
    )


def _start_service(demo: _Demo, name: str) -> _Service:
    log_path = demo.home / "logs" / f"{name}.log"
    log_file = log_path.open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "zhpc", "-v", "service", "-s", name],
        env=demo.env,
        cwd=demo.home,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    return _Service(name, process, log_path, log_file)


def _wait(
    transport: Any,
    demo: _Demo,
    deadline: float,
    done: Callable[[], bool],
    what: str,
    quiet: bool = False,
) -> None:
    """Poll broadcasts until ``done()``; a service that dies or the deadline ends the demo."""
    from zhpc.errors import ZhpcError

    while not done():
        for service in demo.services.values():
            code = service.process.poll()
            if code is not None:
                raise ZhpcError(
                    f"service {service.name} exited with code {code} while waiting "
                    f"for {what}: {_last_line(service.log_path)} "
                    f"(log: {service.log_path})"
                )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if quiet:
                return
            raise ZhpcError(f"timed out waiting for {what}; service logs in {demo.home / 'logs'}")
        transport.poll(min(0.1, remaining))


def _find_result(output: Path, recipe_id: str) -> dict[str, Any] | None:
    try:
        lines = output.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line still being written
        if isinstance(record, dict) and record.get("recipe_id") == recipe_id:
            return record
    return None


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1].strip() if lines else "(empty log)"


def _stop_all(demo: _Demo) -> dict[str, int]:
    """SIGTERM every service still running, SIGKILL what has not exited in time."""
    for service in demo.services.values():
        if service.returncode is None and service.process.poll() is None:
            service.process.send_signal(signal.SIGTERM)
    end = time.monotonic() + STOP_TIMEOUT
    for service in demo.services.values():
        if service.returncode is not None:
            continue
        try:
            service.process.wait(max(end - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            print(
                f"zhpc demo: {service.name} did not stop in {STOP_TIMEOUT:g} s; killing it",
                file=sys.stderr,
            )
            service.process.kill()
            service.process.wait()
        service.returncode = service.process.returncode
        service.log_file.close()
    return {name: s.returncode for name, s in demo.services.items() if s.returncode is not None}

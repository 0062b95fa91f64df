"""Start-up time and idle memory of zhpc's short paths: prints ONE JSON line (not a test).

Everything is measured beside its reference in the same run, interleaved, so a
loaded machine slows both alike: ``python -c pass`` (the same interpreter) for
the commands, a bare ``true`` for ``zhpc wrap -- true``, and a bare Python at
rest for the idle service's RSS. Targets (issue 18): ``zhpc --version`` and
``zhpc go --help`` <= 40 ms where bare Python takes ~20 ms, so the judged
figure is ``*_over_python_ms`` <= 20; ``zhpc wrap -- true`` overhead <= 50 ms;
one idle service (``zhpc service -s double`` on RabbitMQ) <= 35 MB RSS.

Two installs are measured in the same run, interleaved: this venv's (an
editable install, whose ``__editable___*_finder`` .pth costs every Python
start-up ~17 ms) and "installed", what ``pip install .`` gives users: a wheel
of the worktree installed in a throw-away venv that sees this venv's
dependencies through a plain path line in a ``.pth`` file (so this venv's own
.pth files, the editable finder among them, never run there, and ``zhpc``
resolves to the wheel's copy: checked, and reported as ``zhpc_file``). The
top-level keys are the editable install's, as before; ``modes`` has both, and
``targets`` the limits with whether each mode meets them.

Also lists which heavy modules each command imports (msgspec, pika, ssl,
asyncio, yaml, tenacity): those paths should need none of them.

Usage: ``python bench/startup.py [-n 21] [--no-service] [--no-installed]``
(building the wheel needs ``wheel`` with setuptools < 70: ``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from pathlib import Path

AMQP_URL = os.environ.get("ZHPC_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
HEAVY = ("msgspec", "pika", "ssl", "asyncio", "yaml", "tenacity")
ROOT = Path(__file__).resolve().parent.parent
#: Issue 18's limits, judged on each mode's figures.
TARGETS = {
    "version_ms": 40.0,
    "go_help_ms": 40.0,
    "wrap_overhead_ms": 50.0,
    "service_idle_rss_mb": 35.0,
}
#: What the heavy-module probe runs: the console script's own import, then the command.
_PROBE = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('HEAVY', *[m for m in {heavy!r} if m in sys.modules],"
    " file=sys.stderr))\n"
    "sys.argv = ['zhpc', *sys.argv[1:]]\n"
    "from zhpc.cli import entry\n"
    "entry()\n"
)
#: Files of the worktree that do not belong in the wheel's build (copied without them).
_NOT_BUILT = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")


class Mode:
    """One install of zhpc to time: its interpreter and its ``zhpc`` console script."""

    def __init__(self, name: str, python: str, zhpc: list[str]) -> None:
        self.name = name
        self.python = python
        self.zhpc = zhpc


def _compile_zhpc() -> None:
    """Write zhpc's bytecode as an installed package has it (PYTHONDONTWRITEBYTECODE or a
    fresh editable install would otherwise time the compiler, not zhpc)."""
    import compileall

    import zhpc

    compileall.compile_dir(str(Path(zhpc.__file__).parent), quiet=1)


def _zhpc_script(python: str) -> list[str]:
    """The installed console script next to ``python`` (what users run)."""
    script = Path(python).parent / "zhpc"
    return [str(script)] if script.exists() else [python, "-m", "zhpc"]


def _checked(argv: list[str], what: str, **kwargs: object) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed ({proc.returncode}): {proc.stderr.strip()[-600:]}")
    return proc.stdout


def _installed_mode(tmp: Path) -> Mode:
    """A wheel of the worktree in a throw-away venv that borrows this venv's dependencies.

    The worktree is built from a copy, so no ``build/`` is left in it (nor a stale
    one, with modules since deleted, taken into the wheel).
    """
    source = tmp / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*_NOT_BUILT))
    wheels = tmp / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _checked(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        "building the wheel (setuptools < 70 needs the 'wheel' package)",
    )
    venv = tmp / "venv"
    _checked([sys.executable, "-m", "venv", "--without-pip", str(venv)], "creating the venv")
    python = str(venv / "bin" / "python")
    _checked(
        [
            *pip,
            "--python",
            python,
            "install",
            "--no-deps",
            "--no-index",
            *map(str, wheels.iterdir()),
        ],
        "installing the wheel",
    )
    site = _checked(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], "site"
    ).strip()
    # A plain path line: the directory joins sys.path but its own .pth files are not run.
    (Path(site) / "zhpc-bench-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    where = _checked([python, "-P", "-c", "import zhpc; print(zhpc.__file__)"], "importing zhpc")
    if not Path(where.strip()).is_relative_to(site):
        raise SystemExit(f"the installed mode imports zhpc from {where.strip()}, not the wheel")
    return Mode("installed", python, _zhpc_script(python))


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_ms(argv: list[str]) -> tuple[float, float]:
    """Wall and CPU (user + system) milliseconds of one run; CPU suffers less from load."""
    cpu, start = _cpu_s(), time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, check=False)
    elapsed, cpu = (time.perf_counter() - start) * 1000, (_cpu_s() - cpu) * 1000
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:4]}... exited {proc.returncode}: {proc.stderr[-400:]!r}")
    return elapsed, cpu


def _interleaved(commands: dict[str, list[str]], runs: int) -> dict[str, dict[str, float]]:
    """Median and minimum wall time and median CPU time of each command, run round-robin
    after one warm-up each."""
    for argv in commands.values():
        _run_ms(argv)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, argv in commands.items():
            times[name].append(_run_ms(argv))
    return {
        name: {
            "median": round(statistics.median(w for w, _c in t), 1),
            "min": round(min(w for w, _c in t), 1),
            "cpu": round(statistics.median(c for _w, c in t), 1),
        }
        for name, t in times.items()
    }


def _heavy_imports(python: str, args: list[str]) -> list[str]:
    """The heavy modules ``zhpc ARGS`` imports (``-P``: not the worktree's copy in the cwd)."""
    proc = subprocess.run(
        [python, "-P", "-c", _PROBE.format(heavy=HEAVY), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    for line in proc.stderr.splitlines():
        if line.startswith("HEAVY"):
            return line.split()[1:]
    raise SystemExit(f"probe of {args} failed: {proc.stderr[-400:]}")


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+)", status)
    return round(int(match.group(1)) / 1024, 1) if match else 0.0


def _idle_service_rss(modes: list[Mode]) -> dict[str, dict[str, float]]:
    """RSS of each mode's ``zhpc service -s double`` once it consumes, beside a bare Python
    of the same interpreter at rest; the modes' services run at the same time."""
    from zhpc.config import BrokerConfig
    from zhpc.transport import get_transport

    tag = uuid.uuid4().hex[:8]
    queues = {mode.name: f"bench.startup.{tag}.{mode.name}" for mode in modes}
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "zhpc.yaml"
        config.write_text(f"broker: {{url: '{AMQP_URL}'}}\n")
        env = {**os.environ, "ZHPC_HOME": tmp}
        pids: dict[str, tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]] = {}
        transport = get_transport(BrokerConfig(url=AMQP_URL))
        transport.connect()
        try:
            for mode in modes:
                bare = subprocess.Popen([mode.python, "-c", "import time; time.sleep(120)"])
                argv = [*mode.zhpc, "--config", str(config), "-q", "service", "-s", "double"]
                service = subprocess.Popen(
                    [*argv, "--queue", queues[mode.name]],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                procs += [bare, service]
                pids[mode.name] = (service, bare)
            deadline = time.monotonic() + 60
            for mode in modes:
                service = pids[mode.name][0]
                while True:
                    try:
                        if transport.queue_depth(queues[mode.name]).consumers >= 1:
                            break
                    except Exception:  # not declared yet
                        pass
                    if service.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"the {mode.name} service did not start consuming")
                    time.sleep(0.05)
            time.sleep(1.0)  # let start-up allocations settle
            return {
                name: {
                    "service_idle_rss_mb": _rss_mb(service.pid),
                    "python_idle_rss_mb": _rss_mb(bare.pid),
                }
                for name, (service, bare) in pids.items()
            }
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(20)
            for queue in queues.values():
                for name in (queue, f"retry.{queue}", f"dlq.{queue}"):
                    with contextlib.suppress(Exception):
                        transport.delete_queue(name)
            transport.close()


def _figures(mode: Mode, times: dict[str, dict[str, float]]) -> dict[str, object]:
    """One mode's figures, under the keys the line has always had."""
    t = {name.split(":", 1)[1]: v for name, v in times.items() if name.startswith(f"{mode.name}:")}
    t["true"] = times["true"]
    python = t["python"]["median"]
    return {
        "python_ms": python,
        "version_ms": t["version"]["median"],
        "go_help_ms": t["go_help"]["median"],
        "wrap_true_ms": t["wrap_true"]["median"],
        "true_ms": times["true"]["median"],
        "version_over_python_ms": round(t["version"]["median"] - python, 1),
        "go_help_over_python_ms": round(t["go_help"]["median"] - python, 1),
        "wrap_overhead_ms": round(t["wrap_true"]["median"] - times["true"]["median"], 1),
        "min_ms": {name: v["min"] for name, v in t.items()},
        "cpu_ms": {name: v["cpu"] for name, v in t.items()},
        "heavy_imports": {
            "version": _heavy_imports(mode.python, ["--version"]),
            "go_help": _heavy_imports(mode.python, ["go", "--help"]),
            "wrap_true": _heavy_imports(
                mode.python, ["wrap", "--", shutil.which("true") or "true"]
            ),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=21)
    parser.add_argument("--no-service", action="store_true", help="skip the idle-RSS part")
    parser.add_argument(
        "--no-installed", action="store_true", help="time only this venv's (editable) install"
    )
    parser.add_argument(
        "--module",
        action="store_true",
        help="run 'python -m zhpc' (honours PYTHONPATH, e.g. an older checkout)",
    )
    args = parser.parse_args()
    _compile_zhpc()
    zhpc = [sys.executable, "-m", "zhpc"] if args.module else _zhpc_script(sys.executable)
    true = shutil.which("true") or "true"
    with tempfile.TemporaryDirectory(prefix="zhpc-bench-") as tmp:
        modes = [Mode("editable", sys.executable, zhpc)]
        if not args.no_installed:
            modes.append(_installed_mode(Path(tmp)))
        commands: dict[str, list[str]] = {"true": [true]}
        for mode in modes:
            commands |= {
                f"{mode.name}:python": [mode.python, "-c", "pass"],
                f"{mode.name}:version": [*mode.zhpc, "--version"],
                f"{mode.name}:go_help": [*mode.zhpc, "go", "--help"],
                f"{mode.name}:wrap_true": [*mode.zhpc, "wrap", "--", true],
            }
        times = _interleaved(commands, args.runs)
        figures = {mode.name: _figures(mode, times) for mode in modes}
        if not args.no_service:
            for name, rss in _idle_service_rss(modes).items():
                figures[name].update(rss)
        for mode in modes:
            figures[mode.name]["zhpc_file"] = _checked(
                [mode.python, "-P", "-c", "import zhpc; print(zhpc.__file__)"], "zhpc.__file__"
            ).strip()
    line: dict[str, object] = {"benchmark": "startup", "runs": args.runs, **figures["editable"]}
    del line["zhpc_file"]
    line["modes"] = figures
    line["targets"] = {
        key: {
            "max": limit,
            **{name: f[key] <= limit for name, f in figures.items() if key in f},
        }
        for key, limit in TARGETS.items()
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Start-up time and idle memory of zhpc's short paths: prints ONE JSON line (not a test).

Everything is measured beside its reference in the same run, interleaved, so a
loaded machine slows both alike: ``python -c pass`` (the same interpreter) for
the commands, a bare ``true`` for ``zhpc wrap -- true``, and a bare Python at
rest for the idle service's RSS. Targets (issue 18): ``zhpc --version`` and
``zhpc go --help`` <= 40 ms where bare Python takes ~20 ms, so the judged
figure is ``*_over_python_ms`` <= 20; ``zhpc wrap -- true`` overhead <= 50 ms;
one idle service (``zhpc service -s double`` on RabbitMQ) <= 35 MB RSS.

Also lists which heavy modules each command imports (pydantic, pika, ssl,
asyncio, yaml): those paths should need none of them.

Usage: ``python bench/startup.py [-n 21] [--no-service]``
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
import tempfile
import time
import uuid
from pathlib import Path

AMQP_URL = os.environ.get("ZHPC_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
HEAVY = ("pydantic", "pika", "ssl", "asyncio", "yaml", "tenacity")
#: What the heavy-module probe runs: the console script's own import, then the command.
_PROBE = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('HEAVY', *[m for m in {heavy!r} if m in sys.modules],"
    " file=sys.stderr))\n"
    "sys.argv = ['zhpc', *sys.argv[1:]]\n"
    "from zhpc.cli import entry\n"
    "entry()\n"
)


def _compile_zhpc() -> None:
    """Write zhpc's bytecode as an installed package has it (PYTHONDONTWRITEBYTECODE or a
    fresh editable install would otherwise time the compiler, not zhpc)."""
    import compileall

    import zhpc

    compileall.compile_dir(str(Path(zhpc.__file__).parent), quiet=1)


def _zhpc_script() -> list[str]:
    """The installed console script next to this interpreter (what users run)."""
    script = Path(sys.executable).parent / "zhpc"
    return [str(script)] if script.exists() else [sys.executable, "-m", "zhpc"]


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


def _heavy_imports(args: list[str]) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE.format(heavy=HEAVY), *args],
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


def _idle_service_rss(zhpc: list[str]) -> dict[str, float]:
    """RSS of ``zhpc service -s double`` once it consumes, beside a bare Python at rest."""
    from zhpc.config import BrokerConfig
    from zhpc.transport import get_transport

    queue = f"bench.startup.{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "zhpc.yaml"
        config.write_text(f"broker: {{url: '{AMQP_URL}'}}\n")
        env = {**os.environ, "ZHPC_HOME": tmp}
        bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        service = subprocess.Popen(
            [*zhpc, "--config", str(config), "-q", "service", "-s", "double", "--queue", queue],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        transport = get_transport(BrokerConfig(url=AMQP_URL))
        transport.connect()
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if transport.queue_depth(queue).consumers >= 1:
                        break
                except Exception:  # not declared yet
                    pass
                if service.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the service did not start consuming")
                time.sleep(0.05)
            time.sleep(1.0)  # let start-up allocations settle
            return {
                "service_idle_rss_mb": _rss_mb(service.pid),
                "python_idle_rss_mb": _rss_mb(bare.pid),
            }
        finally:
            for proc in (service, bare):
                proc.terminate()
                proc.wait(20)
            for name in (queue, f"retry.{queue}", f"dlq.{queue}"):
                with contextlib.suppress(Exception):
                    transport.delete_queue(name)
            transport.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=21)
    parser.add_argument("--no-service", action="store_true", help="skip the idle-RSS part")
    parser.add_argument(
        "--module",
        action="store_true",
        help="run 'python -m zhpc' (honours PYTHONPATH, e.g. an older checkout)",
    )
    args = parser.parse_args()
    _compile_zhpc()
    zhpc = [sys.executable, "-m", "zhpc"] if args.module else _zhpc_script()
    true = shutil.which("true") or "true"
    times = _interleaved(
        {
            "python": [sys.executable, "-c", "pass"],
            "version": [*zhpc, "--version"],
            "go_help": [*zhpc, "go", "--help"],
            "true": [true],
            "wrap_true": [*zhpc, "wrap", "--", true],
        },
        args.runs,
    )
    python = times["python"]["median"]
    line: dict[str, object] = {
        "benchmark": "startup",
        "runs": args.runs,
        "python_ms": python,
        "version_ms": times["version"]["median"],
        "go_help_ms": times["go_help"]["median"],
        "wrap_true_ms": times["wrap_true"]["median"],
        "true_ms": times["true"]["median"],
        "version_over_python_ms": round(times["version"]["median"] - python, 1),
        "go_help_over_python_ms": round(times["go_help"]["median"] - python, 1),
        "wrap_overhead_ms": round(times["wrap_true"]["median"] - times["true"]["median"], 1),
        "min_ms": {name: t["min"] for name, t in times.items()},
        "cpu_ms": {name: t["cpu"] for name, t in times.items()},
        "heavy_imports": {
            "version": _heavy_imports(["--version"]),
            "go_help": _heavy_imports(["go", "--help"]),
            "wrap_true": _heavy_imports(["wrap", "--", true]),
        },
    }
    if not args.no_service:
        line.update(_idle_service_rss(zhpc))
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Start-up overhead of ``zhpc wrap -- true`` over a bare ``true``: prints ONE JSON line.

Not a test: the target (overhead <= 150 ms) is judged by reading the line. In
the same run it times ``zocalo.wrap --help`` (Zocalo's wrapper start-up, if
zocalo is installed: ``pip install -e '.[bench]'``) for comparison, and the
in-job path ``zhpc wrap --recipewrapper`` on an embedded broker, which also
loads the configuration, connects and publishes confirmed results.

Usage: ``python bench/wrap_overhead.py [-n 15]`` (medians of n runs, after one warm-up).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_MS = 150.0


def _median_ms(argv: list[str], runs: int, expect: int = 0) -> float:
    subprocess.run(argv, capture_output=True, check=False)  # warm the page cache
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
        if proc.returncode != expect:
            raise SystemExit(f"{argv[:4]}... exited {proc.returncode}: {proc.stderr[-500:]!r}")
    return round(statistics.median(times) * 1000, 1)


def _recipewrapper_run(directory: Path) -> list[str]:
    from zhpc.jobfiles import write_recipewrapper
    from zhpc.recipe import RecipeWrapper

    recipe = {
        "1": {"queue": "bench.wrap", "output": {"success": 2, "done": 2}},
        "2": {"queue": "bench.results"},
        "start": [[1, {}]],
    }
    (start,) = RecipeWrapper.from_recipe(recipe).start()
    rwfile = directory / "recipewrapper.json"
    write_recipewrapper(rwfile, json.loads(start.body), start.message_id)
    config = directory / "zhpc.yaml"
    config.write_text(f"broker: {{url: 'sqlite:///{directory / 'broker.sqlite'}'}}\n")
    true = shutil.which("true") or "true"
    return [
        sys.executable,
        "-m",
        "zhpc",
        "--config",
        str(config),
        "wrap",
        "--recipewrapper",
        str(rwfile),
        "--workdir",
        str(directory),
        "--",
        true,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=15)
    args = parser.parse_args()
    true = shutil.which("true") or "true"
    bare = _median_ms([true], args.runs)
    wrapped = _median_ms([sys.executable, "-m", "zhpc", "wrap", "--", true], args.runs)
    result: dict[str, object] = {
        "benchmark": "wrap_overhead",
        "runs": args.runs,
        "true_ms": bare,
        "zhpc_wrap_true_ms": wrapped,
        "overhead_ms": round(wrapped - bare, 1),
        "target_overhead_ms": TARGET_MS,
        "within_target": wrapped - bare <= TARGET_MS,
    }
    with tempfile.TemporaryDirectory() as tmp:
        result["zhpc_wrap_recipewrapper_embedded_ms"] = _median_ms(
            _recipewrapper_run(Path(tmp)), max(3, args.runs // 3)
        )
    zocalo_wrap = shutil.which("zocalo.wrap") or str(Path(sys.executable).parent / "zocalo.wrap")
    if Path(zocalo_wrap).exists():
        result["zocalo_wrap_help_ms"] = _median_ms([zocalo_wrap, "--help"], args.runs)
    else:
        result["zocalo_wrap_help_ms"] = None  # pip install -e '.[bench]'
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Cluster backend benchmark: prints ONE JSON line (not a test; read the figures).

Per backend that is up (``--only local,slurm,ssh,slurmrestd,drmaa``):

* ``submit_array_100_s``: one submission of a 100-task array (held, so nothing runs);
* ``list_s``: one listing (median of ``--repeat`` 5) with ``--arrays`` (10) such arrays
  queued, i.e. 1,000 jobs; ``listed`` is how many the listing returned and
  ``list_calls`` the scheduler calls it made;
* ``cancel_s``: cancelling all of them (one call with every array id).

The local backend cannot hold jobs: its tasks are ``sleep`` processes, one array only
(1,000 processes would swamp the machine), so it lists 100. A backend that is not
up gets ``{"error": ...}``. slurmrestd uses ``--token-file`` or a fresh
``scontrol token``. Usage: ``python bench/cluster.py [--only slurm,drmaa]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from zhpc.cluster import Cluster, JobSpec

BACKENDS = ("local", "slurm", "ssh", "slurmrestd", "drmaa")
STATE = Path("/var/lib/zhpc-test-cluster")


def make(name: str, workdir: Path, token_file: Path | None) -> tuple[Cluster, dict[str, int]]:
    """The backend, uncached, and its call counter."""
    if name == "local":
        from zhpc.cluster.local import LocalCluster

        return LocalCluster(workdir / "local"), {}
    if name == "slurm":
        from zhpc.cluster.slurm import SlurmCluster

        cluster = SlurmCluster(cache_seconds=0)
        return cluster, cluster.calls
    if name == "ssh":
        from zhpc.cluster.ssh import SSHCluster
        from zhpc.config import SSHConfig

        config = SSHConfig(host="127.0.0.1", port=2222, user="root",
                           key_file=STATE / "ssh/id_ed25519",
                           known_hosts=STATE / "ssh/known_hosts")  # fmt: skip
        cluster = SSHCluster(config, cache_seconds=0)
        return cluster, cluster.calls
    if name == "slurmrestd":
        from zhpc.cluster.slurmrest import SlurmRestCluster

        if token_file is None:
            out = subprocess.run(["scontrol", "token", "lifespan=3600"], capture_output=True,
                                 text=True, timeout=30, check=True)  # fmt: skip
            token_file = workdir / "token"
            token_file.touch(mode=0o600)
            token_file.write_text(out.stdout.strip().removeprefix("SLURM_JWT="))
        cluster = SlurmRestCluster(token_file=token_file, cache_seconds=0)
        return cluster, cluster.calls
    from zhpc.cluster.drmaa import DRMAACluster

    cluster = DRMAACluster(workdir / "drmaa", cache_seconds=0)
    return cluster, cluster.calls


def run(name: str, arrays: int, repeat: int, token_file: Path | None) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"zhpc-bench-{name}-"))
    cluster, calls = make(name, workdir, token_file)
    prefix = f"zhpc-bench-{uuid.uuid4().hex[:8]}"
    held = name != "local"
    arrays = arrays if held else 1
    spec = JobSpec(name=prefix, argv=["sleep", "300"], array=100, time_limit=600,
                   workdir=workdir, output="/dev/null",
                   extra_args=["--hold"] if held else [])  # fmt: skip
    ids: list[str] = []
    try:
        started = time.perf_counter()
        ids.append(cluster.submit(spec))
        submit = time.perf_counter() - started
        ids += [cluster.submit(spec) for _ in range(arrays - 1)]
        times, listed, list_calls = [], 0, 0
        for _ in range(repeat):
            before = sum(calls.values())
            started = time.perf_counter()
            listed = len(cluster.jobs(prefix))
            times.append(time.perf_counter() - started)
            list_calls = sum(calls.values()) - before
        started = time.perf_counter()
        cluster.cancel(ids)
        cancel = time.perf_counter() - started
        ids = []
        return {
            "submit_array_100_s": round(submit, 4),
            "list_s": round(statistics.median(times), 4),
            "listed": listed,
            "list_calls": list_calls if name != "local" else None,  # local reads files
            "cancel_s": round(cancel, 4),
            "arrays": arrays,
        }
    finally:
        if ids:
            cluster.cancel(ids)
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(BACKENDS))
    parser.add_argument("--arrays", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--token-file", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    for name in args.only.split(","):
        try:
            results[name] = run(name, args.arrays, args.repeat, args.token_file)
        except Exception as exc:
            results[name] = {"error": " ".join(f"{type(exc).__name__}: {exc}".split())[:300]}
    print(json.dumps({"bench": "cluster", "python": sys.version.split()[0], **results}))


if __name__ == "__main__":
    main()

"""What the chaos run sees of its own Slurm jobs and service processes.

Other people use the same Slurm: only jobs whose working directory lies under
this run's directory are ours, and only those are ever cancelled or requeued.
Service processes are found by the run's unique configuration path in their
command line.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Job:
    """One job or array task of this run, as ``squeue`` lists it."""

    job_id: str  #: ``123`` or ``123_4`` (what scancel/scontrol accept)
    name: str
    state: str
    node: str
    workdir: str

    @property
    def is_service(self) -> bool:
        return self.name.startswith("zhpc-svc-")


def my_jobs(run_dir: Path) -> list[Job]:
    """This run's jobs (all states squeue still shows); [] if squeue fails."""
    proc = subprocess.run(
        ["squeue", "-h", "-a", "-r", "-o", "%i|%j|%T|%N|%Z"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    root = str(run_dir)
    jobs = []
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 5 and (parts[4] == root or parts[4].startswith(root + "/")):
            jobs.append(Job(*parts))
    return jobs


def cancel_all(run_dir: Path) -> int:
    """scancel every job of this run; returns how many were listed."""
    ids = sorted({job.job_id.split("_")[0] for job in my_jobs(run_dir)})
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=60, check=False)
    return len(ids)


@dataclass(frozen=True)
class ServiceProc:
    pid: int
    service: str


def service_processes(config: Path) -> list[ServiceProc]:
    """Running ``zhpc ... service -s NAME`` processes started with this run's config."""
    marker = str(config)
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        if marker in args and "service" in args and "-s" in args:
            index = args.index("-s")
            if index + 1 < len(args):
                found.append(ServiceProc(int(entry.name), args[index + 1]))
    return found


def rss_and_fds(pid: int) -> tuple[int, int] | None:
    """(resident set size in bytes, open file descriptors) of a process; None if gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024, fds
    return None

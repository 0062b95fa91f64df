"""What Grid Engine's ``qstat -xml`` and accounting file say about jobs, as zhpc's JobInfo.

The drmaa backend lists jobs with these (DRMAA itself cannot list): live jobs
from qstat, finished ones from the accounting file. Grid Engine numbers array
tasks from 1; zhpc's ids are 0-based (``ID_0`` is Grid Engine's task 1).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from datetime import datetime

from zhpc.cluster.base import JobInfo, JobState
from zhpc.errors import ClusterError

#: Accounting columns (accounting(5)), by index.
_ACCT = {"qname": 0, "host": 1, "owner": 3, "name": 4, "job": 5, "start": 9, "end": 10,
         "failed": 11, "exit": 12, "task": 35, "category": 39}  # fmt: skip
_H_RT = re.compile(r"\bh_rt=(\d+)")
#: qstat's state letters to zhpc's states (first match wins).
_LIVE_STATES = (
    ("E", JobState.FAILED), ("r", JobState.RUNNING), ("t", JobState.RUNNING),
    ("s", JobState.RUNNING), ("S", JobState.RUNNING), ("T", JobState.RUNNING),
    ("d", JobState.RUNNING), ("q", JobState.PENDING), ("h", JobState.PENDING),
)  # fmt: skip


def live_state(letters: str) -> JobState:
    """zhpc's state for qstat's ``state`` (``r``, ``qw``, ``hqw``, ``Eqw``, ``dr``...)."""
    for letter, state in _LIVE_STATES:
        if letter in letters:
            return state
    return JobState.UNKNOWN


def expand_tasks(expression: str) -> Iterator[int]:
    """Grid Engine task numbers in qstat's ``tasks`` (``5,6``, ``5-10:1``)."""
    for part in expression.split(","):
        if part.strip():
            bounds, _, step = part.strip().partition(":")
            first, _, last = bounds.partition("-")
            yield from range(int(first), int(last or first) + 1, int(step or 1))


def zhpc_id(job: str, task: int | None) -> str:
    """zhpc's id for Grid Engine task ``task`` (1-based) of ``job``."""
    return job if task is None else f"{job}_{task - 1}"


def parse_qstat(xml: str) -> list[JobInfo]:
    """JobInfo for each live job or task in ``qstat -xml`` output (pending ranges expanded)."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as exc:
        raise ClusterError(f"cannot parse qstat -xml output: {exc}") from None
    jobs = []
    for element in root.iter("job_list"):
        text = {child.tag: (child.text or "").strip() for child in element}
        job, letters = text.get("JB_job_number", ""), text.get("state", "")
        stamp = text.get("JAT_start_time")
        start = datetime.fromisoformat(stamp).astimezone() if stamp else None
        node = text.get("queue_name", "").partition("@")[2] or None
        tasks = list(expand_tasks(text["tasks"])) if text.get("tasks") else [None]
        for task in tasks:
            jobs.append(JobInfo(
                job_id=zhpc_id(job, task), name=text.get("JB_name", ""),
                state=live_state(letters), scheduler_state=letters,
                reason="held" if "h" in letters else "error" if "E" in letters else "",
                array_job_id=job if task is not None else None,
                array_task_id=task - 1 if task is not None else None,
                node=node, start_time=start,
            ))  # fmt: skip
    return jobs


def parse_accounting_line(line: str, cancelled: set[str]) -> tuple[str, JobInfo] | None:
    """The finished job in one accounting line, with its owner; None for other lines."""
    fields = line.rstrip("\n").split(":")
    if line.startswith("#") or len(fields) <= _ACCT["category"]:
        return None
    get = {key: fields[index] for key, index in _ACCT.items()}
    try:
        failed, status = int(get["failed"]), int(get["exit"])
        start, end, task = int(get["start"]), int(get["end"]), int(get["task"])
    except ValueError:
        return None
    job = get["job"]
    task_number = task or None
    job_id = zhpc_id(job, task_number)
    signal = status - 128 if status > 128 else None
    limit = _H_RT.search(get["category"])
    if job_id in cancelled or (task_number and job in cancelled):
        state, reason = JobState.CANCELLED, "cancelled"
    elif failed and limit and start and end - start >= int(limit[1]) - 1:
        state, reason = JobState.TIMEOUT, "h_rt"
    elif failed == 0 and status == 0:
        state, reason = JobState.COMPLETED, ""
    else:
        state, reason = JobState.FAILED, f"failed {failed}" if failed else "NonZeroExitCode"
    info = JobInfo(
        job_id=job_id, name=get["name"], state=state,
        scheduler_state=f"failed={failed} exit_status={status}", reason=reason,
        array_job_id=job if task_number else None,
        array_task_id=task_number - 1 if task_number else None,
        node=get["host"] or None, exit_code=status, signal=signal,
        start_time=datetime.fromtimestamp(start).astimezone() if start else None,
        end_time=datetime.fromtimestamp(end).astimezone() if end else None,
    )  # fmt: skip
    return get["owner"], info

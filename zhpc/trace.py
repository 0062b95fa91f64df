"""What happened to one recipe: its step events arranged as runs of each step, in recipe order.

A *run* is one go at a step by one process: it starts with ``received`` (a
service) or ``job-started`` (``zhpc wrap``) and ends with the next final event
of that process for that step (``done``, ``failed``, ``handed-back``,
``dead-lettered``, ``job-ended``). A step ran several times when it failed and
was retried, was handed back, or is a cluster step (the submitting service's
run, then the job's). A step of the recipe's plan with no run yet is
``waiting``. Pure functions: :mod:`zhpc.commands.trace` reads the stores.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable
from typing import Any

from zhpc.events import DEAD_LETTERED, FAILED, FINAL_KINDS, JOB_ENDED, JOB_STARTED, RECEIVED

WAITING, RUNNING = "waiting", "running"
_OUTCOMES = {
    "done": "done",
    FAILED: "failed",
    "handed-back": "handed-back",
    DEAD_LETTERED: "dead-lettered",
}

#: ``dlq_id(message_id)``: the quarantine id of a dead-lettered message, if filed.
DlqLookup = Callable[[str], str | None]


def build_trace(
    recipe_id: str, events: Iterable[dict[str, Any]], dlq_id: DlqLookup | None = None
) -> dict[str, Any]:
    """``{"recipe_id", "finished", "steps": [...]}`` (several entries for a step that re-ran)."""
    events = sorted(events, key=lambda e: e.get("time") or 0.0)
    plan: dict[int, str] = {}
    runs: list[dict[str, Any]] = []
    open_runs: dict[tuple[Any, ...], dict[str, Any]] = {}
    last_run: dict[tuple[Any, ...], dict[str, Any]] = {}
    for event in events:
        for key, queue in (event.get("plan") or {}).items():
            if str(key).isdigit():
                plan.setdefault(int(key), queue)
        who = (event.get("step"), event.get("host"), event.get("pid"))
        kind = event.get("event")
        if kind in (RECEIVED, JOB_STARTED):
            run = _new_run(event)
            runs.append(run)
            open_runs[who] = last_run[who] = run
        elif kind in FINAL_KINDS:
            run = open_runs.pop(who, None)
            previous = last_run.get(who)
            if (
                run is None
                and kind == DEAD_LETTERED
                and previous is not None
                and previous["outcome"] == "failed"
                and previous["message_id"] == event.get("message_id")
            ):
                run = previous  # failed for the last time: the same run ends in the DLQ
            if run is None:  # a final event without its start, or with it (``started``)
                run = _new_run(event)
                run["started"] = event.get("started")
                runs.append(run)
            last_run[who] = run
            _finish(run, event, dlq_id)
    seen = {run["step"] for run in runs}
    for step, queue in plan.items():
        if step not in seen:
            runs.append({**_blank(step), "queue": queue, "outcome": WAITING})
    runs.sort(key=lambda run: (run["step"] is None, run["step"] or 0, run["started"] or 0.0))
    finished = (
        bool(runs)
        and not any(r["outcome"] == RUNNING for r in runs)
        and (
            all(r["outcome"] != WAITING for r in runs)
            or any(r["outcome"] == "dead-lettered" for r in runs)
        )
    )
    return {"recipe_id": recipe_id, "finished": finished, "steps": [_public(run) for run in runs]}


def _blank(step: Any) -> dict[str, Any]:
    return {
        "step": step,
        "service": None,
        "queue": None,
        "outcome": None,
        "host": None,
        "pid": None,
        "job_id": None,
        "started": None,
        "finished": None,
        "duration": None,
        "error": None,
        "exception": None,
        "exit_code": None,
        "dlq_id": None,
        "message_id": None,
        "delivery": None,
    }


def _new_run(event: dict[str, Any]) -> dict[str, Any]:
    run = _blank(event.get("step"))
    run.update(
        service=event.get("service"),
        queue=event.get("queue"),
        outcome=RUNNING,
        host=event.get("host"),
        pid=event.get("pid"),
        job_id=event.get("slurm_job_id") or event.get("job_id"),
        started=event.get("time"),
        message_id=event.get("message_id"),
        delivery=event.get("delivery"),
    )
    return run


def _finish(run: dict[str, Any], event: dict[str, Any], dlq_id: DlqLookup | None) -> None:
    kind = event.get("event")
    if kind == JOB_ENDED:
        code = event.get("exit_code")
        run["outcome"] = "done" if code == 0 else "failed"
        run["exit_code"] = code
        run["error"] = event.get("error") or (
            None
            if code == 0
            else f"exit code {code}"
            + (f" ({event['end_reason']})" if event.get("end_reason") else "")
        )
    else:
        run["outcome"] = _OUTCOMES.get(str(kind), str(kind))
        run["error"] = event.get("error") or run["error"]
        run["exception"] = event.get("exception") or run["exception"]
    run["finished"] = event.get("time")
    if event.get("duration") is not None:
        run["duration"] = event["duration"]
    elif run["started"] is not None and run["finished"] is not None:
        run["duration"] = round(run["finished"] - run["started"], 6)
    if kind == DEAD_LETTERED and dlq_id is not None and event.get("message_id"):
        run["dlq_id"] = dlq_id(str(event["message_id"]))


def _public(run: dict[str, Any]) -> dict[str, Any]:
    out = dict(run)
    for key in ("started", "finished"):
        out[key] = _iso(out[key])
    return out


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC).isoformat(timespec="milliseconds")


def render(trace: dict[str, Any]) -> str:
    """The trace as a tree: one branch per step, one line per run."""
    if not trace["steps"]:
        return (
            f"recipe {trace['recipe_id']}: no events recorded (a wrong id, or no recorder "
            "running: zhpc service -s recorder)"
        )
    lines = [f"recipe {trace['recipe_id']}" + ("" if trace["finished"] else "  (in progress)")]
    by_step: dict[Any, list[dict[str, Any]]] = {}
    for run in trace["steps"]:
        by_step.setdefault(run["step"], []).append(run)
    steps = list(by_step.items())
    for index, (step, runs) in enumerate(steps):
        last = index == len(steps) - 1
        where = runs[0]["queue"] or runs[0]["service"] or "?"
        lines.append(
            f"{'└──' if last else '├──'} step {step if step is not None else '-'}  {where}"
        )
        pad = "    " if last else "│   "
        for number, run in enumerate(runs):
            final = number == len(runs) - 1
            first, *more = _run_lines(run)
            lines.append(f"{pad}{'└──' if final else '├──'} {first}")
            lines += [f"{pad}{'    ' if final else '│   '}    {line}" for line in more]
    return "\n".join(lines)


def _run_lines(run: dict[str, Any]) -> list[str]:
    if run["outcome"] == WAITING:
        return ["waiting"]
    parts = [f"{run['outcome']:<13}"]
    if run["service"]:
        parts.append(run["service"])
    if run["host"]:
        parts.append(f"on {run['host']} pid {run['pid']}")
    if run["job_id"]:
        parts.append(f"job {run['job_id']}")
    if run["started"]:
        parts.append(f"at {run['started'][11:23]}")
    if run["duration"] is not None:
        parts.append(f"{run['duration']:.3f} s")
    lines = ["  ".join(parts)]
    if run["error"]:
        prefix = f"{run['exception']}: " if run["exception"] else ""
        lines.append(prefix + (run["error"].splitlines() or [""])[0])
    if run["dlq_id"]:
        lines.append(f"quarantined as {run['dlq_id']}: zhpc dlq reinject {run['dlq_id']}")
    return lines

"""What a run's files and its SLURM jobs say about its tasks.

Files first: a task whose completion record exists is *done* if every output it lists is there
with its recorded size, and *lost* if one is missing or changed size (resume reruns it).
Otherwise the task's latest SLURM job (squeue, then sacct) tells pending / running / requeued
(preempted or requeued, it will run again) / failed; a job that COMPLETED less than
`SETTLE_SECONDS` ago without a visible completion record is *completing* (the shared
filesystem may not show the record yet). With no job a task is partial (committed parts) or
missing; when SLURM cannot be asked, a task that has a job is *unknown*, never missing.
Nothing here waits on a job.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from chatspace.runs.record import Run, output_problems, read_json
from chatspace.runs.slurm_cli import (
    FINISHED_BAD,
    LIVE_STATES,
    REQUEUED_STATES,
    SlurmUnavailable,
    job_states,
)
from chatspace.runs.task import committed_parts

STATES = ("done", "lost", "completing", "running", "requeued", "pending", "failed", "partial",
          "missing", "unknown")
SETTLE_SECONDS = 30.0


def _ended_seconds_ago(end: str | None) -> float | None:
    try:
        ended = datetime.fromisoformat(end) if end else None
    except ValueError:  # "Unknown", "None"
        return None
    return None if ended is None else (datetime.now() - ended).total_seconds()


def tail(path: Path, lines: int = 5) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def task_state(run: Run, task: int, jobs: dict[int, str], states: dict[str, dict[str, str]],
               verify: bool = False, slurm_error: str | None = None) -> dict[str, Any]:
    """State of one task, given the run's `task_jobs()` and their SLURM `states`. Every output
    of a done task is stat'ed against its completion record; `verify` also re-hashes it."""
    start, stop = run.task_bounds(task)
    state: dict[str, Any] = {"task": task, "rows": stop - start}
    path = run.completion_path(task)
    job = states.get(jobs.get(task, ""))
    logs = run.task_logs(task, jobs)
    state["log"] = str(logs[-1]) if logs else None
    if path.exists():
        record = read_json(path)
        lost = output_problems(record, check_hash=verify)
        if not lost:
            state.update(state="done", rows_done=stop - start)
            return state
        state.update(state="lost", rows_done=0, error=lost)
    else:
        parts = committed_parts(run, task)
        state["rows_done"] = sum(p["rows_in"] for p in parts)
        state["state"] = "partial" if parts else "missing"
    if job is None:
        if slurm_error and task in jobs and state["state"] in ("partial", "missing"):
            state["state"] = "unknown"
        return state
    state["slurm"] = job
    name = job["state"]
    if name in REQUEUED_STATES or job.get("reason", "").startswith("BeginTime"):
        state["state"] = "requeued"
    elif name in LIVE_STATES:
        state["state"] = "pending" if name == "PENDING" else "running"
    elif state["state"] == "lost":
        pass
    elif name == "COMPLETED" and (_ended_seconds_ago(job.get("end")) or 0.0) < SETTLE_SECONDS:
        state["state"] = "completing"
    elif name in FINISHED_BAD or name == "COMPLETED":  # and, long after, no record
        state["state"] = "failed"
        state["error"] = tail(Path(state["log"])) if state["log"] else []
    return state


def run_status(run: Run, verify: bool = False) -> dict[str, Any]:
    history = run.submissions()
    jobs = run.task_jobs()
    reduce_id = history[-1].get("reduce_job_id") if history else None
    try:
        states = job_states(list(jobs.values()) + ([reduce_id] if reduce_id else []))
        slurm_error = None
    except SlurmUnavailable as exc:
        states, slurm_error = {}, str(exc)
    tasks = [task_state(run, t, jobs, states, verify, slurm_error)
             for t in range(run.num_tasks)]
    manifest = run.manifest_path if run.manifest_path.exists() else None
    rows_done = sum(t["rows_done"] for t in tasks)
    first = history[0].get("submitted_at") if history else None
    started = datetime.fromisoformat(first) if first else None
    elapsed = (datetime.now(started.tzinfo) - started).total_seconds() if started else None
    rate = rows_done / elapsed if elapsed and rows_done else None
    return {
        "run_id": run.run_id,
        "kind": run.job.kind,
        "run_dir": str(run.dir),
        "manifest": str(manifest) if manifest else None,
        "executor": history[-1]["executor"] if history else None,
        "rows": run.rows,
        "rows_done": rows_done,
        "rows_per_second": round(rate, 2) if rate else None,
        "eta_seconds": round((run.rows - rows_done) / rate) if rate else None,
        "tasks": tasks,
        "counts": {s: n for s in STATES if (n := sum(t["state"] == s for t in tasks))},
        "reduce": {"job_id": reduce_id, **states.get(reduce_id, {})} if reduce_id else None,
        "slurm_error": slurm_error,
    }

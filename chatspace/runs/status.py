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

from chatspace.runs.attempts import attempts, log_spans, reduce_job, task_jobs
from chatspace.runs.formats import Attempt, Completion, Manifest, Submission
from chatspace.runs.lease import holder
from chatspace.runs.record import Run, output_problems, read_typed, read_typed_record
from chatspace.runs.slurm_cli import (
    FINISHED_BAD,
    REQUEUED_STATES,
    SLURM_LIVE_STATES,
    SlurmUnavailable,
    job_states,
    queued_jobs,
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


def _elapsed(attempt: Attempt | None, live: bool) -> float | None:
    """Seconds the attempt ran (so far, while its task is live)."""
    if attempt is None:
        return None
    started = datetime.fromisoformat(attempt.started_at)
    end = attempt.ended_at
    if end is None and not live:
        return None  # killed without a trace of when
    ended = datetime.fromisoformat(end) if end else datetime.now(started.tzinfo)
    return round((ended - started).total_seconds(), 1)


def task_state(run: Run, task: int, jobs: dict[int, str], states: dict[str, dict[str, str]],
               verify: bool = False, slurm_error: str | None = None,
               history: list[Attempt] | None = None) -> dict[str, Any]:
    """State of one task, given the run's `task_jobs()` and their SLURM `states` (and the
    task's `attempts` when the caller has them): state, rows done, attempts, node and elapsed
    time of the latest attempt, its log. Every output of a done task is stat'ed against its
    completion record; `verify` also re-hashes it."""
    start, stop = run.task_bounds(task)
    history = attempts(run, task) if history is None else history
    latest = history[-1] if history else None
    state: dict[str, Any] = {"task": task, "rows": stop - start, "attempts": len(history),
                             "node": latest.host if latest else None}
    logs = log_spans(run, task, history=history, jobs=jobs)
    state["log"] = str(logs[-1].path) if logs else None
    state.update(_files_state(run, task, verify))
    owner = holder(run, task) if state["state"] in ("partial", "missing") else None
    if owner is not None:  # a live process holds the task's lease, wherever it runs
        state.update(state="running", node=owner.get("host"))
    job = states.get(jobs.get(task, ""))
    if job is None:
        if slurm_error and task in jobs and state["state"] in ("partial", "missing"):
            state["state"] = "unknown"
    else:
        state["slurm"] = job
        _apply_job_state(state, job)
    state["elapsed_seconds"] = _elapsed(latest, state["state"] in ("running", "unknown"))
    return state


def _files_state(run: Run, task: int, verify: bool) -> dict[str, Any]:
    """What the run directory alone says: done, lost, partial or missing (a completion record
    that does not parse is no record: the error says so, and resume reruns the task)."""
    start, stop = run.task_bounds(task)
    record, unreadable = run.completion_record(task)
    if record is not None:
        lost = output_problems(record, run.root, check_hash=verify)
        if not lost:
            return {"state": "done", "rows_done": stop - start}
        return {"state": "lost", "rows_done": 0, "error": lost}
    parts = committed_parts(run, task)
    state = {"state": "partial" if parts else "missing",
             "rows_done": sum(p.rows_in for p in parts)}
    return {**state, "error": [unreadable]} if unreadable else state


def _apply_job_state(state: dict[str, Any], job: dict[str, str]) -> None:
    """Correct the files' state with what SLURM says about the task's latest job."""
    if state["state"] == "done":
        return
    name = job["state"]
    if name in REQUEUED_STATES or job.get("reason", "").startswith("BeginTime"):
        state["state"] = "requeued"
    elif name in SLURM_LIVE_STATES:
        state["state"] = "pending" if name == "PENDING" else "running"
    elif state["state"] == "lost":
        pass
    elif name == "COMPLETED" and (_ended_seconds_ago(job.get("end")) or 0.0) < SETTLE_SECONDS:
        state["state"] = "completing"
    elif name in FINISHED_BAD or name == "COMPLETED":  # and, long after, no record
        state["state"] = "failed"
        state["error"] = tail(Path(state["log"])) if state["log"] else []


def manifest_is_current(run: Run, all_done: bool) -> bool:
    """The manifest exists, every task is done (`all_done`, from the tasks' states), and it
    lists exactly the outputs of their completion records (after a task lost an output or was
    rerun it is stale until the next reduce rewrites it)."""
    if not (all_done and run.manifest_path.exists()):
        return False
    manifest = read_typed_record(run.manifest_path, Manifest)
    if manifest is None:
        return False
    listed = {(e.task, e.path, e.sha256) for e in manifest.files
              if e.task is not None}  # the reduce's own files are checked by verify
    recorded = {(task, e.path, e.sha256) for task in range(run.num_tasks)
                for e in read_typed(run.completion_path(task), Completion).outputs}
    return listed == recorded


def _started_at(submissions: list[Submission],
                attempted: list[list[Attempt]]) -> datetime | None:
    """When the run's work began: its first submission, else its first task attempt (a run
    started by hand with the sbatch templates)."""
    stamps = [datetime.fromisoformat(submissions[0].submitted_at)] if submissions else []
    stamps += [datetime.fromisoformat(h[0].started_at) for h in attempted if h]
    return min(stamps) if stamps else None


def run_status(run: Run, verify: bool = False) -> dict[str, Any]:
    history = run.submissions()
    attempted = [attempts(run, t) for t in range(run.num_tasks)]
    jobs = task_jobs(run, attempted)
    reduce_id = reduce_job(run)
    try:
        states = job_states(list(jobs.values()) + ([reduce_id] if reduce_id else []))
        queued, reduces, queued_states = queued_jobs(run)  # from plan's sbatch lines
        jobs.update(queued)
        states.update(queued_states)
        reduce_id = reduces[-1] if reduces else reduce_id
        slurm_error = None
    except SlurmUnavailable as exc:
        states, slurm_error = {}, str(exc)
    tasks = [task_state(run, t, jobs, states, verify, slurm_error, attempted[t])
             for t in range(run.num_tasks)]
    current = manifest_is_current(run, all(t["state"] == "done" for t in tasks))
    rows_done = sum(t["rows_done"] for t in tasks)
    started = _started_at(history, attempted)
    elapsed = (datetime.now(started.tzinfo) - started).total_seconds() if started else None
    rate = rows_done / elapsed if elapsed and rows_done else None
    reduce_logs = log_spans(run, None)
    return {
        "run_id": run.run_id,
        "kind": run.kind.name,
        "run_dir": str(run.dir),
        "manifest": str(run.manifest_path) if current else None,
        "manifest_stale": run.manifest_path.exists() and not current,
        "executor": history[-1].executor if history else ("slurm" if jobs else None),
        "rows": run.rows,
        "rows_done": rows_done,
        "rows_per_second": round(rate, 2) if rate else None,
        "eta_seconds": round((run.rows - rows_done) / rate) if rate else None,
        "tasks": tasks,
        "counts": {s: n for s in STATES if (n := sum(t["state"] == s for t in tasks))},
        "reduce": {"job_id": reduce_id, **states.get(reduce_id, {}),
                   "log": str(reduce_logs[-1].path) if reduce_logs else None}
        if reduce_id else None,
        "slurm_error": slurm_error,
    }

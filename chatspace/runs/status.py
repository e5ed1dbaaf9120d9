"""What a run's files and its SLURM jobs say about its tasks.

Files first: a task whose completion record exists is *done* if every output it lists is there
with its recorded size, and *lost* if one is missing or changed size (resume reruns it).
Otherwise the task's latest SLURM job (squeue, then sacct) tells pending / running / failed;
with no job it is partial (committed parts) or missing. Nothing here waits on a job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chatspace.runs.record import Run, file_problem, read_json
from chatspace.runs.slurm import FINISHED_BAD, LIVE_STATES, job_states
from chatspace.runs.task import committed_parts

STATES = ("done", "lost", "running", "pending", "failed", "partial", "missing")


def tail(path: Path, lines: int = 5) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def task_state(run: Run, task: int, jobs: dict[int, str],
               states: dict[str, dict[str, str]], verify: bool = False) -> dict[str, Any]:
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
        lost = [p for e in record["outputs"] if (p := file_problem(e, check_hash=verify))]
        if not lost:
            state.update(state="done", rows_done=stop - start)
            return state
        state.update(state="lost", rows_done=0, error=lost)
    else:
        parts = committed_parts(run, task)
        state["rows_done"] = sum(p["rows_in"] for p in parts)
        state["state"] = "partial" if parts else "missing"
    if job is not None:
        state["slurm"] = job
        if job["state"] in LIVE_STATES:
            state["state"] = "pending" if job["state"] == "PENDING" else "running"
        elif state["state"] != "lost" and (job["state"] in FINISHED_BAD
                                           or job["state"] == "COMPLETED"):  # and no record
            state["state"] = "failed"
            state["error"] = tail(Path(state["log"])) if state["log"] else []
    return state


def run_status(run: Run, verify: bool = False) -> dict[str, Any]:
    history = run.submissions()
    jobs = run.task_jobs()
    reduce_id = history[-1].get("reduce_job_id") if history else None
    states = job_states(list(jobs.values()) + ([reduce_id] if reduce_id else []))
    tasks = [task_state(run, t, jobs, states, verify) for t in range(run.num_tasks)]
    manifest = run.manifest_path if run.manifest_path.exists() else None
    return {
        "run_id": run.run_id,
        "kind": run.job.kind,
        "run_dir": str(run.dir),
        "manifest": str(manifest) if manifest else None,
        "executor": history[-1]["executor"] if history else None,
        "rows": run.rows,
        "rows_done": sum(t["rows_done"] for t in tasks),
        "tasks": tasks,
        "counts": {s: n for s in STATES if (n := sum(t["state"] == s for t in tasks))},
        "reduce": {"job_id": reduce_id, **states.get(reduce_id, {})} if reduce_id else None,
    }

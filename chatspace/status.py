"""What a run's files say about its tasks: done, partly done (committed parts), or missing."""

from __future__ import annotations

from typing import Any

from chatspace.pipeline import committed_parts
from chatspace.runrecord import Run, read_json


def task_state(run: Run, task: int, verify: bool = False) -> dict[str, Any]:
    """State of one task from its records. `verify` re-hashes a finished task's shard."""
    start, stop = run.task_bounds(task)
    state: dict[str, Any] = {"task": task, "rows": stop - start}
    path = run.completion_path(task)
    record = run.completion(task) if verify else (read_json(path) if path.exists() else None)
    if record is not None:
        state.update(state="done", rows_done=record["rows"] + len(record["skipped_rows"]))
    else:
        parts = committed_parts(run.parts_dir(task))
        done = sum(p["rows"] + len(p["skipped"]) for p in parts)
        state.update(state="partial" if parts else "missing", rows_done=done)
    logs = run.task_logs(task)
    state["log"] = str(logs[-1]) if logs else None
    return state


def run_status(run: Run, verify: bool = False) -> dict[str, Any]:
    tasks = [task_state(run, t, verify) for t in range(run.num_tasks)]
    manifest = run.manifest_path if run.manifest_path.exists() else None
    return {
        "run_id": run.run_id,
        "run_dir": str(run.dir),
        "manifest": str(manifest) if manifest else None,
        "rows": run.plan["sampling"]["rows_sampled"],
        "rows_done": sum(t["rows_done"] for t in tasks),
        "tasks": tasks,
        "counts": {s: sum(t["state"] == s for t in tasks) for s in ("done", "partial", "missing")},
    }

"""Follow a submitted SLURM run to its end (`--wait`): a progress bar on rows done, success
when the reduce job completes, failure as soon as a task has failed and none is left to run."""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm import tqdm

from chatspace.errors import RunFailed
from chatspace.runs.record import Run
from chatspace.runs.slurm_cli import FINISHED_BAD, cancel
from chatspace.runs.status import run_status

LIVE = ("pending", "running", "requeued", "completing", "unknown")  # may still finish


def describe_failures(status: dict[str, Any]) -> str:
    lines = []
    for task in status["tasks"]:
        if task["state"] in ("failed", "lost", "missing", "partial"):
            slurm = task.get("slurm", {})
            lines.append(f"task {task['task']}: {task['state']} "
                         f"{slurm.get('state', '')} exit {slurm.get('exit_code', '?')} "
                         f"(log: {task['log']})")
    return "\n  ".join(lines)


def follow(run: Run, progress: bool = True, poll_seconds: float = 2.0) -> dict[str, Any]:
    status = run_status(run)
    bar = tqdm(total=status["rows"], unit="rows", desc=run.run_id, disable=not progress,
               file=sys.stderr)
    try:
        while True:
            bar.update(status["rows_done"] - bar.n)
            reduce = status["reduce"] or {}
            if reduce.get("state") == "COMPLETED" and status["manifest"]:
                return status
            live = [t for t in status["tasks"] if t["state"] in LIVE]
            if reduce.get("state") in FINISHED_BAD or reduce.get("state") == "COMPLETED":
                raise RunFailed(f"run {run.run_id}: reduce job {reduce['job_id']} ended "
                                f"{reduce['state']}:\n  " + describe_failures(status))
            if not live and any(t["state"] == "failed" for t in status["tasks"]):
                cancel([reduce["job_id"]] if reduce.get("job_id") else [])
                raise RunFailed(f"run {run.run_id} failed (resume it with `chatspace resume "
                                f"{run.run_id}`):\n  " + describe_failures(status))
            time.sleep(poll_seconds)
            status = run_status(run)
    finally:
        bar.close()

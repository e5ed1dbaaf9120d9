"""Follow a submitted SLURM run to its end (`--wait`): a progress bar on rows done, success
when the reduce job completes, failure as soon as a task has failed and none is left to run."""

from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

from chatspace.errors import RunFailed
from chatspace.runs.record import Run
from chatspace.runs.slurm_cli import FINISHED_BAD, cancel
from chatspace.runs.status import RunStatus, run_status

log = logging.getLogger(__name__)

STILL_RUNNING = ("pending", "running", "requeued", "completing", "unknown")  # may still finish


def describe_failures(status: RunStatus) -> str:
    lines = []
    for task in status.tasks:
        if task.state in ("failed", "lost", "missing", "partial"):
            job = task.slurm
            lines.append(f"task {task.task}: {task.state} {job.state if job else ''} "
                         f"exit {job.exit_code if job else '?'} (log: {task.log})")
    return "\n  ".join(lines)


POLL_FIRST, POLL_MAX, POLL_GROWTH = 2.0, 60.0, 1.5


def next_poll(delay: float, changed: bool) -> float:
    """Poll often while the run changes, backing off to a minute while it does not (a queue
    that waits for hours is asked ~60 times an hour, not 1,800)."""
    return POLL_FIRST if changed else min(POLL_MAX, delay * POLL_GROWTH)


def progress_key(status: RunStatus) -> tuple:
    """What a change of means the run moved: rows done, tasks per state, the reduce's state."""
    return status.rows_done, status.counts, status.reduce_state


def progress_line(status: RunStatus) -> str:
    counts = ", ".join(f"{n} {s}" for s, n in status.counts.items())
    return f"run {status.run_id}: {status.rows_done}/{status.rows} rows; {counts}"


def follow(run: Run, progress: bool = True) -> RunStatus:
    """Wait for the run's end: a progress bar on a terminal, else one line per poll."""
    status = run_status(run)
    bar = tqdm(total=status.rows, unit="rows", desc=run.run_id, file=sys.stderr,
               disable=not (progress and sys.stderr.isatty()))
    delay, seen = POLL_FIRST, None
    try:
        while True:
            bar.update(status.rows_done - bar.n)
            now = progress_key(status)
            if progress and bar.disable and now != seen:
                log.info("%s", progress_line(status))
            delay, seen = next_poll(delay, now != seen), now
            reduce = status.reduce_state
            if reduce == "COMPLETED" and status.manifest:
                return status
            live = [t for t in status.tasks if t.state in STILL_RUNNING]
            if reduce in FINISHED_BAD or reduce == "COMPLETED":
                raise RunFailed(f"run {run.run_id}: reduce job {status.reduce.job_id} ended "
                                f"{reduce}:\n  " + describe_failures(status))
            if not live and any(t.state == "failed" for t in status.tasks):
                cancel([status.reduce.job_id] if status.reduce else [])
                raise RunFailed(f"run {run.run_id} failed (resume it with `chatspace resume "
                                f"{run.run_id}`):\n  " + describe_failures(status))
            time.sleep(delay)
            status = run_status(run)
    finally:
        bar.close()

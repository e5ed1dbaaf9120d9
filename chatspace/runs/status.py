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

from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from chatspace.runs.attempts import attempts, log_spans, reduce_job, task_jobs
from chatspace.runs.formats import Attempt, Completion, Manifest, Submission
from chatspace.runs.kind import StatusNote
from chatspace.runs.lease import holder
from chatspace.runs.record import Run, output_problems, read_typed, read_typed_record
from chatspace.runs.slurm_cli import (
    FINISHED_BAD,
    REQUEUED_STATES,
    SLURM_LIVE_STATES,
    JobState,
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


@dataclass
class TaskStatus:
    """One task: its state (one of `STATES`), rows, attempts, and the node, log and elapsed
    time of its latest attempt; what went wrong (`error`) and its latest SLURM job, if any."""

    task: int
    rows: int
    state: str
    rows_done: int
    attempts: int = 0
    node: str | None = None
    log: str | None = None
    error: list[str] | None = None
    slurm: JobState | None = None
    elapsed_seconds: float | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task": self.task, "rows": self.rows, "attempts": self.attempts,
                               "node": self.node, "log": self.log, "state": self.state,
                               "rows_done": self.rows_done}
        if self.error is not None:
            out["error"] = self.error
        if self.slurm is not None:
            out["slurm"] = self.slurm.to_dict()
        return {**out, "elapsed_seconds": self.elapsed_seconds}


def task_state(run: Run, task: int, jobs: dict[int, str], states: dict[str, JobState],
               verify: bool = False, slurm_error: str | None = None,
               history: list[Attempt] | None = None) -> TaskStatus:
    """State of one task, given the run's `task_jobs()` and their SLURM `states` (and the
    task's `attempts` when the caller has them). Every output of a done task is stat'ed
    against its completion record; `verify` also re-hashes it."""
    history = attempts(run, task) if history is None else history
    latest = history[-1] if history else None
    logs = log_spans(run, task, history=history, jobs=jobs)
    state = _files_state(run, task, verify)
    state.attempts, state.node = len(history), latest.host if latest else None
    state.log = str(logs[-1].path) if logs else None
    owner = holder(run, task) if state.state in ("partial", "missing") else None
    if owner is not None:  # a live process holds the task's lease, wherever it runs
        state.state, state.node = "running", owner.host
    job = states.get(jobs.get(task, ""))
    if job is None:
        if slurm_error and task in jobs and state.state in ("partial", "missing"):
            state.state = "unknown"
    else:
        state.slurm = job
        _apply_job_state(state, job)
    state.elapsed_seconds = _elapsed(latest, state.state in ("running", "unknown"))
    return state


def _files_state(run: Run, task: int, verify: bool) -> TaskStatus:
    """What the run directory alone says: done, lost, partial or missing (a completion record
    that does not parse is no record: the error says so, and resume reruns the task)."""
    start, stop = run.task_bounds(task)
    record, unreadable = run.completion_record(task)
    if record is not None:
        lost = output_problems(record, run.root, check_hash=verify)
        if not lost:
            return TaskStatus(task, stop - start, "done", stop - start)
        return TaskStatus(task, stop - start, "lost", 0, error=lost)
    parts = committed_parts(run, task)
    return TaskStatus(task, stop - start, "partial" if parts else "missing",
                      sum(p.rows_in for p in parts), error=[unreadable] if unreadable else None)


def _apply_job_state(state: TaskStatus, job: JobState) -> None:
    """Correct the files' state with what SLURM says about the task's latest job."""
    if state.state == "done":
        return
    name = job.state
    if name in REQUEUED_STATES or (job.reason or "").startswith("BeginTime"):
        state.state = "requeued"
    elif name in SLURM_LIVE_STATES:
        state.state = "pending" if name == "PENDING" else "running"
    elif state.state == "lost":
        pass
    elif name == "COMPLETED" and (_ended_seconds_ago(job.end) or 0.0) < SETTLE_SECONDS:
        state.state = "completing"
    elif name in FINISHED_BAD or name == "COMPLETED":  # and, long after, no record
        state.state = "failed"
        state.error = tail(Path(state.log)) if state.log else []


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


@dataclass(frozen=True)
class ReduceStatus:
    """The run's reduce job: its id, what SLURM says of it (None when it cannot be asked or
    has forgotten it) and its log."""

    job_id: str
    job: JobState | None
    log: str | None

    def as_json(self) -> dict[str, Any]:
        return {"job_id": self.job_id, **(self.job.to_dict() if self.job else {}),
                "log": self.log}


@dataclass(frozen=True)
class RunStatus:
    """What `chatspace status` shows: every task's state, the run's progress, its reduce job,
    and its manifest once it is current (`counts`: tasks per state, over all tasks)."""

    run_id: str
    kind: str
    run_dir: str
    manifest: str | None
    manifest_stale: bool
    executor: str | None
    rows: int
    rows_done: int
    rows_per_second: float | None
    eta_seconds: int | None
    tasks: list[TaskStatus]
    counts: dict[str, int]
    reduce: ReduceStatus | None
    slurm_error: str | None
    note: StatusNote | None = None  # the kind's own line (a serving run's endpoint)

    @property
    def reduce_state(self) -> str | None:
        """The reduce job's SLURM state, None when there is none or it is not known."""
        return self.reduce.job.state if self.reduce and self.reduce.job else None

    def as_json(self) -> dict[str, Any]:
        out = {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "note"},
               "tasks": [t.as_json() for t in self.tasks],
               "reduce": self.reduce.as_json() if self.reduce else None}
        return {**out, self.note.key: self.note.facts} if self.note else out


def run_status(run: Run, verify: bool = False) -> RunStatus:
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
    current = manifest_is_current(run, all(t.state == "done" for t in tasks))
    rows_done = sum(t.rows_done for t in tasks)
    started = _started_at(history, attempted)
    elapsed = (datetime.now(started.tzinfo) - started).total_seconds() if started else None
    rate = rows_done / elapsed if elapsed and rows_done else None
    reduce_logs = log_spans(run, None)
    return RunStatus(
        run_id=run.run_id, kind=run.kind.name, run_dir=str(run.dir),
        manifest=str(run.manifest_path) if current else None,
        manifest_stale=run.manifest_path.exists() and not current,
        executor=history[-1].executor if history else ("slurm" if jobs else None),
        rows=run.rows, rows_done=rows_done,
        rows_per_second=round(rate, 2) if rate else None,
        eta_seconds=round((run.rows - rows_done) / rate) if rate else None,
        tasks=tasks,
        counts={s: n for s in STATES if (n := sum(t.state == s for t in tasks))},
        reduce=ReduceStatus(reduce_id, states.get(reduce_id),
                            str(reduce_logs[-1].path) if reduce_logs else None)
        if reduce_id else None,
        slurm_error=slurm_error,
        note=run.kind.status_note(run, [t.state for t in tasks]))

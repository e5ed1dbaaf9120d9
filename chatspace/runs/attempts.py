"""Who ran a run's tasks: attempt records, and the SLURM jobs of each task.

Every time a task (or the reduce) starts, wherever it runs — a submitit job, an sbatch template
started by hand, a local process, this process — it records itself under
``{run}/attempts/{task-NNNNN|reduce}/``: host, pid, start time, its SLURM ids when it runs
under SLURM, and where its stdout/stderr go with their sizes at the start (so one attempt's
part of a log that several attempts append to can be shown alone). Each attempt writes only
its own file, atomically, so no locking is needed; it adds its end time and outcome when it
ends (a killed attempt has none).

`task_jobs` merges these records with the submission records, so `status`, `logs`, `cancel`
and `resume` see a run the same way whichever way it was started. An attempt of a job array
that chatspace did not submit (an sbatch template) also stands for its array's other tasks,
queued or not yet started, when the array is one contiguous range.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chatspace.names import check_no_link
from chatspace.runs.formats import Attempt, LogFile
from chatspace.runs.record import Run, read_typed_record, record_files, write_record
from chatspace.runs.slurm_env import SlurmJobEnvironment

REDUCE = "reduce"


def attempt_group(task: int | None) -> str:
    return REDUCE if task is None else f"task-{task:05d}"


def _now() -> datetime:
    return datetime.now(UTC)


def _slurm_fields() -> dict[str, Any] | None:
    job = SlurmJobEnvironment.current()
    return job.attempt_fields() if job else None


def _own_logs() -> tuple[LogFile, ...]:
    """The files this process's stdout and stderr write to, with their sizes now (Linux)."""
    logs: list[LogFile] = []
    for fd in (1, 2):
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if os.path.isfile(path) and path not in [e.path for e in logs]:
            logs.append(LogFile(path, os.path.getsize(path)))
    return tuple(logs)


@contextlib.contextmanager
def recording(run: Run, task: int | None) -> Iterator[None]:
    """Record an attempt of `task` (None: the reduce) for as long as the block runs."""
    started = _now()
    host = socket.gethostname()
    record = Attempt(task=task, host=host, pid=os.getpid(),
                     started_at=started.isoformat(timespec="microseconds"),
                     slurm=_slurm_fields(), logs=_own_logs(),
                     cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
    path = Attempt.path_in(run.root, run_id=run.run_id, group=attempt_group(task),
                           started=started, host=host, pid=os.getpid())
    check_no_link(run.root, path.parent, f"run {run.run_id}")
    write_record(path, record)
    try:
        yield
    except BaseException as exc:
        write_record(path, dataclasses.replace(
            record, ended_at=_now().isoformat(timespec="microseconds"), outcome="failed",
            error=(str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]))
        raise
    write_record(path, dataclasses.replace(
        record, ended_at=_now().isoformat(timespec="microseconds"), outcome="done"))


def attempts(run: Run, task: int | None) -> list[Attempt]:
    """The recorded attempts of `task` (None: the reduce), oldest first; a torn record is
    skipped (logged)."""
    folder = Attempt.folder_in(run.root, run_id=run.run_id, group=attempt_group(task))
    return [r for p in record_files(folder) if (r := read_typed_record(p, Attempt)) is not None]


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def task_jobs(run: Run, attempted: list[list[Attempt]] | None = None) -> dict[int, str]:
    """The SLURM job (``A_a``, or ``J`` for a one-task array) of each task's latest attempt or
    submission; a task whose latest attempt or submission ran outside SLURM has none.
    `attempted` is every task's `attempts` when the caller has read them already."""
    if attempted is None:
        attempted = [attempts(run, task) for task in range(run.num_tasks)]
    events: list[tuple[datetime, int, str | None]] = []
    submitted = set()
    for submission in run.submissions():
        when = _when(submission.submitted_at)
        events += [(when, task, None) for task in submission.tasks or ()]
        for array in submission.arrays:
            submitted.add(array["job_id"])
            events += [(when, t, j) for t, j in zip(array["tasks"], array["jobs"], strict=True)]
    for record in (r for history in attempted for r in history):
        when, slurm = _when(record.started_at), record.slurm
        events.append((when, record.task, slurm and slurm["job"]))
        array = slurm.get("array_job_id") if slurm else None
        if array and array not in submitted and \
                slurm["array_task_count"] == slurm["array_task_max"] - slurm["array_task_min"] + 1:
            # an array chatspace did not submit (an sbatch template): task = offset + index
            offset = record.task - slurm["array_task_id"]
            events += [(when, i + offset, f"{array}_{i}")
                       for i in range(slurm["array_task_min"], slurm["array_task_max"] + 1)
                       if 0 <= i + offset < run.num_tasks and i != slurm["array_task_id"]]
    jobs: dict[int, str] = {}
    for _, task, job in sorted(events, key=lambda e: e[0]):
        if job is None:
            jobs.pop(task, None)
        else:
            jobs[task] = job
    return jobs


def reduce_job(run: Run) -> str | None:
    """The SLURM job of the run's latest reduce: submitted by chatspace, or one that started."""
    events = [(_when(r.submitted_at), r.reduce_job_id) for r in run.submissions()]
    events += [(_when(r.started_at), r.slurm and r.slurm["job"]) for r in attempts(run, None)]
    return max(events, key=lambda e: e[0])[1] if events else None


@dataclass(frozen=True)
class LogSpan:
    """One attempt's part of a log file: bytes [start, stop) (stop None: to the end)."""

    path: Path
    start: int = 0
    stop: int | None = None

    def read(self) -> str:
        with open(self.path, "rb") as fh:
            fh.seek(self.start)
            data = fh.read() if self.stop is None else fh.read(max(self.stop - self.start, 0))
        return data.decode(errors="replace")


def log_spans(run: Run, task: int | None, attempt: int | None = None, *,
              history: list[Attempt] | None = None,
              jobs: dict[int, str] | None = None) -> list[LogSpan]:
    """Existing logs of attempt number `attempt` (1-based; default the latest) of `task`
    (None: the reduce), cut to what that attempt wrote when a later one appended to the same
    file. Attempts that recorded no log file fall back to the executors' file names.
    `history` (the task's `attempts`) and `jobs` (`task_jobs`) save reading them again."""
    history = attempts(run, task) if history is None else history
    if attempt is not None and not 1 <= attempt <= len(history):
        return []
    if history and history[(attempt or len(history)) - 1].logs:
        number = (attempt or len(history)) - 1
        spans = []
        for entry in history[number].logs:
            shares = [[e.offset for e in r.logs if e.path == entry.path] for r in history]
            earlier = any(shares[:number])  # the first one also shows its job's preamble
            later = [o for offsets in shares[number + 1:] for o in offsets]
            path = Path(entry.path)
            if path.exists():
                spans.append(LogSpan(path, entry.offset if earlier else 0,
                                     later[0] if later else None))
        return spans
    if attempt is not None and attempt != len(history):
        return []
    return [LogSpan(p) for p in _executor_logs(run, task, jobs)]


def _executor_logs(run: Run, task: int | None, jobs: dict[int, str] | None) -> list[Path]:
    """Logs by the executors' own file names: submitit's ``{job}_0_log.out/.err``, or the local
    executor's ``local-NNNNN.log``."""
    jobs = task_jobs(run) if jobs is None and task is not None else jobs or {}
    job = reduce_job(run) if task is None else jobs.get(task)
    names = ([f"{job}_0_log.out", f"{job}_0_log.err"] if job
             else [] if task is None else [f"local-{task:05d}.log"])
    return [run.log_dir / n for n in names if (run.log_dir / n).exists()]

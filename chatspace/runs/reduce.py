"""Reduce and verify: check every task's outputs against its completion record and the job
type's own checks, write the checksummed manifest, and re-check a finished run against it."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from chatspace.errors import RunFailed
from chatspace.runs.attempts import log_spans, recording
from chatspace.runs.formats import Completion, Manifest, ManifestFile
from chatspace.runs.lease import describe, holder
from chatspace.runs.record import (
    Run,
    UnreadableRecord,
    file_problem,
    output_problems,
    read_typed,
    write_record,
)

log = logging.getLogger(__name__)

SECRET_KEY = re.compile(r"(^|_)(key|token|secret|password|credentials?)$", re.IGNORECASE)


def redact(value: Any) -> Any:
    """A copy of a config tree with secret-looking keys' values replaced."""
    if isinstance(value, dict):
        return {k: "<redacted>" if SECRET_KEY.search(k) and v is not None else redact(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def task_problem(run: Run, task: int) -> str:
    """Why a task is not done, with where to look."""
    logs = log_spans(run, task)
    where = f" (log: {logs[-1].path})" if logs else ""
    owner = holder(run, task)
    if owner is not None:
        return f"task {task}: running in another process ({describe(owner)}){where}"
    record, unreadable = run.completion_record(task)
    if record is None:
        return f"task {task}: {unreadable or 'missing, no completion record'}{where}"
    problems = output_problems(record, run.root)
    if not problems:
        return f"task {task}: done by another attempt{where}"
    return f"task {task}: output {'; '.join(problems)}{where}"


def reduce_run(run: Run) -> Manifest:
    """Validate every task's outputs and write manifest.json; RunFailed names each bad task.
    Recorded as an attempt of the run's reduce."""
    run.check_folders()
    with recording(run, None):
        return _reduce(run)


def _reduce(run: Run) -> Manifest:
    started = datetime.now(UTC)
    problems: list[str] = []
    records: list[Completion] = []
    keys = []
    for task in range(run.num_tasks):
        record = run.completion(task)
        if record is None:
            problems.append(task_problem(run, task))
            continue
        check = run.kind.check_task(run, task, record)
        problems.extend(f"task {task}: {p}" for p in check.problems)
        records.append(record)
        keys.append(check.keys)
    if keys:
        all_keys = pa.chunked_array(keys, pa.string())
        if pc.count_distinct(all_keys).as_py() != len(all_keys):
            problems.append("row ids are not unique across tasks")
    if problems:
        raise RunFailed(f"reduce of run {run.run_id} failed:\n  " + "\n  ".join(problems))
    summary = run.kind.summarize(run, records)
    totals = {**summary.totals}
    totals["reduce_seconds"] = round((datetime.now(UTC) - started).total_seconds(), 3)
    files = [ManifestFile(**e.to_dict(), task=r.task) for r in records for e in r.outputs]
    manifest = Manifest(
        run_id=run.run_id, kind=run.kind.name,
        files=(*files, *(ManifestFile(**e.to_dict(), task=None)
                         for e in summary.reduce_outputs)),
        created_at=run.plan.created_at, tool=run.plan.tool,
        run_config=redact(run.plan.spec), totals=totals, details=summary.details)
    write_record(run.manifest_path, manifest)
    log.info("manifest written: %s", run.manifest_path)
    return manifest


def verify_run(run: Run, check_hash: bool = True, tasks_hashed: bool = False) -> list[str]:
    """Re-check every file the manifest lists (bytes, sha256 unless not `check_hash`, Parquet
    rows); [] when all match. `tasks_hashed`: the tasks' outputs were just hashed against
    their completion records, so only the reduce's own files are hashed again."""
    if not run.manifest_path.exists():
        return [f"no manifest at {run.manifest_path}: the run has not been reduced"]
    problems = []
    try:
        manifest = read_typed(run.manifest_path, Manifest)
    except UnreadableRecord as exc:
        return [str(exc)]
    for entry in manifest.files:
        problem = file_problem(entry, run.root,
                               check_hash and not (tasks_hashed and entry.task is not None))
        if problem is None and entry.rows is not None and \
                pq.ParquetFile(run.path(entry.path)).metadata.num_rows != entry.rows:
            problem = f"{entry.path} row count differs from the manifest"
        if problem:
            who = "reduce" if entry.task is None else f"task {entry.task}"
            problems.append(f"{who}: {problem}")
    tasks = {e.task for e in manifest.files if e.task is not None}
    if tasks != set(range(run.num_tasks)):
        problems.append(f"manifest lists outputs of {len(tasks)} tasks, "
                        f"the plan has {run.num_tasks} tasks")
    return problems

"""What the files under a root say about its runs, as rows: one per run and one per task.

Read from the run records only (plan, completion records, attempt records, manifest), offline
and without asking SLURM: a task is *done* when its completion record lists every output with
its recorded size (hashes are not re-read here; `chatspace verify` does that). A run is
``done`` when every task is done and its manifest is written, ``unreduced`` when every task is
done but the reduce has not run, and ``incomplete`` otherwise.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from chatspace.errors import BadInput, RunFailed
from chatspace.jobs import KINDS, open_run
from chatspace.runs.attempts import attempts
from chatspace.runs.formats import Attempt, Completion, Manifest, NewerRecord, Plan
from chatspace.runs.record import Run, read_typed_record
from chatspace.text import one_line

log = logging.getLogger(__name__)


def _time(stamp: str | None) -> datetime | None:
    return datetime.fromisoformat(stamp) if stamp else None


@dataclass(frozen=True)
class RunFiles:
    """One run's records, read once."""

    run: Run

    @cached_property
    def records(self) -> dict[int, Completion]:
        """Completion records of the done tasks, by task."""
        return self.run.done_records(check_hash=False)

    @cached_property
    def attempts(self) -> dict[int, list[Attempt]]:
        return {t: attempts(self.run, t) for t in range(self.run.num_tasks)}

    @cached_property
    def manifest(self) -> Manifest | None:
        return read_typed_record(self.run.manifest_path, Manifest)

    def reduce_file(self, name: str) -> Path | None:
        """A file the run's reduce wrote (listed in its manifest with task null), by name."""
        for entry in self.manifest.files if self.manifest else ():
            if entry.task is None and Path(entry.path).name == name:
                return self.run.path(entry.path)
        return None

    @property
    def missing_tasks(self) -> list[int]:
        return [t for t in range(self.run.num_tasks) if t not in self.records]

    @property
    def state(self) -> str:
        if self.missing_tasks:
            return "incomplete"
        return "done" if self.manifest is not None else "unreduced"

    def files(self, output: str) -> list[str]:
        """The files of output `output` that the done tasks list, in task order."""
        return [str(self.run.path(e.path)) for r in self.records.values()
                for e in r.outputs if e.name == output]

    def task_span(self, task: int) -> tuple[datetime | None, datetime | None]:
        """When the task's first attempt started and its last attempt ended."""
        tried = self.attempts.get(task, [])
        starts = [t for a in tried if (t := _time(a.started_at))]
        ends = [t for a in tried if (t := _time(a.ended_at))]
        return (min(starts) if starts else None), (max(ends) if ends else None)

    def task_row(self, task: int) -> dict[str, Any]:
        record = self.records.get(task)
        started, ended = self.task_span(task)
        timings = record.timings if record else {}
        wall = timings.get("wall", {}).get("seconds")
        stages = {s: t for s, t in timings.items() if s != "wall"}
        stats = {k: v for k, v in (record.details if record else {}).items()
                 if isinstance(v, int | float) and not isinstance(v, bool)}
        tried = self.attempts.get(task)
        return {
            "run_id": self.run.run_id, "kind": self.run.plan.kind, "task": task,
            "state": "done" if record else "not done",
            "rows": record.rows if record else None,
            "rows_in": record.rows_in if record else None,
            "attempts": len(tried or []), "host": tried[-1].host if tried else None,
            "started_at": started, "ended_at": ended, "wall_seconds": wall,
            "rows_per_s": record.rows / wall if record and wall else None,
            "stage_busy": {s: t.get("busy", 0.0) for s, t in stages.items()},
            "stage_idle": {s: t.get("idle", 0.0) for s, t in stages.items()},
            "stats": json.dumps(stats, sort_keys=True),
        }

    def run_row(self) -> dict[str, Any]:
        plan, run = self.run.plan, self.run
        spans = [self.task_span(t) for t in range(run.num_tasks)]
        starts = [start for start, _ in spans if start]
        ends = [end for _, end in spans if end]
        wall = (max(ends) - min(starts)).total_seconds() if starts and ends else None
        rows_done = sum(r.rows for r in self.records.values())
        facts = run.kind.run_facts(plan, list(self.records.values()))
        return {
            "run_id": run.run_id, "kind": plan.kind, "name": plan.spec["run"]["name"],
            **{k: facts.get(k) for k in ("model", "backend", "dataset")},
            "state": self.state, "tasks": run.num_tasks, "tasks_done": len(self.records),
            "rows": run.rows, "rows_done": rows_done,
            "created_at": _time(plan.created_at),
            "started_at": min(starts) if starts else None,
            "ended_at": max(ends) if ends else None,
            "wall_seconds": wall, "rows_per_s": rows_done / wall if wall else None,
            "tokens": facts.get("tokens"), "cost_usd": facts.get("cost_usd"),
            "output_dir": str(run.output_dir),
            "manifest": str(run.manifest_path) if self.manifest is not None else None,
            "config": json.dumps(plan.spec, sort_keys=True),
        }


def _unusable(files: RunFiles) -> str | None:
    """Why a run's plan, though it parses, cannot be listed (its spec is not its kind's, a
    path leaves the root, …), or None. A shared root may hold any file: one bad run must not
    take `query` and `report` down for the others."""
    run = files.run
    try:
        run.spec  # noqa: B018 - parses the spec as the kind's
        run.output_dir  # noqa: B018 - a stored path, checked inside the root
        run.manifest_path  # noqa: B018
        if not run.num_tasks:
            return "its plan has no tasks"
    except (BadInput, RunFailed) as exc:
        return one_line(str(exc))[:300]
    return None


class Catalog:
    """The runs under a root (or just the runs named: run ids or run directories), with their
    records."""

    def __init__(self, root: Path, only: list[str] | None = None):
        self.root = root
        if only:
            self.runs = [RunFiles(open_run(ref, root)) for ref in only]
            return
        self.runs = []
        for folder in sorted((root / "runs").glob("[!.]*/")):
            try:
                plan = read_typed_record(folder / "plan.json", Plan)
            except NewerRecord as exc:  # the other runs are still listed
                log.warning("skipping %s", exc)
                continue
            if plan is None:  # not planned (yet), or torn: logged by read_typed_record
                continue
            if plan.kind not in KINDS:
                log.warning("skipping %s: unknown kind %r", folder, plan.kind)
                continue
            files = RunFiles(Run(root, folder.name, KINDS[plan.kind]))
            problem = _unusable(files)
            if problem:
                log.warning("skipping run %s: %s", folder.name, problem)
                continue
            self.runs.append(files)

    def of_kind(self, kind: str) -> list[RunFiles]:
        return [f for f in self.runs if f.run.plan.kind == kind]

    def run_rows(self) -> list[dict[str, Any]]:
        return [f.run_row() for f in self.runs]

    def task_rows(self) -> list[dict[str, Any]]:
        return [f.task_row(t) for f in self.runs for t in range(f.run.num_tasks)]

"""What the files under a root say about its runs, as rows: one per run and one per task.

Read from the run records only (plan, completion records, attempt records, manifest), offline
and without asking SLURM (`RunFiles`). A run is ``done`` when every task is done and its
manifest is written, ``unreduced`` when every task is done but the reduce has not run, and
``incomplete`` otherwise. The kinds are handed in: this layer names none.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from chatspace.errors import BadInput, RunFailed
from chatspace.runs.formats import Plan
from chatspace.runs.kind import Kinds
from chatspace.runs.record import Run, read_typed_record
from chatspace.runs.run_files import RunFiles, parse_time
from chatspace.runs.typed_records import NewerRecord
from chatspace.text import one_line

log = logging.getLogger(__name__)


def task_row(files: RunFiles, task: int) -> dict[str, Any]:
    """One row of the `tasks` table."""
    record = files.records.get(task)
    started, ended = files.task_span(task)
    timings = record.timings if record else {}
    wall = timings.get("wall", {}).get("seconds")
    stages = {s: t for s, t in timings.items() if s != "wall"}
    stats = {k: v for k, v in (record.details if record else {}).items()
             if isinstance(v, int | float) and not isinstance(v, bool)}
    tried = files.attempts.get(task)
    return {
        "run_id": files.run.run_id, "kind": files.run.plan.kind, "task": task,
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


def run_row(files: RunFiles) -> dict[str, Any]:
    """One row of the `runs` table."""
    plan, run = files.run.plan, files.run
    spans = [files.task_span(t) for t in range(run.num_tasks)]
    starts = [start for start, _ in spans if start]
    ends = [end for _, end in spans if end]
    wall = (max(ends) - min(starts)).total_seconds() if starts and ends else None
    rows_done = sum(r.rows for r in files.records.values())
    facts = run.kind.run_facts(plan, list(files.records.values()))
    return {
        "run_id": run.run_id, "kind": plan.kind, "name": plan.spec["run"]["name"],
        **{k: facts.get(k) for k in ("model", "backend", "dataset")},
        "state": files.state, "tasks": run.num_tasks, "tasks_done": len(files.records),
        "rows": run.rows, "rows_done": rows_done,
        "created_at": parse_time(plan.created_at),
        "started_at": min(starts) if starts else None,
        "ended_at": max(ends) if ends else None,
        "wall_seconds": wall, "rows_per_s": rows_done / wall if wall else None,
        "tokens": facts.get("tokens"), "cost_usd": facts.get("cost_usd"),
        "output_dir": str(run.output_dir),
        "manifest": str(run.manifest_path) if files.manifest is not None else None,
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
    """The runs of `kinds` under a root (or just the runs named: run ids or run directories),
    with their records."""

    def __init__(self, root: Path, kinds: Kinds, only: list[str] | None = None):
        self.root = root
        self.kinds = kinds
        if only:
            self.runs = [RunFiles(Run.open(ref, root, kinds)) for ref in only]
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
            if plan.kind not in kinds:
                log.warning("skipping %s: unknown kind %r", folder, plan.kind)
                continue
            files = RunFiles(Run(root, folder.name, kinds[plan.kind]))
            problem = _unusable(files)
            if problem:
                log.warning("skipping run %s: %s", folder.name, problem)
                continue
            self.runs.append(files)

    def of_kind(self, kind: str) -> list[RunFiles]:
        return [f for f in self.runs if f.run.plan.kind == kind]

    def run_rows(self) -> list[dict[str, Any]]:
        return [run_row(f) for f in self.runs]

    def task_rows(self) -> list[dict[str, Any]]:
        return [task_row(f, t) for f in self.runs for t in range(f.run.num_tasks)]

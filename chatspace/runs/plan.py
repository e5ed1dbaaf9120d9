"""Plan a run on the login node: the kind resolves its inputs from metadata, the machinery
cuts the rows into slices and writes the run record. Everything is checked before anything is
written, and ``plan.json`` is written last: its presence means "planned"."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from chatspace.errors import BadInput
from chatspace.names import check_inside, check_name, check_no_link
from chatspace.runs.files import atomic_path, check_writable, tool_info, write_json
from chatspace.runs.formats import Plan, TaskSlice
from chatspace.runs.kind import Kind, WorkPlan
from chatspace.runs.record import Run, read_typed, spec_hash, stored_path, write_record
from chatspace.specs import JobSpec

log = logging.getLogger(__name__)


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def slice_bounds(rows: int, tasks: int) -> list[tuple[int, int]]:
    """[start, stop) positions in the plan's rows for each task; sizes differ by at most one."""
    if tasks > rows:
        raise BadInput(f"run.array (--array) = {tasks} is larger than the {rows} rows to run")
    cuts = [(i * rows) // tasks for i in range(tasks + 1)]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


@dataclass(frozen=True)
class Planned:
    """The outcome of `plan_run`: a run on disk, or a dry run's estimate (nothing written)."""

    run: Run | None
    new: bool  # False: an existing run id with this same spec was reused
    estimate: list[str]


def plan_run(kind: Kind, spec: JobSpec, root: Path, run_id: str | None = None,
             execute: bool = True) -> Planned:
    """Plan `spec` under `root`. Work that the kind says must be confirmed (`estimate`)
    is only estimated unless `execute`."""
    check_writable(root)
    digest = spec_hash(spec)
    if run_id is not None:
        check_name(run_id, "--run-id")
        existing = Run(root, run_id, kind)
        if existing.plan_path.exists():
            if read_typed(existing.plan_path, Plan).spec_hash != digest:
                raise BadInput(f"run id {run_id} already exists at {existing.dir} with a "
                               "different spec; choose another --run-id")
            return Planned(existing, False, kind.estimate(spec, existing_plan(existing), execute))
    run = Run(root, run_id or new_run_id(), kind)
    resolved = kind.plan(spec, root, run.run_id)
    check_inside(root, resolved.output_dir, "output directory")
    check_inside(root, resolved.manifest_path, "manifest")
    for folder in (run.dir, resolved.output_dir, resolved.manifest_path.parent):
        check_no_link(root, folder, "plan")
    slices = slice_bounds(resolved.rows, spec.run.array)
    estimate = kind.estimate(spec, resolved, execute)
    if estimate and not execute:
        return Planned(None, False, estimate)
    plan = Plan(
        run_id=run.run_id, kind=kind.name,
        created_at=datetime.now(UTC).isoformat(timespec="microseconds"),
        spec=spec.to_dict(), spec_hash=digest,
        tasks=tuple(TaskSlice(i, s, e) for i, (s, e) in enumerate(slices)),
        output_dir=stored_path(resolved.output_dir, root), outputs=resolved.outputs,
        manifest_path=stored_path(resolved.manifest_path, root), tool=tool_info(),
        primary_output=next(iter(resolved.outputs)), part_files=resolved.part_files,
        details=resolved.details)
    for name, array in resolved.arrays.items():
        with atomic_path(run.dir / f"{name}.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, array)
    for name, content in resolved.files.items():
        with atomic_path(run.dir / name) as tmp:
            tmp.write_bytes(content)
    write_json(run.dir / "spec.json", spec.to_dict())
    write_record(run.plan_path, plan)  # written last: its presence means "planned"
    log.info("planned %s run %s: %d rows in %d tasks", kind.name, run.run_id, resolved.rows,
             len(slices))
    return Planned(run, True, estimate)


def existing_plan(run: Run) -> WorkPlan:
    """A reused run's plan in the form `Kind.estimate` takes."""
    return WorkPlan(rows=run.rows, details=run.plan.details, output_dir=run.output_dir,
                   manifest_path=run.manifest_path, outputs=run.plan.outputs,
                   arrays=run.arrays, part_files=run.plan.part_files)

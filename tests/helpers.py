"""Helpers to plan and run embed jobs in-process (the debug executor) from tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from chatspace.jobs import KINDS
from chatspace.jobs.embed.spec import EmbedSpec
from chatspace.runs.executors import DebugExecutor
from chatspace.runs.plan import plan_run
from chatspace.runs.record import Run
from chatspace.specs import resolve_spec


def plan(root: Path, data: Path, run_id: str | None = None, *, n: int = 60,
         array: int = 2, **sections: dict[str, Any]) -> Run:
    overrides = {"dataset": {"name": str(data), "text_field": "text"},
                 "sampling": {"n": n, "seed": 1}, "run": {"array": array}}
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return plan_run(KINDS["embed"], resolve_spec(EmbedSpec, None, overrides), root,
                    run_id).run


def embed(root: Path, data: Path, run_id: str | None = None, **kwargs: Any) -> Run:
    run = plan(root, data, run_id, **kwargs)
    DebugExecutor().execute(run, range(run.num_tasks))
    return run


def shard(run: Run, task: int) -> Path:
    return run.output_paths(task)["shard"]


def open_run(ref: str | Path) -> Run:
    return Run.open(str(ref), Path("/nonexistent"), KINDS)


def read_run(run: Run) -> pa.Table:
    return pa.concat_tables(pq.read_table(shard(run, t)) for t in range(run.num_tasks))

"""Helpers to plan and run embed jobs in-process (the debug executor) from tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from chatspace.config import resolve_spec
from chatspace.executors import DebugExecutor
from chatspace.planner import plan_embed
from chatspace.runrecord import Run


def plan(root: Path, data: Path, run_id: str | None = None, *, n: int = 60,
         array: int = 2, **sections: dict[str, Any]) -> Run:
    overrides = {"dataset": {"name": str(data), "text_field": "text"},
                 "sampling": {"n": n, "seed": 1}, "run": {"array": array}}
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    run, _ = plan_embed(resolve_spec(None, overrides), root, run_id)
    return run


def embed(root: Path, data: Path, run_id: str | None = None, **kwargs: Any) -> Run:
    run = plan(root, data, run_id, **kwargs)
    DebugExecutor().execute(run, range(run.num_tasks))
    return run


def read_run(run: Run) -> pa.Table:
    return pa.concat_tables(pq.read_table(run.shard_path(t)) for t in range(run.num_tasks))

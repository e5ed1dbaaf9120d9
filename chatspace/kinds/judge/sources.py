"""What a judge run judges: the generations of finished steer runs (their results files), kept
by an optional SQL predicate over the results columns (DuckDB, no file access), each rendered
into the rubric's messages once, at plan time. The plan's rows file holds one row per judged
generation: its steer run, its id and the messages, so tasks read no steer run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from chatspace.kinds.judge.rubric import Rubric
from chatspace.kinds.steer.kind import SteerKind
from chatspace.kinds.steer.schema import RESULTS_SCHEMA
from chatspace.runs.record import Run, open_finished

ROWS_FILE = "judge-rows.parquet"  # in the run directory
# results columns a rubric or a predicate may name (token ids are not text)
COLUMNS = [name for name in RESULTS_SCHEMA.names if name != "output_token_ids"]


def open_steer_run(ref: str, root: Path) -> Run:
    """A finished steer run; BadInput naming it when it is not one."""
    return open_finished(ref, root, SteerKind(), "source.runs",
                         ": only steer runs have generations (results) to judge")


def results_of(runs: list[Run]) -> pa.Table:
    """Every generation of `runs`, in run and row order (without token ids)."""
    tables = [pq.read_table(run.output_paths(task)["results"], columns=COLUMNS)
              for run in runs for task in range(run.num_tasks)]
    return pa.concat_tables(tables) if tables else RESULTS_SCHEMA.empty_table().select(COLUMNS)


def judge_rows(table: pa.Table, rubric: Rubric) -> pa.Table:
    """One row per generation to judge: its steer run, its id and the rubric's messages."""
    rows = table.to_pylist()
    return pa.table({
        "steer_run_id": pa.array([r["run_id"] for r in rows], pa.string()),
        "id": pa.array([r["id"] for r in rows], pa.string()),
        "messages": pa.array([json.dumps(rubric.messages(r), ensure_ascii=False)
                              for r in rows], pa.string()),
    })


def rows_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def read_rows(run: Run, start: int, stop: int) -> list[dict[str, Any]]:
    """Plan rows [start, stop): steer_run_id, id and the messages (decoded)."""
    table = pq.read_table(run.dir / ROWS_FILE).slice(start, stop - start)
    return [{**row, "messages": json.loads(row["messages"])} for row in table.to_pylist()]

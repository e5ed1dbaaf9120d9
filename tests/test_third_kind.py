"""A third kind, defined here and registered at run time, goes through the whole machinery
and the results layer — planned, run by an executor, reduced and verified, listed by `query`
(run table, its own views, its metrics for --best and --compare) and reported — without any
change to `chatspace/runs` or `chatspace/results`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from chatspace.kinds import KINDS
from chatspace.results.catalog import Catalog
from chatspace.results.query import best, compare, connect, run_sql, view_names
from chatspace.results.report import render
from chatspace.runs.executors import launch
from chatspace.runs.files import write_parquet
from chatspace.runs.formats import Completion, Plan
from chatspace.runs.kind import (
    Kind,
    Metrics,
    Part,
    PartOutput,
    Summary,
    TaskCheck,
    WorkPlan,
)
from chatspace.runs.plan import plan_run
from chatspace.runs.record import Run
from chatspace.runs.reduce import verify_run
from chatspace.runs.run_files import RunFiles
from chatspace.runs.timing import StageTimer
from chatspace.specs import JobSpec, Section, SlurmConfig, option, resolve_spec


class SquaresConfig(Section):
    count: int = option(10, "How many integers.", ge=1)
    offset: int = option(0, "The first integer.")


class SquaresSpec(JobSpec):
    squares: SquaresConfig = SquaresConfig()


class SquaresKind(Kind):
    """The squares of the integers offset .. offset + count - 1."""

    name = "squares"
    spec_type = SquaresSpec
    task_views = {"squares": "values"}
    reduce_views = {"squares_total": "total.parquet"}
    metrics = Metrics("squares", ("parity",), ("square",))

    def plan(self, spec: SquaresSpec, root: Path, run_id: str) -> WorkPlan:
        out = root / "squares" / run_id
        return WorkPlan(rows=spec.squares.count, details={"offset": spec.squares.offset},
                       output_dir=out, manifest_path=out / "manifest.json",
                       outputs={"values": "values-{task:05d}.parquet"})

    def run_parts(self, run: Run, task: int, parts: list[Part],
                  timer: StageTimer) -> Iterator[PartOutput]:
        for part in parts:
            with timer.measure("square"):
                n = np.arange(part.start, part.stop) + run.plan.details["offset"]
                table = pa.table({"run_id": [run.run_id] * len(n), "n": n, "square": n * n,
                                  "parity": n % 2})
            yield PartOutput(part, {"values": table}, {"summed": int((n * n).sum())})

    def task_stats(self, run: Run, task: int, parts: list[dict[str, Any]]) -> dict[str, Any]:
        return {"summed": sum(p["summed"] for p in parts)}

    def check_task(self, run: Run, task: int, record: Completion) -> TaskCheck:
        table = pq.read_table(run.output_paths(task)["values"])
        start, stop = run.task_bounds(task)
        problems = [] if table.num_rows == stop - start else [f"task {task}: rows missing"]
        return TaskCheck(problems, table.column("n").cast(pa.string()))

    def summarize(self, run: Run, records: list[Completion]) -> Summary:
        total = sum(r.details["summed"] for r in records)
        path = run.output_dir / "total.parquet"
        schema = pa.schema([("total", pa.int64())])
        write_parquet(path, [pa.table({"total": [total]}, schema)], schema, {})
        return Summary({"total": total}, reduce_outputs=[run.entry(path)])

    def run_facts(self, plan: Plan, records: list[Completion]) -> dict[str, Any]:
        return {"dataset": f"integers from {plan.details['offset']}"}

    def report_blocks(self, runs: list[RunFiles]) -> list[str]:
        return [f"<h2>Squares</h2><p>{f.run.run_id}: {len(f.files('values'))} files</p>"
                for f in runs]


@pytest.fixture
def squares() -> Kind:
    return SquaresKind()


def test_a_third_kind_is_planned_run_reduced_queried_and_reported(tmp_path, squares):
    root = tmp_path / "ws"
    runs = []
    for offset in (0, 100):
        spec = resolve_spec(SquaresSpec, None, {"squares": {"count": 10, "offset": offset},
                                                "run": {"array": 3, "part_rows": 2}})
        run = plan_run(squares, spec, root).run
        launch(run, "debug", slurm=SlurmConfig())
        assert verify_run(run) == []
        runs.append(run)

    kinds = {**KINDS, squares.name: squares}  # handed to the results layer, as the CLI does
    catalog = Catalog(root, kinds)
    assert [f.run.plan.kind for f in catalog.runs] == ["squares", "squares"]
    assert {"squares", "squares_total"} <= set(view_names(kinds))
    con = connect(catalog)
    listed = run_sql(con, "SELECT kind, dataset, state, tasks, rows_done FROM runs "
                          "ORDER BY dataset").rows
    assert listed == [("squares", "integers from 0", "done", 3, 10),
                      ("squares", "integers from 100", "done", 3, 10)]
    sums = run_sql(con, "SELECT run_id, sum(square) FROM squares GROUP BY run_id").rows
    expected = {runs[0].run_id: sum(n * n for n in range(10)),
                runs[1].run_id: sum(n * n for n in range(100, 110))}
    assert dict(sums) == expected
    totals = run_sql(con, "SELECT total FROM squares_total ORDER BY total").rows
    assert [t for (t,) in totals] == sorted(expected.values())

    ranked = best(connect(catalog), kinds, "square", top=1, lowest=False).records()
    assert ranked[0]["run_id"] == runs[1].run_id and ranked[0]["parity"] == 1
    compared = dict((r[0], r[1:]) for r in compare(connect(catalog), kinds,
                                                   [r.run_id for r in runs]).rows)
    assert compared["mean square"] == (28.5, 10928.5)
    assert compared["config.squares.offset"] == (0, 100)

    page = render([f for f in catalog.runs if f.run.run_id == runs[0].run_id])
    assert f"<h2>Squares</h2><p>{runs[0].run_id}: 3 files</p>" in page
    assert "integers from 0" in page  # the run facts in the summary table

"""The vectors kind: steering vectors from the captures of finished steer runs, on the same
run machinery. The plan lists every generation with captures (`sources`); each task streams over
its slice's capture files and commits, part by part, the sufficient statistics of each
(group, layer) (`stats`); the reduce merges them, computes means, contrasts and principal
components (`compute`), writes ``vectors.safetensors``, ``vectors.parquet`` and
``projections.parquet`` under ``vectors/{model}/{name}/{run}/`` and lists them, checksummed, in
the manifest."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from chatspace.kinds.vectors.spec import VectorsSpec
from chatspace.runs.formats import Completion, Plan
from chatspace.runs.kind import Kind, Part, PartOutput, Summary, TaskCheck, WorkPlan
from chatspace.runs.record import Run
from chatspace.runs.run_files import RunFiles
from chatspace.runs.timing import StageTimer, add_timings


class VectorsKind(Kind):
    """Steering vectors from steer runs' captures: per layer, each group's mean (groups: the
    values of a results column, --group-by), contrasts (--contrast A:B, --baseline) and the
    top principal components of the group means (--pca K), with every generation's projection
    on each; loadable by `load_vector(path, key)` and by a steer spec's `vector`."""

    name = "vectors"
    spec_type = VectorsSpec
    reduce_views = {"vectors": "vectors.parquet", "projections": "projections.parquet"}

    def run_facts(self, plan: Plan, records: list[Completion]) -> dict[str, Any]:
        return {"model": plan.details["model"]["label"]}

    def report_blocks(self, runs: list[RunFiles]) -> list[str]:
        from chatspace.kinds.vectors.report import vectors_blocks

        return vectors_blocks(runs)

    def plan(self, spec: VectorsSpec, root: Path, run_id: str) -> WorkPlan:
        from chatspace.kinds.vectors.sources import ROWS_FILE, read_inputs, rows_bytes

        inputs = read_inputs(spec, root)
        out = root / "vectors" / inputs.model["label"] / (spec.run.name or "vectors") / run_id
        details = {"model": inputs.model, "sources": inputs.sources, "layers": inputs.layers,
                   "groups": inputs.groups, "generations": inputs.rows.num_rows,
                   "selection": inputs.selection}
        return WorkPlan(rows=inputs.rows.num_rows, details=details, output_dir=out,
                       manifest_path=out / "manifest.json",
                       outputs={"stats": "stats-{task:05d}.parquet"},
                       files={ROWS_FILE: rows_bytes(inputs.rows)})

    def run_parts(self, run: Run, task: int, parts: list[Part],
                  timer: StageTimer) -> Iterator[PartOutput]:
        from chatspace.kinds.vectors.sources import ROWS_FILE
        from chatspace.kinds.vectors.stats import part_statistics

        rows = pq.read_table(run.dir / ROWS_FILE)
        statistics = part_statistics(run.root, rows, [(p.start, p.stop) for p in parts],
                                     run.plan.details["layers"],
                                     run.plan.details["model"]["hidden_size"])
        try:
            for part in parts:
                with timer.measure("read_and_sum"):
                    stats = next(statistics)
                yield PartOutput(part, {"stats": stats}, {"generations": part.stop - part.start})
        finally:
            statistics.close()  # stops the reader thread

    def write_options(self, output: str) -> dict[str, Any]:
        # partial float64 sums neither compress nor repeat: zstd and a dictionary would cost
        # the task CPU (beside its reads) for nothing
        return {"compression": "none", "use_dictionary": ["group"]}

    def task_stats(self, run: Run, task: int, parts: list[dict[str, Any]]) -> dict[str, Any]:
        return {"generations": sum(p["generations"] for p in parts)}

    def check_task(self, run: Run, task: int, record: Completion) -> TaskCheck:
        import pyarrow as pa
        import pyarrow.compute as pc

        path = run.output_paths(task)["stats"]
        table = pq.read_table(path)
        start, stop = run.task_bounds(task)
        problems = []
        for layer in run.plan.details["layers"]:
            mask = pc.equal(table.column("layer"), layer)
            counted = pc.sum(table.filter(mask).column("count")).as_py() or 0
            if counted != stop - start:
                problems.append(f"stats {path} count {counted} generations at layer {layer}, "
                                f"its slice has {stop - start}")
        # a part's partial sums per (group, layer): unique by task and position
        keys = pa.array([f"{task}:{i}" for i in range(table.num_rows)], pa.string())
        return TaskCheck(problems, keys)

    def summarize(self, run: Run, records: list[Completion]) -> Summary:
        from chatspace.kinds.vectors.compute import (
            compute,
            write_percentiles,
            write_projections,
            write_vectors,
        )
        from chatspace.kinds.vectors.sources import ROWS_FILE
        from chatspace.kinds.vectors.stats import merge

        plan = run.plan.details
        sums, counts = merge([pq.read_table(run.output_paths(r.task)["stats"])
                              for r in records])
        vectors = compute(sums, counts, plan["layers"], run.spec.groups)
        written = write_vectors(vectors, run.output_dir)
        written.append(write_projections(run.root, pq.read_table(run.dir / ROWS_FILE),
                                         plan["layers"], plan["model"]["hidden_size"], vectors,
                                         [s["run_id"] for s in plan["sources"]],
                                         run.output_dir))
        if run.spec.groups.percentiles:
            written.append(write_percentiles(written[-1], run.spec.groups, run.output_dir))
        timings: dict[str, dict[str, float]] = {}
        for record in records:
            add_timings(timings, record.timings)
        return Summary({
            "model": plan["model"]["label"], "sources": [s["run_id"] for s in plan["sources"]],
            "group_by": run.spec.groups.by, "groups": plan["groups"], "layers": plan["layers"],
            "selection": plan.get("selection"),
            "percentiles": run.spec.groups.percentile_names() or None,
            "generations": sum(r.details["generations"] for r in records),
            "vectors": [{"key": v.key, "kind": v.kind, "layer": v.layer,
                         "explained_variance": v.explained_variance} for v in vectors],
        }, totals={"stage_timings": timings},
            reduce_outputs=[run.entry(path) for path in written])

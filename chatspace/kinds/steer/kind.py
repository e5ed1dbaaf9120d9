"""The steer kind: a sweep of steering points x prompts x personas x repetitions, each task
hosting one engine (vLLM or HF) that generates its slice of rows with per-row steering, token
metrics and captures; a manifest with metrics per point and per category."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from chatspace.errors import BadInput
from chatspace.kinds.steer.prompts import load_personas, load_prompts
from chatspace.kinds.steer.schema import METRICS, RESULTS_SCHEMA, WRITE_OPTIONS
from chatspace.kinds.steer.spec import SteerSpec
from chatspace.models import find_model, model_shape
from chatspace.runs.formats import Completion, Plan
from chatspace.runs.kind import (
    Kind,
    Metrics,
    Part,
    PartOutput,
    Summary,
    TaskCheck,
    WorkPlan,
    summed,
)
from chatspace.runs.record import Run, stored_path
from chatspace.runs.run_files import RunFiles
from chatspace.runs.timing import StageTimer, add_timings


class SteerKind(Kind):
    """Steering sweep: generate every (point, prompt, persona, repetition) row with its own
    steering, with token metrics (entropy, top-k mass, split at </think>) and hidden-state
    captures, then write a manifest summarising metrics per point and per category."""

    name = "steer"
    spec_type = SteerSpec
    task_views = {"steer_results": "results", "steer_probes": "probes"}
    metrics = Metrics("steer_results", ("point", "scale"), (
        "avg_entropy", "avg_entropy_thinking", "avg_entropy_output", "avg_top_k_mass",
        "avg_top_k_mass_thinking", "avg_top_k_mass_output", "think_end_position",
        "output_tokens"))

    def run_facts(self, plan: Plan, records: list[Completion]) -> dict[str, Any]:
        prompts, model = plan.spec["prompts"], plan.details["model"]
        return {"model": model["label"], "backend": model["backend"],
                "dataset": prompts.get("file") or prompts.get("dataset"),
                "tokens": summed(records, "generated_tokens")}

    def report_blocks(self, runs: list[RunFiles]) -> list[str]:
        from chatspace.kinds.steer.report import steer_blocks

        return steer_blocks(runs)

    def plan(self, spec: SteerSpec, root: Path, run_id: str) -> WorkPlan:
        from chatspace.kinds.steer.points import expand_points, point_file  # torch
        from chatspace.kinds.steer.probes import PROBES_FILE, probes_bytes, resolve_probes
        from chatspace.kinds.steer.rendering import check_rows, prompt_template

        ref = find_model(spec.model.name, root)
        hidden, layers, positions, tokenizer = model_shape(ref.path, spec.model.name)
        for layer in spec.capture.layers:
            if not 0 <= layer < layers:
                raise BadInput(f"capture.layers: layer {layer} out of range (the model has "
                               f"{layers} decoder layers)")
        prompts = load_prompts(spec.prompts)
        personas = load_personas(spec.personas)
        template = prompt_template(spec, tokenizer)
        check_rows(spec, tokenizer, template, prompts, personas,
                   spec.model.max_model_len or positions)
        points = expand_points(spec, hidden, layers, root)
        rows = len(points) * len(prompts) * max(len(personas), 1) * spec.generation.n_reps
        inputs = {"prompts": prompts, "personas": personas,
                  "points": [p.to_dict() for p, _ in points]}
        files = {"inputs.json": json.dumps(inputs, indent=1).encode()}
        files.update({point_file(n): s.to_bytes() for n, (_, s) in enumerate(points)
                      if s is not None})
        if spec.probes:
            files[PROBES_FILE] = probes_bytes(resolve_probes(spec, hidden, layers, root))
        out = root / "steering" / ref.label / (spec.run.name or "steer") / run_id
        outputs = {"results": "results-{task:05d}.parquet"}
        part_files = {}
        if spec.capture.layers:
            outputs["capture_index"] = "captures-{task:05d}/index.parquet"
            part_files["captures"] = "captures-{task:05d}/part-{part:05d}.safetensors"
        if spec.probes:
            outputs["probes"] = "probes-{task:05d}.parquet"
        details = {"model": {"label": ref.label, "path": stored_path(Path(ref.path), root),
                             "hidden_size": hidden,
                             "num_layers": layers, "backend": spec.model.backend},
                   "template": template,
                   "sweep": {"points": len(points), "prompts": len(prompts),
                             "personas": len(personas), "reps": spec.generation.n_reps}}
        return WorkPlan(rows=rows, details=details, output_dir=out,
                       manifest_path=out / "manifest.json", outputs=outputs, files=files,
                       part_files=part_files)

    def run_parts(self, run: Run, task: int, parts: list[Part],
                  timer: StageTimer) -> Iterator[PartOutput]:
        from chatspace.kinds.steer.sweep import SweepParts

        return SweepParts(run, task, timer)(parts)

    def write_options(self, output: str) -> dict[str, Any]:
        return WRITE_OPTIONS if output == "results" else {"compression": "zstd"}

    def task_stats(self, run: Run, task: int, parts: list[dict[str, Any]]) -> dict[str, Any]:
        return {"generated_tokens": sum(p["generated_tokens"] for p in parts)}

    def check_task(self, run: Run, task: int, record: Completion) -> TaskCheck:
        path = run.output_paths(task)["results"]
        table = pq.read_table(path)
        problems = []
        if not table.schema.equals(RESULTS_SCHEMA, check_metadata=False):
            problems.append(f"results {path} schema differs from the results schema")
        start, stop = run.task_bounds(task)
        rows = table.column("row").to_numpy() if "row" in table.column_names else []
        if not np.array_equal(np.sort(rows), np.arange(start, stop)):
            problems.append(f"results {path} rows do not cover its slice [{start}, {stop}) "
                            "of the plan")
        if set(table.column("run_id").to_pylist()) - {run.run_id}:
            problems.append(f"results {path} holds rows of another run")
        if "capture_index" in run.output_paths(task):
            index = pq.read_table(run.output_paths(task)["capture_index"])
            listed = {Path(e.path).name for e in record.outputs if e.name == "captures"}
            missing = set(index.column("file").to_pylist()) - listed
            if missing:
                problems.append(f"capture index of task {task} names files its completion "
                                f"record does not list: {sorted(missing)}")
        return TaskCheck(problems, table.column("id").combine_chunks())

    def summarize(self, run: Run, records: list[Completion]) -> Summary:
        tables = [pq.read_table(run.output_paths(r.task)["results"]) for r in records]
        results = pa.concat_tables(tables) if tables else RESULTS_SCHEMA.empty_table()
        timings: dict[str, dict[str, float]] = {}
        for record in records:
            add_timings(timings, record.timings)
        details = run.plan.details
        return Summary({
            "model": details["model"]["label"], "backend": details["model"]["backend"],
            "sweep": details["sweep"], "generations": results.num_rows,
            "generated_tokens": sum(r.details["generated_tokens"] for r in records),
            "per_point": _grouped(results, "point"),
            "per_category": [{"category": category, **values} for category, values
                             in _grouped(results, "category").items()],
            "results": [{"path": r.outputs[0].path, "bytes": r.outputs[0].bytes,
                         "sha256": r.outputs[0].sha256, "task": r.task, "rows": r.rows}
                        for r in records],
            "captures": sum(1 for r in records for e in r.outputs if e.name == "captures"),
        }, totals={"bytes": sum(e.bytes for r in records for e in r.outputs),
                   "stage_timings": timings})


def _grouped(results: pa.Table, key: str) -> dict[Any, dict[str, Any]]:
    """Generations and the mean of each metric per value of `key` (None: the rows with no
    value, a group of their own)."""
    columns = ["think_end_position", *METRICS]
    grouped = results.group_by(key).aggregate(
        [("row", "count")] + [(c, "mean") for c in columns]).to_pylist()
    return {g[key]: {"generations": g["row_count"],
             **{c: g[f"{c}_mean"] for c in columns}} for g in grouped}

"""The embed kind: rows sampled from a dataset, embedded by a backend into Parquet shards
(one per task) with the shard schema (README "Outputs"), and a manifest with per-shard checksums."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from chatspace.data.sampling import draw_sample
from chatspace.data.sources import SourceInfo, check_ids, open_source
from chatspace.errors import BadInput, RunFailed
from chatspace.kinds.embed.schema import WRITE_OPTIONS, shard_schema
from chatspace.kinds.embed.spec import EmbedSpec
from chatspace.runs.formats import Completion, Plan
from chatspace.runs.kind import Kind, Part, PartOutput, Summary, TaskCheck, WorkPlan, summed
from chatspace.runs.record import Run
from chatspace.runs.run_files import RunFiles
from chatspace.runs.timing import StageTimer, add_timings

# Per-part stats that add up over parts into completion records and the manifest's totals
# (tokens for both backends, padding for sentence-transformers, the rest for OpenAI).
SUMMED_STATS = ("tokens", "padded_tokens", "requests", "retries", "cost_usd")


def _check_fields(spec: EmbedSpec, columns: tuple[str, ...]) -> None:
    cfg = spec.dataset
    for key in ("text_field", "messages_field", "id_field"):
        name = getattr(cfg, key)
        if name is not None and name not in columns:
            raise BadInput(f"dataset.{key} {name!r} is not a column of {cfg.name} "
                           f"(columns: {', '.join(columns)})")


def _model_plan(spec: EmbedSpec) -> dict[str, Any]:
    if spec.model.backend == "openai":
        from chatspace.kinds.embed.openai_plan import api_model

        return api_model(spec)
    from chatspace.kinds.embed.st_model import resolve_model

    ref = resolve_model(spec.model.name)
    return {"backend": spec.model.backend, "label": ref.label, "path": ref.path}


class EmbedKind(Kind):
    """Embed a dataset: plan a deterministic sample, embed each slice into a Parquet shard
    (sentence-transformers locally, or the OpenAI embeddings API), then write a checksummed
    manifest."""

    name = "embed"
    spec_type = EmbedSpec
    task_views = {"embeddings": "shard"}

    def run_facts(self, plan: Plan, records: list[Completion]) -> dict[str, Any]:
        return {"model": plan.details["model"]["label"],
                "backend": plan.details["model"]["backend"],
                "dataset": plan.spec["dataset"]["name"],
                "tokens": summed(records, "tokens"), "cost_usd": summed(records, "cost_usd")}

    def report_blocks(self, runs: list[RunFiles]) -> list[str]:
        from chatspace.kinds.embed.report import embed_blocks

        return embed_blocks(runs)

    def plan(self, spec: EmbedSpec, root: Path, run_id: str) -> WorkPlan:
        ds = spec.dataset
        source = open_source(ds.name, ds.subset, ds.split)
        _check_fields(spec, source.columns)
        model = _model_plan(spec)
        sample = draw_sample(spec.sampling, source.rows)
        if ds.id_field:
            check_ids(source, ds.id_field, sample)
        where = [model["label"], source.dataset] + ([ds.split] if ds.split else []) + [run_id]
        details = {
            "source": source.to_dict(),
            "model": model,
            "sampling": {"seed": spec.sampling.seed, "n": spec.sampling.n, "p": spec.sampling.p,
                         "max_rows": spec.sampling.max_rows, "rows_available": source.rows,
                         "rows_sampled": len(sample)},
        }
        return WorkPlan(rows=len(sample), details=details,
                       output_dir=root.joinpath("embeddings", *where),
                       manifest_path=root.joinpath("indexes", *where, "manifest.json"),
                       outputs={"shard": "shard-{task:05d}.parquet"}, arrays={"sample": sample})

    def estimate(self, spec: EmbedSpec, plan: WorkPlan, execute: bool) -> list[str]:
        if spec.model.backend != "openai":
            return []
        from chatspace.kinds.embed.openai_plan import estimate_run

        return estimate_run(spec, plan, execute)

    def run_parts(self, run: Run, task: int, parts: list[Part],
                  timer: StageTimer) -> Iterator[PartOutput]:
        details = run.plan.details
        source = SourceInfo.from_dict(details["source"])
        sample = run.arrays["sample"]
        constants = {"source": source.origin, "dataset": source.dataset,
                     "split": run.spec.dataset.split, "model": details["model"]["label"],
                     "created_at": run.plan.created_at, "run_id": run.run_id}
        if details["model"]["backend"] == "openai":
            from chatspace.kinds.embed.openai_backend import OpenAIParts as Backend
        else:
            from chatspace.kinds.embed.st_backend import STParts as Backend
        return Backend(run, source, sample, constants, timer)(parts)

    def write_options(self, output: str) -> dict[str, Any]:
        return WRITE_OPTIONS

    def task_stats(self, run: Run, task: int, parts: list[dict[str, Any]]) -> dict[str, Any]:
        skipped = [s for p in parts for s in p["skipped_rows"]]
        shard = run.output_paths(task)["shard"]
        norms = pq.read_table(shard, columns=["norm"]).column("norm")
        bounds = pc.min_max(norms).as_py() if len(norms) else {"min": None, "max": None}
        stats: dict[str, Any] = {
            "embedding_dim": next(p["embedding_dim"] for p in parts),
            "min_norm": bounds["min"], "max_norm": bounds["max"],
            "skipped": dict(Counter(s["reason"] for s in skipped)), "skipped_rows": skipped,
        }
        for key in SUMMED_STATS:
            if key in parts[0]:
                stats[key] = sum(p[key] for p in parts)
        return stats

    def check_task(self, run: Run, task: int, record: Completion) -> TaskCheck:
        path = run.output_paths(task)["shard"]
        schema = pq.read_schema(path)
        dim = schema.field("embedding").type.list_size
        if not schema.equals(shard_schema(dim), check_metadata=False):
            return TaskCheck([f"shard {path} schema differs from the shard schema: {schema}"],
                             pa.array([], pa.string()))
        table = pq.read_table(path, columns=["id", "metadata", "embedding", "run_id"])
        problems = []
        stats = record.details
        if dim != stats["embedding_dim"]:
            problems.append(f"shard {path} has dimension {dim}, its record says "
                            f"{stats['embedding_dim']}")
        if table.num_rows != record.rows:
            problems.append(f"shard {path} has {table.num_rows} rows but its completion "
                            f"record says {record.rows}")
        start, stop = run.task_bounds(task)
        rows = [json.loads(m)["row"] for m in table.column("metadata").to_pylist()]
        covered = np.sort(np.array(rows + [s["row"] for s in stats["skipped_rows"]], np.int64))
        if not np.array_equal(covered, run.arrays["sample"][start:stop]):
            problems.append(f"shard {path} rows do not cover its slice [{start}, {stop}) "
                            "of the plan")
        values = pc.list_flatten(table.column("embedding"))
        if len(values) and not pc.all(pc.is_finite(values)).as_py():
            problems.append(f"shard {path} has non-finite embedding values")
        if len(set(table.column("run_id").to_pylist())) > 1 or (
                table.num_rows and table.column("run_id")[0].as_py() != run.run_id):
            problems.append(f"shard {path} holds rows of another run")
        return TaskCheck(problems, table.column("id").combine_chunks())

    def summarize(self, run: Run, records: list[Completion]) -> Summary:
        details, spec = run.plan.details, run.spec
        stats = [r.details for r in records]
        dims = {s["embedding_dim"] for s in stats}
        if len(dims) > 1:
            raise RunFailed(f"reduce of run {run.run_id} failed: shards disagree on the "
                            f"embedding dimension: {sorted(dims)}")
        reasons: dict[str, int] = {}
        timings: dict[str, dict[str, float]] = {}
        for record in records:
            for reason, count in record.details["skipped"].items():
                reasons[reason] = reasons.get(reason, 0) + count
            add_timings(timings, record.timings)
        totals: dict[str, Any] = {"bytes": sum(r.outputs[0].bytes for r in records)}
        for key in SUMMED_STATS:
            if stats and key in stats[0]:
                totals[key] = sum(s[key] for s in stats)
        totals["stage_timings"] = timings
        return Summary({
            "dataset": spec.dataset.name,
            "subset": spec.dataset.subset,
            "split": spec.dataset.split,
            "source": details["source"]["origin"],
            "model": details["model"]["label"],
            "backend": details["model"]["backend"],
            "embedding_dim": dims.pop() if dims else None,
            "rows_total": sum(r.rows for r in records),
            "rows_skipped": {"total": sum(reasons.values()), "reasons": reasons},
            "sampling": {k: v for k, v in details["sampling"].items() if v is not None},
            "shards": [{"path": r.outputs[0].path, "bytes": r.outputs[0].bytes,
                        "sha256": r.outputs[0].sha256, "task": r.task, "rows": r.rows,
                        "min_norm": r.details["min_norm"], "max_norm": r.details["max_norm"],
                        "timings": r.timings} for r in records],
        }, totals=totals)

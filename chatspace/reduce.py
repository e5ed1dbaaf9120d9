"""Reduce and verify: check every task's shard against the plan, write the checksummed
manifest, and re-check a finished run against it.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from chatspace.errors import RunFailed
from chatspace.metrics import add_timings
from chatspace.runrecord import Run, read_json, sha256_file, write_json
from chatspace.writer import shard_schema

log = logging.getLogger(__name__)

SECRET_KEY = re.compile(r"(^|_)(key|token|secret|password|credentials?)$", re.IGNORECASE)


def redact(value: Any) -> Any:
    """A copy of a config tree with secret-looking keys' values replaced."""
    if isinstance(value, dict):
        return {k: "<redacted>" if SECRET_KEY.search(k) and v is not None else redact(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _check_shard(run: Run, task: int,
                 record: dict[str, Any]) -> tuple[list[str], pa.Array, int]:
    """Problems with one shard (empty if none), its ids and its embedding dimension."""
    start, stop = run.task_bounds(task)
    schema = pq.read_schema(run.shard_path(task))
    dim = schema.field("embedding").type.list_size
    if not schema.equals(shard_schema(dim), check_metadata=False):
        return [f"schema differs from the shard schema: {schema}"], pa.array([], pa.string()), dim
    table = pq.read_table(run.shard_path(task), columns=["id", "metadata", "embedding",
                                                          "run_id"])
    problems = []
    if table.num_rows != record["rows"]:
        problems.append(f"{table.num_rows} rows but its completion record says {record['rows']}")
    rows = [json.loads(m)["row"] for m in table.column("metadata").to_pylist()]
    covered = np.sort(np.array(rows + [s["row"] for s in record["skipped_rows"]], np.int64))
    if not np.array_equal(covered, run.sample[start:stop]):
        problems.append(f"rows do not cover its slice [{start}, {stop}) of the plan")
    values = pc.list_flatten(table.column("embedding"))
    if len(values) and not pc.all(pc.is_finite(values)).as_py():
        problems.append("has non-finite embedding values")
    if len(set(table.column("run_id").to_pylist())) > 1 or (
            table.num_rows and table.column("run_id")[0].as_py() != run.run_id):
        problems.append("holds rows of another run")
    return problems, table.column("id").combine_chunks(), dim


def task_problem(run: Run, task: int) -> str:
    """Why a task has no valid output, with where to look."""
    logs = run.task_logs(task)
    where = f" (log: {logs[-1]})" if logs else ""
    if not run.completion_path(task).exists():
        return f"task {task}: missing, no completion record{where}"
    return f"task {task}: shard {run.shard_path(task)} is missing or does not match its " \
           f"completion record{where}"


def reduce_run(run: Run) -> dict[str, Any]:
    """Validate every shard and write manifest.json; RunFailed names each bad task."""
    started = datetime.now(UTC)
    problems: list[str] = []
    records, id_chunks, dims = [], [], set()
    for task in range(run.num_tasks):
        record = run.completion(task)
        if record is None:
            problems.append(task_problem(run, task))
            continue
        shard_problems, ids, dim = _check_shard(run, task, record)
        problems.extend(f"task {task}: shard {run.shard_path(task)} {p}" for p in shard_problems)
        dims.add(dim)
        records.append(record)
        id_chunks.append(ids)
    if len(dims) > 1:
        problems.append(f"shards disagree on the embedding dimension: {sorted(dims)}")
    if id_chunks:
        all_ids = pa.chunked_array(id_chunks, pa.string())
        if pc.count_distinct(all_ids).as_py() != len(all_ids):
            problems.append("ids are not unique across shards")
    if problems:
        raise RunFailed(f"reduce of run {run.run_id} failed:\n  " + "\n  ".join(problems))

    manifest = build_manifest(run, records, dims.pop() if dims else None, started)
    write_json(run.manifest_path, manifest)
    log.info("manifest written: %s", run.manifest_path)
    return manifest


def build_manifest(run: Run, records: list[dict[str, Any]], dim: int | None,
                   started: datetime) -> dict[str, Any]:
    plan, spec = run.plan, run.spec
    reasons: dict[str, int] = {}
    timings: dict[str, dict[str, float]] = {}
    for record in records:
        for reason, count in record["skipped"].items():
            reasons[reason] = reasons.get(reason, 0) + count
        add_timings(timings, record["timings"])
    sampling = {k: v for k, v in plan["sampling"].items() if v is not None}
    return {
        "run_id": run.run_id,
        "dataset": spec.dataset.name,
        "subset": spec.dataset.subset,
        "split": spec.dataset.split,
        "source": run.source.origin,
        "model": plan["model"]["label"],
        "embedding_dim": dim,
        "rows_total": sum(r["rows"] for r in records),
        "rows_skipped": {"total": sum(reasons.values()), "reasons": reasons},
        "sampling": sampling,
        "shards": [
            {"path": r["path"], "task": r["task"], "rows": r["rows"], "bytes": r["bytes"],
             "sha256": r["sha256"], "min_norm": r["min_norm"], "max_norm": r["max_norm"],
             "timings": r["timings"]}
            for r in records
        ],
        "totals": {"bytes": sum(r["bytes"] for r in records),
                   "tokens": sum(r["tokens"] for r in records),
                   "padded_tokens": sum(r["padded_tokens"] for r in records),
                   "stage_timings": timings,
                   "reduce_seconds": round((datetime.now(UTC) - started).total_seconds(), 3)},
        "created_at": plan["created_at"],
        "tool": plan["tool"],
        "run_config": redact(plan["spec"]),
    }


def verify_run(run: Run) -> list[str]:
    """Re-check every shard listed in the manifest (size, sha256, rows); [] when all match."""
    if not run.manifest_path.exists():
        return [f"no manifest at {run.manifest_path}: the run has not been reduced"]
    problems = []
    manifest = read_json(run.manifest_path)
    for shard in manifest["shards"]:
        path = Path(shard["path"])
        if not path.exists():
            problems.append(f"task {shard['task']}: {path} is missing")
        elif path.stat().st_size != shard["bytes"]:
            problems.append(f"task {shard['task']}: {path} has {path.stat().st_size} bytes, "
                            f"manifest says {shard['bytes']}")
        elif sha256_file(path) != shard["sha256"]:
            problems.append(f"task {shard['task']}: {path} sha256 differs from the manifest")
        elif pq.ParquetFile(path).metadata.num_rows != shard["rows"]:
            problems.append(f"task {shard['task']}: {path} row count differs from the manifest")
    if len(manifest["shards"]) != run.num_tasks:
        problems.append(f"manifest lists {len(manifest['shards'])} shards, "
                        f"the plan has {run.num_tasks} tasks")
    return problems

"""The result rows that reports and the app plot, read from a run's done tasks."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from chatspace.results.catalog import RunFiles

# (view, column of each part: all, thinking, output) — the persona experiments' three views
METRIC_VIEWS = {
    "mean entropy": ("avg_entropy", "avg_entropy_thinking", "avg_entropy_output"),
    "top-k mass": ("avg_top_k_mass", "avg_top_k_mass_thinking", "avg_top_k_mass_output"),
    "thinking length": ("thinking_tokens",),
}
PART_NAMES = ("all", "thinking", "output")


def steer_results(files: RunFiles) -> pa.Table:
    """Every generation of the run's done tasks, with ``thinking_tokens``: the length of the
    thinking section including ``</think>`` (the whole generation when it never ended, 0
    without thinking), as the metrics split it."""
    tables = [pq.read_table(p) for p in files.files("results")]
    if not tables:
        return pa.table({"thinking_tokens": pa.array([], pa.int64())})
    table = pa.concat_tables(tables, promote_options="default")
    ended = pc.add(table["think_end_position"].cast(pa.int64()), 1)
    unended = pc.if_else(pc.is_null(table["avg_entropy_thinking"]), 0,
                         table["output_tokens"].cast(pa.int64()))
    return table.append_column("thinking_tokens", pc.coalesce(ended, unended))


def embed_norms(files: RunFiles) -> list[float]:
    return [v for p in files.files("shard") for v in
            pq.read_table(p, columns=["norm"])["norm"].to_pylist()]

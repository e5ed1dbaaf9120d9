"""The steer kind's results as reports and the viz app show them: every generation with its
thinking length, the persona experiments' three metric views (mean entropy, top-k mass,
thinking length; split at the end of the thinking section), and the report's blocks (box plots
per persona category and per steering point, each probe's mean value per response token and
steering point, example generations)."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from chatspace.results import svg
from chatspace.results.html import Block, chart, grouped, heading, note, table

if TYPE_CHECKING:
    from chatspace.runs.run_files import RunFiles

# (view, column of each part: all, thinking, output) — the persona experiments' three views
METRIC_VIEWS = {
    "mean entropy": ("avg_entropy", "avg_entropy_thinking", "avg_entropy_output"),
    "top-k mass": ("avg_top_k_mass", "avg_top_k_mass_thinking", "avg_top_k_mass_output"),
    "thinking length": ("thinking_tokens",),
}
PART_NAMES = ("all", "thinking", "output")
EXAMPLES_PER_POINT = 3
TEXT_LIMIT = 400


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


def _examples(tables: dict[str, list[dict]]) -> Block:
    examples = []
    for rid, rows in tables.items():
        shown: dict[str, int] = defaultdict(int)
        for row in rows:
            if shown[row["point"]] < EXAMPLES_PER_POINT:
                shown[row["point"]] += 1
                examples.append([rid, row["point"], row["persona"], row["prompt"],
                                 row["output_text"][:TEXT_LIMIT], row["avg_entropy"]])
    return (table(["run", "point", "persona", "prompt", "output", "mean entropy"], examples)
            if examples else note("no generations yet"))


def steer_blocks(runs: list[RunFiles]) -> list[Block]:
    tables = {f.run.run_id: steer_results(f).to_pylist() for f in runs}
    blocks = []
    for key, title in (("category", "per persona category"), ("point", "per steering point")):
        blocks.append(heading(title.capitalize()))
        groups = sorted({str(r[key]) for rows in tables.values() for r in rows})
        for view, columns in METRIC_VIEWS.items():
            if len(runs) == 1:
                rows = next(iter(tables.values()))
                series = {(PART_NAMES[i] if len(columns) > 1 else view):
                          grouped(rows, key, c) for i, c in enumerate(columns)}
            else:  # overlay: one box per run, over all tokens
                series = {rid: grouped(rows, key, columns[0]) for rid, rows in tables.items()}
            blocks.append(chart(svg.box_plot(f"{view} {title}", groups, series, view),
                                f"no generations to show {view} {title}"))
    return [*blocks, *_probe_blocks(runs), heading("Example generations"), _examples(tables)]


def _probe_blocks(runs: list[RunFiles]) -> list[Block]:
    """Per probe and layer, a line per steering point (per run and point when several runs):
    the mean value at each response token over the point's generations."""
    sums: dict[tuple[str, int], dict[str, dict[int, list[float]]]] = {}
    for files in runs:
        prefix = f"{files.run.run_id} " if len(runs) > 1 else ""
        results = {r["id"]: r["prompt_tokens"] for p in files.files("results")
                   for r in pq.read_table(p, columns=["id", "prompt_tokens"]).to_pylist()}
        for path in files.files("probes"):
            for row in pq.read_table(path, columns=["id", "point", "probe", "layer",
                                                    "values"]).to_pylist():
                lines = sums.setdefault((row["probe"], row["layer"]), {})
                line = lines.setdefault(prefix + row["point"], {})
                for token, value in enumerate(row["values"][results[row["id"]]:]):
                    line.setdefault(token, []).append(value)
    if not sums:
        return []
    blocks = [heading("Probes per response token")]
    for (probe, layer), lines in sorted(sums.items()):
        series = {name: [(t, sum(v) / len(v)) for t, v in sorted(line.items())]
                  for name, line in sorted(lines.items())}
        blocks.append(chart(svg.line_chart(f"probe {probe} at layer {layer}", series,
                                           "response token", "mean value", whole_x=True),
                            f"no response tokens for probe {probe} at layer {layer}"))
    return blocks

"""The embed kind's blocks of `chatspace report`: throughput (rows/s per task over time, or per
task across runs), stage busy/idle seconds per task, embedding norms, skipped rows by reason,
tokens and padding (and cost) per task."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import TYPE_CHECKING

import pyarrow.parquet as pq

from chatspace.results import svg
from chatspace.results.html import Block, chart, heading

if TYPE_CHECKING:
    from chatspace.runs.run_files import RunFiles


def _rate_points(files: RunFiles, task: int, origin: datetime) -> list[tuple[float, float]]:
    """(seconds since the run started, rows/s) for each committed part of a done task."""
    record = files.records[task]
    starts = sorted(datetime.fromisoformat(a.started_at) for a in files.attempts[task])
    parts = sorted((datetime.fromisoformat(p.committed_at), p.rows_in)
                   for p in record.parts if p.committed_at)
    if not parts:  # records written before per-part times: the task's average at its end
        _, end = files.task_span(task)
        wall = record.timings["wall"]["seconds"]
        return [((end - origin).total_seconds(), record.rows / wall)] if end and wall else []
    points, previous = [], None
    for when, rows in parts:
        begun = [s for s in starts if s <= when]
        since = max([t for t in (previous, begun[-1] if begun else None) if t] or [when])
        if when > since:
            points.append(((when - origin).total_seconds(), rows / (when - since).total_seconds()))
        previous = when
    return points


def _origin(files: RunFiles) -> datetime | None:
    starts = [s for t in files.records if (s := files.task_span(t)[0])]
    return min(starts) if starts else None


def _norms(files: RunFiles) -> list[float]:
    return [v for p in files.files("shard") for v in
            pq.read_table(p, columns=["norm"])["norm"].to_pylist()]


def _throughput(runs: list[RunFiles]) -> Block:
    if len(runs) == 1:
        files = runs[0]
        origin = _origin(files)
        series = {f"task {t}": _rate_points(files, t, origin) for t in sorted(files.records)
                  } if origin else {}
        return chart(svg.line_chart("rows/s per task over time", series,
                                    "seconds since the run's first task started", "rows/s"),
                     "no task has finished")
    rates = {f.run.run_id: [(t, r.rows / r.timings["wall"]["seconds"])
                            for t, r in f.records.items() if r.timings["wall"]["seconds"]]
             for f in runs}
    return chart(svg.line_chart("rows/s per task", rates, "task", "rows/s", whole_x=True),
                 "no task has finished")


def _stages(files: RunFiles) -> list[Block]:
    tasks = sorted(files.records)
    stages = sorted({s for r in files.records.values() for s in r.timings} - {"wall"})
    blocks = []
    for measure in ("busy", "idle"):
        series = {s: [files.records[t].timings.get(s, {}).get(measure, 0.0) for t in tasks]
                  for s in stages}
        blocks.append(chart(svg.bar_chart(
            f"stage {measure} seconds per task · {files.run.run_id}",
            [f"task {t}" for t in tasks], series, "seconds", stacked=True),
            "no task has finished"))
    return blocks


def _skipped(runs: list[RunFiles]) -> Block:
    reasons: dict[str, dict[str, int]] = {}
    for files in runs:
        for record in files.records.values():
            for reason, count in record.details.get("skipped", {}).items():
                by_run = reasons.setdefault(reason, defaultdict(int))
                by_run[files.run.run_id] += count
    return chart(svg.bar_chart(
        "skipped rows by reason", sorted(reasons),
        {f.run.run_id: [reasons[r].get(f.run.run_id, 0) for r in sorted(reasons)]
         for f in runs}, "rows"), "no rows were skipped")


def _tokens(files: RunFiles) -> list[Block]:
    tasks = sorted(files.records)
    tokens = [files.records[t].details.get("tokens") or 0 for t in tasks]
    padding = [max((files.records[t].details.get("padded_tokens") or 0) - n, 0)
               for t, n in zip(tasks, tokens, strict=True)]
    series = {"tokens": tokens, "padding": padding} if any(padding) else {"tokens": tokens}
    blocks = [chart(svg.bar_chart(f"tokens and padding per task · {files.run.run_id}",
                                  [f"task {t}" for t in tasks], series, "tokens",
                                  stacked=True), "no task has finished")]
    cost = [files.records[t].details.get("cost_usd") for t in tasks]
    if any(c is not None for c in cost):
        blocks.append(svg.bar_chart(f"cost per task (USD) · {files.run.run_id}",
                                    [f"task {t}" for t in tasks],
                                    {"cost_usd": [c or 0.0 for c in cost]}, "USD") or "")
    return blocks


def embed_blocks(runs: list[RunFiles]) -> list[Block]:
    blocks = [heading("Throughput"), _throughput(runs), heading("Stages")]
    for files in runs:
        blocks += _stages(files)
    blocks += [heading("Vectors"),
               chart(svg.histogram("embedding norms", {f.run.run_id: _norms(f) for f in runs},
                                   "L2 norm"), "no shard written yet"),
               heading("Skipped rows"), _skipped(runs), heading("Tokens")]
    for files in runs:
        blocks += _tokens(files)
    return blocks

"""`chatspace report`: one self-contained HTML file of a run's plots (inline SVG, inline CSS,
no script, nothing fetched), or several runs overlaid."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

from chatspace.results import svg
from chatspace.results.catalog import RunFiles
from chatspace.results.tables import METRIC_VIEWS, PART_NAMES, embed_norms, steer_results
from chatspace.runs.record import atomic_path

STYLE = """body{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top}.warn{background:#fff4e5;border:1px solid #f0b37e;
padding:8px}.note{color:#666}svg.chart{margin:6px 12px 6px 0}svg text{font-size:11px}
svg .title{font-size:13px;font-weight:600;text-anchor:middle}svg .grid{stroke:#eee}
svg .axis{stroke:#888}pre{white-space:pre-wrap;margin:0;max-width:520px}"""
EXAMPLES_PER_POINT = 3
TEXT_LIMIT = 400

Block = str  # an HTML fragment


def _table(header: list[str], rows: list[list[Any]]) -> Block:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            value = f"{value:.4g}"
        return escape("" if value is None else str(value))
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _chart(chart: str | None, empty: str) -> Block:
    return chart if chart is not None else f'<p class="note">{escape(empty)}</p>'


def _summary(runs: list[RunFiles]) -> Block:
    fields = ("state", "kind", "model", "dataset", "tasks_done", "tasks", "rows_done", "rows",
              "wall_seconds", "rows_per_s", "tokens", "cost_usd")
    rows = [f.run_row() for f in runs]
    out = _table(["", *(r["run_id"] for r in rows)],
                 [[k, *(r[k] for r in rows)] for k in fields if any(r[k] is not None
                                                                   for r in rows)])
    for files in runs:
        if files.missing_tasks:
            out += (f'<p class="warn">Run {escape(files.run.run_id)}: tasks not done: '
                    f"{', '.join(map(str, files.missing_tasks))}. This report shows the "
                    f"{len(files.records)} of {files.run.num_tasks} tasks that are done.</p>")
    return out


def _rate_points(files: RunFiles, task: int, origin: datetime) -> list[tuple[float, float]]:
    """(seconds since the run started, rows/s) for each committed part of a done task."""
    record = files.records[task]
    starts = sorted(datetime.fromisoformat(a["started_at"]) for a in files.attempts[task])
    parts = sorted((datetime.fromisoformat(p["committed_at"]), p["rows_in"])
                   for p in record.get("parts", []) if p.get("committed_at"))
    if not parts:  # records written before per-part times: the task's average at its end
        _, end = files.task_span(task)
        wall = record["timings"]["wall"]["seconds"]
        return [((end - origin).total_seconds(), record["rows"] / wall)] if end and wall else []
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


def embed_blocks(runs: list[RunFiles]) -> list[Block]:
    one = len(runs) == 1
    blocks = ["<h2>Throughput</h2>"]
    if one:
        files = runs[0]
        origin = _origin(files)
        series = {f"task {t}": _rate_points(files, t, origin) for t in sorted(files.records)
                  } if origin else {}
        blocks.append(_chart(svg.line_chart("rows/s per task over time", series,
                                            "seconds since the run's first task started",
                                            "rows/s"), "no task has finished"))
    else:
        rates = {f.run.run_id: [(t, r["rows"] / r["timings"]["wall"]["seconds"])
                                for t, r in f.records.items() if r["timings"]["wall"]["seconds"]]
                 for f in runs}
        blocks.append(_chart(svg.line_chart("rows/s per task", rates, "task", "rows/s",
                                            whole_x=True),
                             "no task has finished"))
    blocks.append("<h2>Stages</h2>")
    for files in runs:
        tasks = sorted(files.records)
        stages = sorted({s for r in files.records.values() for s in r["timings"]} - {"wall"})
        for kind in ("busy", "idle"):
            series = {s: [files.records[t]["timings"].get(s, {}).get(kind, 0.0) for t in tasks]
                      for s in stages}
            blocks.append(_chart(svg.bar_chart(
                f"stage {kind} seconds per task · {files.run.run_id}",
                [f"task {t}" for t in tasks], series, "seconds", stacked=True),
                "no task has finished"))
    blocks.append("<h2>Vectors</h2>")
    blocks.append(_chart(svg.histogram("embedding norms", {f.run.run_id: embed_norms(f)
                                                           for f in runs}, "L2 norm"),
                         "no shard written yet"))
    blocks.append("<h2>Skipped rows</h2>")
    reasons: dict[str, dict[str, int]] = {}
    for files in runs:
        for record in files.records.values():
            for reason, count in record.get("skipped", {}).items():
                by_run = reasons.setdefault(reason, defaultdict(int))
                by_run[files.run.run_id] += count
    blocks.append(_chart(svg.bar_chart(
        "skipped rows by reason", sorted(reasons),
        {f.run.run_id: [reasons[r].get(f.run.run_id, 0) for r in sorted(reasons)]
         for f in runs}, "rows"), "no rows were skipped"))
    blocks.append("<h2>Tokens</h2>")
    for files in runs:
        tasks = sorted(files.records)
        tokens = [files.records[t].get("tokens") or 0 for t in tasks]
        padding = [max((files.records[t].get("padded_tokens") or 0) - n, 0)
                   for t, n in zip(tasks, tokens, strict=True)]
        series = {"tokens": tokens, "padding": padding} if any(padding) else {"tokens": tokens}
        blocks.append(_chart(svg.bar_chart(f"tokens and padding per task · {files.run.run_id}",
                                           [f"task {t}" for t in tasks], series, "tokens",
                                           stacked=True), "no task has finished"))
        cost = [files.records[t].get("cost_usd") for t in tasks]
        if any(c is not None for c in cost):
            blocks.append(svg.bar_chart(f"cost per task (USD) · {files.run.run_id}",
                                        [f"task {t}" for t in tasks],
                                        {"cost_usd": [c or 0.0 for c in cost]}, "USD") or "")
    return blocks


def _grouped(rows: list[dict[str, Any]], key: str, column: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        if row[column] is not None:
            out[str(row[key])].append(float(row[column]))
    return out


def steer_blocks(runs: list[RunFiles]) -> list[Block]:
    tables = {f.run.run_id: steer_results(f).to_pylist() for f in runs}
    blocks = []
    for key, heading in (("category", "per persona category"), ("point", "per steering point")):
        blocks.append(f"<h2>{escape(heading.capitalize())}</h2>")
        groups = sorted({str(r[key]) for rows in tables.values() for r in rows})
        for view, columns in METRIC_VIEWS.items():
            if len(runs) == 1:
                rows = next(iter(tables.values()))
                series = {(PART_NAMES[i] if len(columns) > 1 else view):
                          _grouped(rows, key, c) for i, c in enumerate(columns)}
            else:  # overlay: one box per run, over all tokens
                series = {rid: _grouped(rows, key, columns[0]) for rid, rows in tables.items()}
            blocks.append(_chart(svg.box_plot(f"{view} {heading}", groups, series, view),
                                 f"no generations to show {view} {heading}"))
    blocks.append("<h2>Example generations</h2>")
    examples = []
    for rid, rows in tables.items():
        shown: dict[str, int] = defaultdict(int)
        for row in rows:
            if shown[row["point"]] < EXAMPLES_PER_POINT:
                shown[row["point"]] += 1
                examples.append([rid, row["point"], row["persona"], row["prompt"],
                                 row["output_text"][:TEXT_LIMIT], row["avg_entropy"]])
    blocks.append(_table(["run", "point", "persona", "prompt", "output", "mean entropy"],
                         examples) if examples else '<p class="note">no generations yet</p>')
    return blocks


def vectors_blocks(runs: list[RunFiles]) -> list[Block]:
    """Per layer: the groups on the first two principal components, and every generation's
    projection on each contrast (or PC) per group."""
    import pyarrow.parquet as pq

    blocks: list[Block] = []
    for files in runs:
        vectors_path = files.reduce_file("vectors.parquet")
        if vectors_path is None:
            blocks.append('<p class="note">run not reduced yet: no vectors to show</p>')
            continue
        vectors = pq.read_table(vectors_path).to_pylist()
        projections = pq.read_table(files.reduce_file("projections.parquet"),
                                    columns=["group", "key", "projection"]).to_pylist()
        blocks.append(_table(["key", "kind", "layer", "groups", "norm", "explained variance"],
                             [[v["key"], v["kind"], v["layer"], ", ".join(v["groups"]),
                               v["norm"], v["explained_variance"]] for v in vectors]))
        for layer in sorted({v["layer"] for v in vectors}):
            pcs = {v["key"].split("/")[0]: dict(v["coordinates"]) for v in vectors
                   if v["layer"] == layer and v["kind"] == "pc"}
            blocks.append(f"<h2>Layer {layer}</h2>")
            if "pc1" in pcs:
                blocks.append(_chart(svg.scatter(
                    f"groups on PC1/PC2 · layer {layer}",
                    {g: (x, pcs.get("pc2", {}).get(g, 0.0)) for g, x in pcs["pc1"].items()},
                    "PC1", "PC2"), "no principal components"))
            shown = [v["key"] for v in vectors if v["layer"] == layer
                     and v["kind"] in ("contrast", "pc")][:4]
            for key in shown:
                by_group = _grouped([p for p in projections if p["key"] == key], "group",
                                    "projection")
                blocks.append(_chart(svg.box_plot(f"projection on {key}", sorted(by_group),
                                                  {"projection": by_group}, "projection"),
                                     f"no projections on {key}"))
    return blocks


BLOCKS = {"embed": embed_blocks, "steer": steer_blocks, "vectors": vectors_blocks}


def render(runs: list[RunFiles]) -> str:
    kind = runs[0].run.plan["kind"]
    title = (f"chatspace {kind} run {runs[0].run.run_id}" if len(runs) == 1 else
             f"chatspace {kind} runs {', '.join(f.run.run_id for f in runs)}")
    blocks = BLOCKS[kind](runs)
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{escape(title)}</h1>{_summary(runs)}{''.join(blocks)}</body></html>\n")


def write_report(runs: list[RunFiles], path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(render(runs))

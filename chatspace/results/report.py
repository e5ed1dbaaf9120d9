"""`chatspace report`: one self-contained HTML file of a run's plots (inline SVG, inline CSS,
no script, nothing fetched), or several runs of one kind overlaid: a summary table, then the
blocks the runs' kind draws (`Kind.report_blocks`)."""

from __future__ import annotations

from html import escape
from pathlib import Path

from chatspace.results.catalog import run_row
from chatspace.results.html import Block, table
from chatspace.runs.files import atomic_path
from chatspace.runs.run_files import RunFiles

STYLE = """body{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top}.warn{background:#fff4e5;border:1px solid #f0b37e;
padding:8px}.note{color:#666}svg.chart{margin:6px 12px 6px 0}svg text{font-size:11px}
svg .title{font-size:13px;font-weight:600;text-anchor:middle}svg .grid{stroke:#eee}
svg .axis{stroke:#888}pre{white-space:pre-wrap;margin:0;max-width:520px}"""
def _summary(runs: list[RunFiles]) -> Block:
    fields = ("state", "kind", "model", "dataset", "tasks_done", "tasks", "rows_done", "rows",
              "wall_seconds", "rows_per_s", "tokens", "cost_usd")
    rows = [run_row(f) for f in runs]
    out = table(["", *(r["run_id"] for r in rows)],
                [[k, *(r[k] for r in rows)] for k in fields if any(r[k] is not None
                                                                  for r in rows)])
    for files in runs:
        if files.missing_tasks:
            out += (f'<p class="warn">Run {escape(files.run.run_id)}: tasks not done: '
                    f"{', '.join(map(str, files.missing_tasks))}. This report shows the "
                    f"{len(files.records)} of {files.run.num_tasks} tasks that are done.</p>")
    return out


def render(runs: list[RunFiles]) -> str:
    kind = runs[0].run.plan.kind  # the CLI reports runs of one kind at a time
    title = (f"chatspace {kind} run {runs[0].run.run_id}" if len(runs) == 1 else
             f"chatspace {kind} runs {', '.join(f.run.run_id for f in runs)}")
    blocks = runs[0].run.kind.report_blocks(runs)
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{escape(title)}</h1>{_summary(runs)}{''.join(blocks)}</body></html>\n")


def write_report(runs: list[RunFiles], path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(render(runs))

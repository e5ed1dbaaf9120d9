"""Looking at results: `query` (DuckDB over the root), `report` (one HTML file), `viz`
(the Streamlit app)."""

from __future__ import annotations

import csv
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from chatspace.cli.options import resolve_root, root_option
from chatspace.errors import BadInput
from chatspace.text import printable

CELL_WIDTH = 60


def _cell(value: Any, limit: int | None, clean: bool = True) -> str:
    """A value as one cell of text; `clean`: control characters neutralised (a cell from the
    data must not drive the terminal)."""
    if value is None:
        return ""
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, datetime):
        text = value.isoformat(timespec="seconds")
    else:
        text = str(value)
    text = (printable(text) if clean else text).replace("\n", " ")
    return text if limit is None or len(text) <= limit else text[:limit - 1] + "…"


def _print_table(columns: list[str], rows: list[tuple]) -> None:
    cells = [[_cell(v, CELL_WIDTH) for v in row] for row in rows]
    numeric = [all(isinstance(r[i], int | float) or r[i] is None for r in rows) and rows
               for i in range(len(columns))]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()
    click.echo(line(columns))
    click.echo(line(["-" * w for w in widths]))
    for row in cells:
        click.echo(line(row))
    click.echo(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")


def _print_result(columns: list[str], rows: list[tuple], fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps([dict(zip(columns, r, strict=True)) for r in rows], indent=2,
                              default=str))
    elif fmt == "csv":
        # CSV to a file keeps the data as it is; to a terminal, its control characters go
        clean = sys.stdout.isatty()
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow([_cell(c, None, clean) for c in columns])
        writer.writerows([[_cell(v, None, clean) for v in r] for r in rows])
    elif columns:
        _print_table([_cell(c, None) for c in columns], rows)


@click.command()
@click.argument("sql", required=False)
@click.option("--list", "list_runs", is_flag=True, help="One line per run.")
@click.option("--summary", is_flag=True, help="Runs, rows, time and cost per kind/model/dataset.")
@click.option("--compare", nargs=2, metavar="RUN RUN", default=None,
              help="Config differences and headline metrics of two runs, side by side.")
@click.option("--best", metavar="METRIC", default=None,
              help="Rank runs by a run metric (rows_per_s, cost_usd, …) or steering points by "
                   "the mean of a steer metric (avg_entropy, avg_top_k_mass, …).")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True,
              help="How many --best entries.")
@click.option("--lowest", is_flag=True, help="--best: lowest first (default: highest).")
@click.option("--run", "run_ref", metavar="RUN", default=None,
              help="Restrict every view to this run.")
@click.option("--experiments", "on_experiments", is_flag=True,
              help="--list, --summary, --best and --compare ID ID over the experiments that "
                   "scripts logged with chatspace.experiments.save_experiment.")
@click.option("--csv", "fmt", flag_value="csv", help="Print CSV.")
@click.option("--json", "fmt", flag_value="json", help="Print a JSON list of rows.")
@root_option
def query(sql: str | None, list_runs: bool, summary: bool, compare: tuple[str, str] | None,
          best: str | None, top: int, lowest: bool, run_ref: str | None, on_experiments: bool,
          fmt: str | None, root: str | None) -> None:
    """Ask DuckDB about the runs under the root, reading their files in place.

    \b
    Views:
      runs           one row per run: run_id, kind, name, model, dataset, state
                     (done | unreduced | incomplete), tasks, rows, created_at,
                     wall_seconds, rows_per_s, tokens, cost_usd, config (JSON)
      tasks          one row per task: state, rows, attempts, host, timings,
                     stage_busy / stage_idle (maps: stage_busy['encode'])
      embeddings     every embed shard (id, text, embedding, norm, …, run_id)
      steer_results  every steer results file (point, scale, persona, category,
                     output_text, avg_entropy…, run_id)
      steer_probes   every steer run's probes: one row per generation, probe and
                     layer (prompt_mean, response_mean, thinking_mean,
                     output_mean, last, values: per token)
      judgments      every judge run's judgments (id, steer_run_id, score, label,
                     verdict, raw_reply, tokens, cost_usd, run_id)
      judged         steer_results joined with each generation's latest judgment
                     (score, label, verdict, judge_model, judge_run_id)
      experiments    every save_experiment call: experiment_id, name, created_at,
                     config (JSON), metrics (map: metrics['loss']), tags, notes, git_sha
    \b
    chatspace query "SELECT model, count(*) FROM embeddings GROUP BY model"
    chatspace query --list · --summary · --compare RUN RUN · --best rows_per_s
    chatspace query --experiments --best loss --lowest
    """
    from chatspace.kinds import KINDS
    from chatspace.results import query as q
    from chatspace.results.catalog import Catalog

    modes = [m for m, on in (("SQL", sql), ("--list", list_runs), ("--summary", summary),
                             ("--compare", compare), ("--best", best)) if on]
    if len(modes) > 1:
        raise BadInput(f"give one of SQL, --list, --summary, --compare, --best (got "
                       f"{' and '.join(modes)})")
    if not modes:
        raise BadInput("nothing to ask: give SQL, --list, --summary, --compare RUN RUN or "
                       "--best METRIC (see --help)")
    root_path = resolve_root(root)
    if on_experiments:
        _query_experiments(root_path, sql, list_runs, summary, compare, best, top, lowest,
                           fmt)
        return
    only = list(compare) if compare else [run_ref] if run_ref else None
    catalog = Catalog(root_path, KINDS, only)
    if not catalog.runs:
        click.echo(f"no runs under {root_path} (nothing planned there yet)", err=True)
    if compare:
        result = q.compare(q.connect(catalog, {"runs", *q.metric_views(KINDS)}), KINDS,
                           [f.run.run_id for f in catalog.runs])
    elif best:
        result = q.best(q.connect(catalog, {"runs", *q.metric_views(KINDS)}), KINDS, best, top,
                        lowest)
    else:
        statement = q.LIST_SQL if list_runs else q.SUMMARY_SQL if summary else sql
        result = q.run_sql(q.connect(catalog, q.views_in(statement, KINDS)), statement)
    _print_result(result.columns, result.rows, fmt or "table")


def _query_experiments(root: Path, sql: str | None, list_them: bool, summary: bool,
                       compare: tuple[str, str] | None, best: str | None, top: int,
                       lowest: bool, fmt: str | None) -> None:
    from chatspace.kinds import KINDS
    from chatspace.results import query as q
    from chatspace.results.catalog import Catalog

    if sql:
        raise BadInput("--experiments applies to --list, --summary, --best and --compare; "
                       "plain SQL sees the experiments view anyway")
    con = q.connect(Catalog(root, KINDS, []), {"experiments"})
    if compare:
        result = q.compare_experiments(con, list(compare))
    elif best:
        result = q.best_experiment(con, best, top, lowest)
    else:
        statement = q.EXPERIMENTS_LIST_SQL if list_them else q.EXPERIMENTS_SUMMARY_SQL
        result = q.run_sql(con, statement)
        if not result.rows:
            click.echo(f"no experiments under {root}/experiments (nothing logged yet)",
                       err=True)
    _print_result(result.columns, result.rows, fmt or "table")


@click.command()
@click.argument("run_ref", metavar="RUN")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="The HTML file to write (default: report.html in the run's directory).")
@click.option("--compare", "others", multiple=True, metavar="RUN",
              help="Overlay another run (repeat for more).")
@root_option
def report(run_ref: str, output: str | None, others: tuple[str, ...], root: str | None) -> None:
    """Write one self-contained HTML file of RUN's plots (no network, no server).

    Embed runs: rows/s per task over time, stage busy/idle, norms, skipped rows, tokens and
    padding, cost. Steer runs: entropy, top-k mass and thinking length per category and per
    steering point, each probe's mean value per response token and point, with example
    generations. A run with tasks not done is reported with
    what it has, naming the missing tasks.
    """
    from chatspace.kinds import KINDS
    from chatspace.results.catalog import Catalog
    from chatspace.results.report import write_report

    catalog = Catalog(resolve_root(root), KINDS, [run_ref, *others])
    kinds = {f.run.plan.kind for f in catalog.runs}
    if len(kinds) > 1:
        raise BadInput(f"--compare: runs of different kinds ({', '.join(sorted(kinds))}) "
                       "cannot be overlaid")
    path = Path(output) if output else catalog.runs[0].run.dir / "report.html"
    write_report(catalog.runs, path)
    for files in catalog.runs:
        if files.missing_tasks:
            click.echo(f"run {files.run.run_id}: tasks not done: "
                       f"{', '.join(map(str, files.missing_tasks))}", err=True)
    click.echo(str(path))


@click.command()
@click.option("--port", type=int, default=8501, show_default=True)
@root_option
def viz(port: int, root: str | None) -> None:
    """The interactive app of the persona experiments (Streamlit; `pip install
    'chatspace[viz]'`): run selector, category filter, the three metric tabs, raw data."""
    try:
        import streamlit  # noqa: F401
    except ImportError:
        raise BadInput("chatspace viz needs the viz extra: pip install 'chatspace[viz]'") \
            from None
    app = Path(__file__).resolve().parent.parent / "kinds" / "steer" / "viz_app.py"
    env = {**os.environ, "CHATSPACE_ROOT": str(resolve_root(root))}
    # exec, not a child process: a signal to this command reaches the server itself
    os.execve(sys.executable, [sys.executable, "-m", "streamlit", "run", str(app),
                               "--server.port", str(port), "--server.headless", "true"], env)


COMMANDS = [query, report, viz]

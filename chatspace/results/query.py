"""DuckDB over the files under a root, with no copy of the data.

Views: ``runs`` and ``tasks`` (from the run records, see `catalog`), the views each kind
declares over its Parquet files (`Kind.task_views`: every done task's file of an output,
e.g. ``embeddings``, ``steer_results``; `Kind.reduce_views`: a file its reduce wrote, e.g.
``vectors``), and ``experiments`` (what scripts logged with
`chatspace.experiments.save_experiment`); all but the first two read the Parquet files in
place. A kind may also declare views over other views (`Kind.derived_views`: ``judged``, the
steer results with their latest judgments). The canned questions of `chatspace query` are
SQL over them.
"""

from __future__ import annotations

import glob
import json
import re
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from chatspace.errors import BadInput
from chatspace.experiments import SCHEMA as EXPERIMENTS_SCHEMA
from chatspace.experiments import experiment_files
from chatspace.results.catalog import Catalog
from chatspace.runs.kind import Kinds
from chatspace.runs.run_files import RunFiles

_STAGES = pa.map_(pa.string(), pa.float64())
RUNS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("kind", pa.string()), ("name", pa.string()),
    ("model", pa.string()), ("backend", pa.string()), ("dataset", pa.string()),
    ("state", pa.string()), ("tasks", pa.int64()), ("tasks_done", pa.int64()),
    ("rows", pa.int64()), ("rows_done", pa.int64()),
    ("created_at", pa.timestamp("us", "UTC")), ("started_at", pa.timestamp("us", "UTC")),
    ("ended_at", pa.timestamp("us", "UTC")), ("wall_seconds", pa.float64()),
    ("rows_per_s", pa.float64()), ("tokens", pa.int64()), ("cost_usd", pa.float64()),
    ("output_dir", pa.string()), ("manifest", pa.string()), ("config", pa.string()),
])
TASKS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("kind", pa.string()), ("task", pa.int64()),
    ("state", pa.string()), ("rows", pa.int64()), ("rows_in", pa.int64()),
    ("attempts", pa.int64()), ("host", pa.string()),
    ("started_at", pa.timestamp("us", "UTC")), ("ended_at", pa.timestamp("us", "UTC")),
    ("wall_seconds", pa.float64()), ("rows_per_s", pa.float64()),
    ("stage_busy", _STAGES), ("stage_idle", _STAGES), ("stats", pa.string()),
])

LIST_SQL = """SELECT run_id, kind, name, model, dataset, state,
    tasks_done || '/' || tasks AS tasks, rows_done AS rows, round(wall_seconds, 1) AS wall_s,
    round(rows_per_s, 1) AS rows_per_s, created_at FROM runs ORDER BY created_at, run_id"""
SUMMARY_SQL = """SELECT kind, model, dataset, count(*) AS runs,
    count(*) FILTER (WHERE state = 'done') AS done, sum(rows_done) AS rows,
    round(sum(wall_seconds), 1) AS wall_s,
    round(sum(rows_done) / nullif(sum(wall_seconds), 0), 1) AS rows_per_s,
    sum(tokens) AS tokens, round(sum(cost_usd), 4) AS cost_usd
    FROM runs GROUP BY ALL ORDER BY ALL"""
RUN_METRICS = ("rows_done", "wall_seconds", "rows_per_s", "tokens", "cost_usd", "tasks")
EXPERIMENTS_LIST_SQL = """SELECT experiment_id, name, created_at, tags, metrics, notes
    FROM experiments ORDER BY created_at, experiment_id"""
EXPERIMENTS_SUMMARY_SQL = """SELECT name, count(*) AS experiments, min(created_at) AS first,
    max(created_at) AS last, list_sort(list_distinct(flatten(list(map_keys(metrics)))))
    AS metrics FROM experiments GROUP BY name ORDER BY name"""


def _sql_list(paths: list[str]) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


GLOB_CHARACTERS = re.compile(r"[*?\[\]{}']")


def _parquet_source(files: RunFiles, output: str) -> str | None:
    """The done tasks' files of `output` for read_parquet: as the glob of the run's output
    pattern when that names exactly those files (DuckDB expands a glob faster than it
    parses a long list), else as the list."""
    paths = sorted(files.files(output))
    if not paths:
        return None
    template = files.run.plan.outputs[output]  # e.g. "shard-{task:05d}.parquet"
    pattern = str(files.run.output_dir / re.sub(r"\{task[^}]*\}", "*", template))
    if not GLOB_CHARACTERS.search(str(files.run.output_dir)) and \
            sorted(glob.glob(pattern)) == paths:
        return f"'{pattern}'"
    return _sql_list(paths)


def view_names(kinds: Kinds) -> list[str]:
    """Every view: the run and task tables, each kind's, and the experiments."""
    views = [v for kind in kinds.values()
             for v in (*kind.task_views, *kind.reduce_views, *kind.derived_views)]
    return ["runs", "tasks", *views, "experiments"]


def metric_views(kinds: Kinds) -> set[str]:
    """The views that `best` and `compare` read per-generation metrics from."""
    return {kind.metrics.view for kind in kinds.values() if kind.metrics}


def views_in(sql: str, kinds: Kinds) -> set[str]:
    """The views a statement names (a name inside a string literal only costs a view)."""
    return {v for v in view_names(kinds) if re.search(rf"\b{v}\b", sql, re.IGNORECASE)}


def connect(catalog: Catalog, views: set[str] | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with views over `catalog`'s runs (of the catalog's kinds): all of
    them, or just `views` (a root's records are read only for the views a question needs)."""
    wanted = set(view_names(catalog.kinds)) if views is None else set(views)
    derived = {v: d for kind in catalog.kinds.values() for v, d in kind.derived_views.items()
               if v in wanted}
    wanted |= {base for reads, _ in derived.values() for base in reads}
    empty: set[str] = set()  # views with no file to read (no run of their kind yet)
    con = duckdb.connect()
    if "runs" in wanted:
        con.register("runs", pa.Table.from_pylist(catalog.run_rows(), RUNS_SCHEMA))
    if "tasks" in wanted:
        con.register("tasks", pa.Table.from_pylist(catalog.task_rows(), TASKS_SCHEMA))
    for kind_name, kind in catalog.kinds.items():
        for view, output in kind.task_views.items():
            if view in wanted:
                # one scan per run (its files share a schema), joined by column name
                scans = [f"SELECT * FROM read_parquet({source})" for f in catalog.of_kind(kind_name)
                         if (source := _parquet_source(f, output))]
                empty |= set() if scans else {view}
                con.execute(f"CREATE VIEW {view} AS " + (" UNION ALL BY NAME ".join(scans)
                            or "SELECT NULL::VARCHAR AS run_id LIMIT 0"))
        for view, name in kind.reduce_views.items():
            if view in wanted:
                paths = [str(path) for f in catalog.of_kind(kind_name)
                         if (path := f.reduce_file(name)) is not None]
                con.execute(f"CREATE VIEW {view} AS " + (
                    f"SELECT * FROM read_parquet({_sql_list(paths)}, union_by_name = true)"
                    if paths else "SELECT NULL::VARCHAR AS key LIMIT 0"))
    for view, (reads, select) in derived.items():
        con.execute(f"CREATE VIEW {view} AS " + ("SELECT NULL::VARCHAR AS run_id LIMIT 0"
                                                 if empty & set(reads) else select))
    if "experiments" in wanted:
        files = [str(f) for f in experiment_files(catalog.root)]
        if files:
            con.execute("CREATE VIEW experiments AS SELECT * FROM "
                        f"read_parquet({_sql_list(files)}, union_by_name = true)")
        else:
            con.register("experiments", EXPERIMENTS_SCHEMA.empty_table())
    return con


@dataclass(frozen=True)
class Result:
    """A query's answer: column names and rows."""

    columns: list[str]
    rows: list[tuple[Any, ...]]

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def run_sql(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> Result:
    """Run one statement; DuckDB's error becomes bad input naming the problem on one line."""
    try:
        relation = con.sql(sql, params=params)
        # through Arrow: DuckDB's own conversion of time zones needs pytz
        table = relation.to_arrow_table() if relation is not None else None
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInput(f"query failed: {first}") from None
    if table is None:
        return Result([], [])
    return Result(table.column_names, [tuple(r.values()) for r in table.to_pylist()])


def best(con: duckdb.DuckDBPyConnection, kinds: Kinds, metric: str, top: int,
         lowest: bool) -> Result:
    """Runs ranked by a run metric, or what one of `kinds`' metrics are averaged over (a steer
    run's points: run, point, scale) ranked by the mean of a per-generation metric."""
    order = "ASC" if lowest else "DESC"
    if metric in RUN_METRICS:
        return run_sql(con, f"""SELECT run_id, kind, name, model, {metric} FROM runs
            WHERE {metric} IS NOT NULL ORDER BY {metric} {order}, run_id LIMIT ?""", [top])
    for kind in kinds.values():
        if kind.metrics and metric in kind.metrics.columns:
            keys = ", ".join(("run_id", *kind.metrics.keys))
            return run_sql(con, f"""SELECT {keys}, count(*) AS generations,
                avg({metric}) AS {metric} FROM {kind.metrics.view} GROUP BY ALL
                HAVING avg({metric}) IS NOT NULL ORDER BY {metric} {order}, {keys} LIMIT ?""",
                           [top])
    raise BadInput(f"--best {metric}: not a metric; choose one of runs' "
                   f"{', '.join(RUN_METRICS)}" + "".join(
                       f" or {kind.metrics.view}' {', '.join(kind.metrics.columns)}"
                       for kind in kinds.values() if kind.metrics))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): json.dumps(tree) if isinstance(tree, list) else tree}


def _config_differences(configs: dict[str, str]) -> list[tuple[Any, ...]]:
    """``config.KEY`` rows, one per flattened key whose value differs between the configs
    (JSON strings, by id), with each one's value."""
    flat = {i: _flatten(json.loads(c)) for i, c in configs.items()}
    return [(f"config.{k}", *(values.get(k) for values in flat.values()))
            for k in sorted(set().union(*flat.values()))
            if len({json.dumps(values.get(k)) for values in flat.values()}) > 1]


def compare(con: duckdb.DuckDBPyConnection, kinds: Kinds, run_ids: list[str]) -> Result:
    """Config keys whose values differ between the runs, then headline metrics, side by side."""
    runs = {r["run_id"]: r for r in run_sql(con, "SELECT * FROM runs").records()}
    rows = _config_differences({rid: runs[rid]["config"] for rid in run_ids})
    rows += [(field, *(runs[rid][field] for rid in run_ids))
             for field in ("kind", "model", "dataset", "state", *RUN_METRICS)]
    for kind in dict.fromkeys(runs[rid]["kind"] for rid in run_ids):
        metrics = kinds[kind].metrics
        if metrics is None:
            continue
        means = run_sql(con, f"""SELECT run_id, {', '.join(f'avg({m}) AS {m}'
                                                           for m in metrics.columns)}
            FROM {metrics.view} GROUP BY run_id""").records()
        by_run = {m["run_id"]: m for m in means}
        rows += [(f"mean {m}", *(by_run.get(rid, {}).get(m) for rid in run_ids))
                 for m in metrics.columns if by_run]
    return Result(["field", *run_ids], rows)


def best_experiment(con: duckdb.DuckDBPyConnection, metric: str, top: int,
                    lowest: bool) -> Result:
    """Experiments ranked by one of their metrics."""
    known = {k for (keys,) in con.sql("SELECT DISTINCT map_keys(metrics) FROM "
                                      "experiments").fetchall() for k in keys}
    if metric not in known:
        raise BadInput(f"--best {metric}: no experiment logged that metric (logged: "
                       f"{', '.join(sorted(known)) or 'none'})")
    return run_sql(con, f"""SELECT experiment_id, name, created_at, metrics[?] AS "{metric}"
        FROM experiments WHERE metrics[?] IS NOT NULL
        ORDER BY 4 {'ASC' if lowest else 'DESC'}, experiment_id LIMIT ?""",
                   [metric, metric, top])


def compare_experiments(con: duckdb.DuckDBPyConnection, ids: list[str]) -> Result:
    """Config keys whose values differ between two experiments, then every metric."""
    rows = run_sql(con, "SELECT * FROM experiments WHERE experiment_id IN (?, ?)",
                   ids).records()
    found = {r["experiment_id"]: r for r in rows}
    missing = [i for i in ids if i not in found]
    if missing:
        raise BadInput(f"--compare: no experiment {missing[0]!r} under this root")
    metrics = {i: dict(found[i]["metrics"]) for i in ids}
    out = _config_differences({i: found[i]["config"] for i in ids})
    out += [(field, *(found[i][field] for i in ids)) for field in ("name", "git_sha")]
    out += [(f"metric {m}", *(metrics[i].get(m) for i in ids))
            for m in sorted(set().union(*metrics.values()))]
    return Result(["field", *ids], out)

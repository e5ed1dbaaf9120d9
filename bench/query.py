"""`chatspace query` against DuckDB reading the same Parquet files directly, measured in the
same run on a root with one planned embed run of ≥ 1M rows in ≥ 100 shards.

    python -m bench.query [--rows 1000000] [--tasks 100] [--dim 384] [--repeat 5]

The shards have the real shard schema (real passages, random unit vectors) and completion
records as tasks write them. Each chatspace timing is a whole `chatspace query` answer: scan
the root's run records, create the views, run the SQL, fetch the result. Each direct timing
is a fresh DuckDB connection running the same SQL over ``read_parquet('…/*.parquet')``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np

from bench.common import plan_embed, timed, write_corpus
from bench.smoke import parse_args
from chatspace.kinds import KINDS
from chatspace.kinds.embed.schema import WRITE_OPTIONS, build_table
from chatspace.results.catalog import Catalog
from chatspace.results.query import connect, run_sql, views_in
from chatspace.runs.files import write_parquet
from chatspace.runs.formats import Completion
from chatspace.runs.record import Run, write_record

QUERIES = {
    "count": "SELECT count(*) FROM {src}",
    "group by run": "SELECT run_id, model, count(*), avg(norm) FROM {src} GROUP BY ALL",
    "group by length": "SELECT length(text) // 100 AS len, count(*) FROM {src} "
                       "GROUP BY len ORDER BY len",
}


def fill_run(run: Run, texts: list[str], dim: int) -> None:
    """Write every task's shard and completion record (random unit vectors, real texts)."""
    rng = np.random.default_rng(0)
    constants = {"source": "local", "dataset": "corpus", "split": None, "model": "bench",
                 "created_at": datetime.now(UTC).isoformat(), "run_id": run.run_id}
    for task in range(run.num_tasks):
        start, stop = run.task_bounds(task)
        vectors = rng.standard_normal((stop - start, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        table = build_table(ids=[f"p{i}" for i in range(start, stop)],
                            texts=texts[start:stop], metadata=[{}] * (stop - start),
                            embeddings=vectors, constants=constants)
        path = run.output_paths(task)["shard"]
        write_parquet(path, [table], table.schema, WRITE_OPTIONS)
        write_record(run.completion_path(task), Completion(
            task=task, rows=table.num_rows, rows_in=table.num_rows,
            outputs=(run.entry(path, name="shard", rows=table.num_rows),),
            timings={"wall": {"seconds": 1.0}}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeat", type=int, default=5)
    args = parse_args(parser, rows=2000, tasks=4, dim=8, repeat=1)

    work = Path(tempfile.mkdtemp(prefix="bench-query-"))
    texts = write_corpus(work / "corpus.parquet", args.rows, max_words=40)
    root = work / "ws"
    run = plan_embed({"dataset": {"name": str(work / "corpus.parquet"), "text_field": "text",
                                  "id_field": "id"},
                      "sampling": {"n": args.rows, "seed": 0},
                      "run": {"array": args.tasks}}, root)
    build_seconds, _ = timed(lambda: fill_run(run, texts, args.dim))
    files = sorted(run.output_dir.glob("shard-*.parquet"))
    size = sum(p.stat().st_size for p in files) / 1e9
    print(f"{args.rows} rows in {len(files)} shards ({size:.2f} GB, dim {args.dim}) "
          f"written in {build_seconds:.0f} s under {root}")
    direct_src = f"read_parquet('{run.output_dir}/shard-*.parquet')"

    def ours(sql: str) -> object:
        statement = sql.format(src="embeddings")
        return run_sql(connect(Catalog(root, KINDS), views_in(statement, KINDS)), statement).rows

    def direct(sql: str) -> object:
        return duckdb.connect().sql(sql.format(src=direct_src)).fetchall()

    worst = 0.0
    for name, sql in QUERIES.items():
        ours(sql), direct(sql)  # warm the page cache for both
        times = {"chatspace": [], "duckdb": []}
        for _ in range(args.repeat):
            for side, fn in (("chatspace", ours), ("duckdb", direct)):
                seconds, _ = timed(lambda fn=fn, sql=sql: fn(sql))
                times[side].append(seconds)
        assert sorted(map(tuple, ours(sql))) == sorted(map(tuple, direct(sql))), name
        a, b = statistics.median(times["chatspace"]), statistics.median(times["duckdb"])
        worst = max(worst, a / b)
        print(f"{name:16s} chatspace query {a * 1000:8.1f} ms   duckdb direct {b * 1000:8.1f} ms"
              f"   ratio {a / b:.2f}x")
    print(f"worst ratio {worst:.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    main()

"""Shared benchmark set-up: a real-text Parquet dataset and timing helpers."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.corpus import passages  # noqa: E402
from chatspace.kinds import KINDS  # noqa: E402
from chatspace.kinds.embed.spec import EmbedSpec  # noqa: E402
from chatspace.runs.plan import plan_run  # noqa: E402
from chatspace.runs.record import Run  # noqa: E402
from chatspace.specs import resolve_spec  # noqa: E402


def plan_embed(overrides: dict, root: Path) -> Run:
    """Plan an embed run from spec overrides (as the CLI flags give them)."""
    spec = resolve_spec(EmbedSpec, None, overrides)
    return plan_run(KINDS["embed"], spec, root).run


def write_many_rows(path: Path, rows: int) -> None:
    """A Parquet dataset of `rows` short texts, written a million rows at a time (what plans
    on a large dataset read is its metadata)."""
    with pq.ParquetWriter(path, pa.schema([("text", pa.string())])) as writer:
        for start in range(0, rows, 1_000_000):
            count = min(1_000_000, rows - start)
            writer.write_table(pa.table({"text": pa.array(["a passage"] * count)}))


def write_corpus(path: Path, rows: int, max_words: int | None = None) -> list[str]:
    """At least `rows` real passages (repeated with new ids if the corpus is smaller)."""
    base = passages()
    texts = []
    while len(texts) < rows:
        texts.extend(p["text"] for p in base)
    texts = texts[:rows]
    if max_words:
        texts = [" ".join(t.split()[:max_words]) for t in texts]
    table = pa.table({"id": [f"p{i}" for i in range(rows)], "text": texts})
    pq.write_table(table, path, row_group_size=5000)
    return texts


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out

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

"""The embedding shard format (README "Outputs"), the same for every backend.

Repeated string columns are dictionary-encoded, the float vectors byte-stream-split and zstd
compressed: the smallest and fastest layout measured for MiniLM-sized vectors.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa

DICTIONARY_COLUMNS = ["source", "dataset", "split", "model", "run_id"]
WRITE_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "use_dictionary": DICTIONARY_COLUMNS,
    "use_byte_stream_split": ["embedding.list.element"],
}


def shard_schema(dim: int) -> pa.Schema:
    return pa.schema([
        ("id", pa.string()),
        ("source", pa.string()),
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("text", pa.string()),
        ("metadata", pa.string()),
        ("embedding", pa.list_(pa.float32(), dim)),
        ("norm", pa.float32()),
        ("model", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("run_id", pa.string()),
    ])


def build_table(
    *,
    ids: list[str],
    texts: list[str],
    metadata: list[dict[str, Any]],
    embeddings: np.ndarray,
    constants: dict[str, Any],
) -> pa.Table:
    """One part's rows. `constants` holds source, dataset, split, model, created_at (ISO
    string, UTC) and run_id, the same on every row of a run."""
    rows, dim = embeddings.shape
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    created = datetime.fromisoformat(constants["created_at"])

    def repeat(value: Any, type_: pa.DataType) -> pa.Array:
        return pa.array([value] * rows, type=type_)

    columns = {
        "id": pa.array(ids, pa.string()),
        "source": repeat(constants["source"], pa.string()),
        "dataset": repeat(constants["dataset"], pa.string()),
        "split": repeat(constants["split"], pa.string()),
        "text": pa.array(texts, pa.string()),
        "metadata": pa.array([json.dumps(m, sort_keys=True) for m in metadata], pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
        "norm": pa.array(np.linalg.norm(vectors, axis=1).astype(np.float32)),
        "model": repeat(constants["model"], pa.string()),
        "created_at": repeat(created, pa.timestamp("us", tz="UTC")),
        "run_id": repeat(constants["run_id"], pa.string()),
    }
    return pa.table(columns, schema=shard_schema(dim))

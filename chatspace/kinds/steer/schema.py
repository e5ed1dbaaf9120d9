"""The steer kind's output schemas: one results row per generation (README "Outputs") and
the capture index (row id -> safetensors file, key, layer, shape)."""

from __future__ import annotations

import pyarrow as pa

METRICS = ("avg_entropy", "avg_entropy_thinking", "avg_entropy_output", "avg_top_k_mass",
           "avg_top_k_mass_thinking", "avg_top_k_mass_output")

RESULTS_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("row", pa.int64()),
    ("point", pa.string()),
    ("op", pa.string()),
    ("layers", pa.list_(pa.int32())),
    ("scale", pa.float64()),
    ("persona", pa.string()),
    ("category", pa.string()),
    ("prompt_index", pa.int64()),
    ("rep", pa.int32()),
    ("prompt", pa.string()),
    ("system_prompt", pa.string()),
    ("output_text", pa.string()),
    ("output_token_ids", pa.list_(pa.int32())),
    ("prompt_tokens", pa.int32()),
    ("output_tokens", pa.int32()),
    ("finish_reason", pa.string()),
    ("think_end_position", pa.int32()),
    *[(name, pa.float64()) for name in METRICS],
    ("seed", pa.int64()),
    ("run_id", pa.string()),
    ("created_at", pa.string()),
])

CAPTURE_INDEX_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("file", pa.string()),
    ("key", pa.string()),
    ("layer", pa.int32()),
    ("shape", pa.list_(pa.int64())),
    ("dtype", pa.string()),
])

WRITE_OPTIONS = {"compression": "zstd", "use_dictionary": ["point", "op", "persona", "category",
                                                           "system_prompt", "finish_reason",
                                                           "run_id", "created_at"]}

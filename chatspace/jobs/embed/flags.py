"""The embed job's CLI flags: one per key of its own spec tables (the shared ``[run]`` and
``[slurm]`` flags live with the CLI)."""

from __future__ import annotations

import click

from chatspace.data.config import EXTRACT_MODES
from chatspace.jobs.embed.spec import BACKENDS, DTYPES, LONG_INPUTS
from chatspace.runs.job import Flag

EMBED_FLAGS: list[Flag] = [
    ("--dataset", "dataset", "name", {"help": "HF dataset name (local cache) or a local "
                                              "file/directory (parquet, jsonl, csv, arrow)."}),
    ("--subset", "dataset", "subset", {"help": "HF dataset configuration."}),
    ("--split", "dataset", "split", {"help": "Dataset split (required for multi-split HF "
                                             "datasets)."}),
    ("--text-field", "dataset", "text_field", {"help": "Column holding the text to embed."}),
    ("--messages-field", "dataset", "messages_field",
     {"help": "Column holding chat messages (list of {role, content})."}),
    ("--extract", "dataset", "extract", {"type": click.Choice(EXTRACT_MODES),
                                         "help": "What to embed from a messages column."}),
    ("--id-field", "dataset", "id_field", {"help": "Column with stable row ids "
                                                   "(default: {file or split}:{row})."}),
    ("--n", "sampling", "n", {"type": int, "help": "Sample exactly N rows."}),
    ("--p", "sampling", "p", {"type": float, "help": "Sample a fraction P in (0, 1]."}),
    ("--seed", "sampling", "seed", {"type": int, "help": "Sampling seed (default 0)."}),
    ("--max-rows", "sampling", "max_rows", {"type": int, "help": "Cap on sampled rows."}),
    ("--model", "model", "name",
     {"help": "sentence-transformers: a local model dir or cached hub name (default: bundled "
              "all-MiniLM-L6-v2); openai: the API model (default $OPENAI_EMBED_MODEL or "
              "text-embedding-3-small)."}),
    ("--backend", "model", "backend",
     {"type": click.Choice(BACKENDS), "help": "sentence-transformers (default; GPU or CPU) or "
                                              "openai (the embeddings API; dry run unless "
                                              "--execute)."}),
    ("--batch-size", "model", "batch_size", {"type": int, "help": "Rows per batch (64)."}),
    ("--tokens-per-batch", "model", "tokens_per_batch",
     {"type": int, "help": "Size batches by tokens instead of rows."}),
    ("--bucket-min-tokens", "model", "bucket_min_tokens", {"type": int}),
    ("--bucket-max-tokens", "model", "bucket_max_tokens", {"type": int}),
    ("--compile-model/--no-compile-model", "model", "compile",
     {"default": None, "help": "torch.compile the model (warm-up per bucket)."}),
    ("--dtype", "model", "dtype", {"type": click.Choice(DTYPES)}),
    ("--device", "model", "device", {"help": "auto, cpu, cuda or cuda:N."}),
    ("--requests-per-minute", "openai", "requests_per_minute",
     {"type": int, "help": "openai: the whole run's request rate limit (3000)."}),
    ("--tokens-per-minute", "openai", "tokens_per_minute",
     {"type": int, "help": "openai: the whole run's token rate limit (1,000,000)."}),
    ("--max-in-flight", "openai", "max_in_flight",
     {"type": int, "help": "openai: concurrent requests per task (8)."}),
    ("--dimensions", "openai", "dimensions",
     {"type": int, "help": "openai: output dimensions (text-embedding-3-* only)."}),
    ("--long-inputs", "openai", "long_inputs",
     {"type": click.Choice(LONG_INPUTS),
      "help": "openai: inputs over 8,191 tokens are truncated (default) or embedded in chunks "
              "and averaged."}),
    ("--max-inputs-per-request", "openai", "max_inputs_per_request",
     {"type": int, "help": "openai: inputs packed into one request (at most 2048)."}),
    ("--max-tokens-per-request", "openai", "max_tokens_per_request",
     {"type": int, "help": "openai: tokens packed into one request (270,000)."}),
    ("--openai-timeout", "openai", "timeout",
     {"type": float, "help": "openai: seconds per request (default $OPENAI_TIMEOUT or 60)."}),
    ("--max-attempts", "openai", "max_attempts",
     {"type": int, "help": "openai: tries per request before the task fails (8)."}),
    ("--price-per-million", "openai", "price_per_million",
     {"type": float, "help": "openai: USD per 1M tokens (default: the price table)."}),
]

"""Token-length bucketing: group texts into power-of-two length buckets and cut each bucket
into batches, so that a batch carries little padding (and, compiled, few distinct shapes)."""

from __future__ import annotations

from dataclasses import dataclass

from chatspace.kinds.embed.spec import ModelConfig


@dataclass(frozen=True)
class Batch:
    rows: list[int]  # positions in the part, shortest first
    pad_to: int  # sequence length the batch is padded to
    bucket: int  # the bucket's power-of-two length (capped at the model's max)
    rows_to: int  # rows the batch is padded to (compiled: the full batch, one shape a bucket)


def bucket_length(tokens: int, cfg: ModelConfig, max_seq_length: int) -> int:
    length = 1 << max(tokens - 1, 0).bit_length()
    length = max(length, cfg.bucket_min_tokens)
    return min(length, cfg.bucket_max_tokens, max_seq_length)


def make_batches(lengths: list[int], cfg: ModelConfig, max_seq_length: int) -> list[Batch]:
    """Batches over rows sorted by token length.

    Compiled: each batch stays within one power-of-two bucket and is padded to the bucket
    length and to a full batch of rows, so the compiled model sees one shape per bucket
    (rows longer than bucket_max_tokens share the last bucket). Uncompiled: consecutive rows
    of the sorted order, padded to the batch's longest row. A batch holds `batch_size` rows,
    or as many as fit in `tokens_per_batch` padded tokens when that is set."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[Batch] = []
    rows: list[int] = []

    def close() -> None:
        if rows:
            longest = max(lengths[rows[-1]], 1)
            bucket = bucket_length(longest, cfg, max_seq_length)
            if cfg.compile:
                pad_to = max(bucket, longest)
                full = (max(1, cfg.tokens_per_batch // pad_to) if cfg.tokens_per_batch
                        else cfg.batch_size)
                batches.append(Batch(list(rows), pad_to, bucket, max(full, len(rows))))
            else:
                batches.append(Batch(list(rows), longest, bucket, len(rows)))
            rows.clear()

    for i in order:
        if rows:
            same_bucket = (bucket_length(lengths[i], cfg, max_seq_length)
                           == bucket_length(lengths[rows[-1]], cfg, max_seq_length))
            width = (bucket_length(lengths[i], cfg, max_seq_length) if cfg.compile
                     else lengths[i])
            full = (len(rows) + 1) * max(width, 1) > cfg.tokens_per_batch \
                if cfg.tokens_per_batch else len(rows) >= cfg.batch_size
            if full or (cfg.compile and not same_bucket):
                close()
        rows.append(i)
    close()
    return batches

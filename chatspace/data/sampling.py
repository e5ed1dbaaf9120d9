"""Deterministic sampling: the sample is a function of (seed, n | p, max_rows, rows available)
only, never of the array size (the run machinery cuts it into slices afterwards). Without n or
p every row is taken, or the first `max_rows` rows (the original pipeline's `--max-rows`)."""

from __future__ import annotations

import numpy as np

from chatspace.data.config import SamplingConfig
from chatspace.errors import BadInput


def sample_size(cfg: SamplingConfig, rows_available: int) -> int:
    if rows_available == 0:
        raise BadInput("the dataset has no rows to sample")
    if cfg.n is None and cfg.p is None:
        size = rows_available
    elif cfg.n is not None:
        if cfg.n > rows_available:
            raise BadInput(f"sampling.n (--n) = {cfg.n} is larger than the "
                           f"{rows_available} rows available")
        size = cfg.n
    else:
        size = max(1, round(cfg.p * rows_available))
    return min(size, cfg.max_rows) if cfg.max_rows is not None else size


def draw_sample(cfg: SamplingConfig, rows_available: int) -> np.ndarray:
    """Sorted global row indices of the sample (int64)."""
    size = sample_size(cfg, rows_available)
    if size == rows_available or (cfg.n is None and cfg.p is None):
        return np.arange(size, dtype=np.int64)
    rng = np.random.default_rng(cfg.seed)
    return np.sort(rng.choice(rows_available, size=size, replace=False)).astype(np.int64)

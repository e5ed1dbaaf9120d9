"""Deterministic sampling and slicing.

The sample is a function of (seed, n | p, max_rows, rows available) only; the array size
decides nothing but where the sorted sample is cut into contiguous, balanced slices.
"""

from __future__ import annotations

import numpy as np

from chatspace.config import SamplingConfig
from chatspace.errors import BadInput


def sample_size(cfg: SamplingConfig, rows_available: int) -> int:
    if cfg.n is not None:
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
    if size == rows_available:
        return np.arange(rows_available, dtype=np.int64)
    rng = np.random.default_rng(cfg.seed)
    return np.sort(rng.choice(rows_available, size=size, replace=False)).astype(np.int64)


def slice_bounds(rows: int, tasks: int) -> list[tuple[int, int]]:
    """[start, stop) positions in the sample for each task; sizes differ by at most one."""
    if tasks > rows:
        raise BadInput(f"run.array (--array) = {tasks} is larger than the {rows} sampled rows")
    cuts = [(i * rows) // tasks for i in range(tasks + 1)]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def part_bounds(start: int, stop: int, part_rows: int) -> list[tuple[int, int]]:
    """Fixed parts of one slice: the unit a task commits and resumes from."""
    return [(s, min(s + part_rows, stop)) for s in range(start, stop, part_rows)]

"""Sufficient statistics of captures: per (group, layer), the number of generations and the
float64 sum of their vectors. They merge by addition (tasks and parts in any order give the
same sums up to float64 rounding), and hold groups x layers x hidden numbers, however many
generations were read (a task holds one capture file at a time besides them).

A generation's vector at a layer is its capture there: the one row that ``rows = "last"`` or
``pool = "mean"`` keeps, or the mean of the rows the capture holds.
"""

from __future__ import annotations

import json
import math
import mmap
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from chatspace.errors import RunFailed

STATS_SCHEMA = pa.schema([("group", pa.string()), ("layer", pa.int32()),
                          ("count", pa.int64()), ("sum", pa.list_(pa.float64()))])


@dataclass(frozen=True)
class Batch:
    """The vectors of the generations `start:stop` (rows of the table read) at one layer:
    float64 [stop - start, hidden]."""

    start: int
    stop: int
    layer: int
    vectors: np.ndarray


def generation_vectors(root: Path, rows: pa.Table, layers: list[int],
                       then: str | None = None) -> Iterator[Batch]:
    """Every generation's vector at every layer, one batch per capture file and layer. Each
    file is mapped and reduced in one pass (`file_vectors`) while a reader thread pulls the
    next one (at the end: `then`, the file the caller reads next) into the page cache
    (`warm`), so that the disk and the sums overlap."""
    files = rows.column("file").to_pylist()
    keys = rows.column("keys").to_pylist()
    spans = []  # (start, stop) of each run of rows in one file
    for number, name in enumerate(files):
        if spans and files[spans[-1][0]] == name:
            spans[-1] = (spans[-1][0], number + 1)
        else:
            spans.append((number, number + 1))
    if spans:  # the first file too: faulting a cold mapping in reads it at a third the speed
        warm(root / files[spans[0][0]])
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="warm") as reader:
        for i, (start, stop) in enumerate(spans):
            following = files[spans[i + 1][0]] if i + 1 < len(spans) else then
            ahead = reader.submit(warm, root / following) if following else None
            vectors = file_vectors(root / files[start])
            for index, layer in enumerate(layers):
                batch = np.stack([vectors[keys[n][index]] for n in range(start, stop)])
                yield Batch(start, stop, layer, batch.astype(np.float64))
            if ahead is not None:
                ahead.result()


CHUNK_ROWS = 2048  # bfloat16 rows to float32 in blocks that stay in cache: 4x faster than whole
DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "F64": torch.float64}


def file_vectors(path: Path) -> dict[str, np.ndarray]:
    """Every capture in a safetensors file as one float32 vector (its row, or the mean of its
    rows), by key, from one pass over a private mapping of the file: the captures of a file
    share a dtype and a width and lie back to back, so they are the row segments of one
    matrix, summed by `index_add_` (in float32, within 1e-7 relative for the rows of one
    generation; generations are summed in float64). Nothing is copied per tensor, as
    `safetensors.torch.load_file` does (tensor by tensor through `safe_open` is ~50x
    slower), and the sum runs without the GIL, beside the reader thread."""
    with open(path, "rb") as fh:
        mapping = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
    length = int.from_bytes(mapping[:8], "little")
    header, base = json.loads(mapping[8:8 + length]), 8 + length
    entries = sorted((info["data_offsets"], key, info) for key, info in header.items()
                     if key != "__metadata__")
    if not entries:
        return {}
    dtype, width = DTYPES[entries[0][2]["dtype"]], entries[0][2]["shape"][-1]
    counts = [math.prod(info["shape"][:-1]) for _, _, info in entries]
    if 0 in counts:
        raise RunFailed(f"capture file {path}: {entries[counts.index(0)][1]} holds no rows, "
                        "so it has no mean (e.g. response rows of a one-token generation)")
    if any(info["dtype"] != entries[0][2]["dtype"] or info["shape"][-1] != width
           for _, _, info in entries) or any(
            entries[i][0][0] != entries[i - 1][0][1] for i in range(1, len(entries))):
        raise RunFailed(f"capture file {path} is not laid out as steer runs write it (one "
                        "dtype and width, captures back to back)")
    first, last = entries[0][0][0], entries[-1][0][1]
    rows = torch.frombuffer(mapping, dtype=dtype, count=(last - first) // dtype.itemsize,
                            offset=base + first).view(-1, width)
    lengths = torch.tensor(counts)
    segment = torch.repeat_interleave(torch.arange(len(counts)), lengths)
    sums = torch.zeros(len(counts), width)
    for at in range(0, len(segment), CHUNK_ROWS):  # converted a cache-sized block at a time
        sums.index_add_(0, segment[at:at + CHUNK_ROWS],
                        rows[at:at + CHUNK_ROWS].to(torch.float32))
    means = (sums / lengths[:, None]).numpy()
    return {key: means[i] for i, (_, key, _) in enumerate(entries)}


def warm(path: Path) -> None:
    """Read `path` into the page cache without bringing it into the process: one `sendfile`
    to /dev/null, which holds no GIL for the whole file (8 MB reads through Python wait for
    the GIL between them, which halved their speed beside the sums); plain reads where the
    system cannot send a file to /dev/null."""
    with open(path, "rb", buffering=0) as source, open(os.devnull, "wb") as sink:
        size, offset = os.fstat(source.fileno()).st_size, 0
        try:
            while offset < size:
                sent = os.sendfile(sink.fileno(), source.fileno(), offset, size - offset)
                if not sent:
                    return
                offset += sent
        except OSError:  # e.g. macOS: sendfile needs a socket
            buffer = bytearray(8 << 20)
            while source.readinto(buffer):
                pass


def _list_column(matrix: np.ndarray) -> pa.ListArray:
    """The rows of a float64 matrix as an Arrow list column, without Python floats."""
    rows, width = matrix.shape
    offsets = pa.array(np.arange(0, (rows + 1) * width, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1)))


def accumulate(root: Path, rows: pa.Table, layers: list[int],
               then: str | None = None) -> pa.Table:
    """The statistics of `rows` (a slice of the plan's generations) as a table, sorted by
    (group, layer); `then` is the capture file read next (read ahead)."""
    names, index = np.unique(np.asarray(rows.column("group").to_pylist(), dtype=object),
                             return_inverse=True)
    position = {layer: i for i, layer in enumerate(layers)}
    sums: np.ndarray | None = None
    counts = np.zeros((len(names), len(layers)), np.int64)
    for batch in generation_vectors(root, rows, layers, then):
        if sums is None:
            sums = np.zeros((len(names), len(layers), batch.vectors.shape[1]), np.float64)
        present, inverse = np.unique(index[batch.start:batch.stop], return_inverse=True)
        members = np.zeros((len(present), len(inverse)))  # group x generation, one-hot
        members[inverse, np.arange(len(inverse))] = 1.0
        column = position[batch.layer]
        sums[present, column] += members @ batch.vectors  # np.add.at: ~10x slower
        counts[present, column] += np.bincount(inverse)
    present = np.argwhere(counts > 0)  # (group, layer) pairs, sorted: names are sorted
    return pa.table({
        "group": pa.array([str(names[g]) for g, _ in present], pa.string()),
        "layer": pa.array([layers[i] for _, i in present], pa.int32()),
        "count": pa.array(counts[present[:, 0], present[:, 1]], pa.int64()),
        "sum": (_list_column(sums[present[:, 0], present[:, 1]]) if sums is not None
                else pa.array([], pa.list_(pa.float64()))),
    }, schema=STATS_SCHEMA)


def merge(tables: list[pa.Table]) -> tuple[dict[tuple[str, int], np.ndarray],
                                           dict[tuple[str, int], int]]:
    """Totals over every part's statistics: sums and counts by (group, layer)."""
    sums: dict[tuple[str, int], np.ndarray] = {}
    counts: dict[tuple[str, int], int] = {}
    for table in tables:
        if not table.num_rows:
            continue
        values = table.column("sum").combine_chunks().flatten().to_numpy()
        values = values.reshape(table.num_rows, -1)
        for i, (group, layer, count) in enumerate(zip(
                table.column("group").to_pylist(), table.column("layer").to_pylist(),
                table.column("count").to_pylist(), strict=True)):
            key = (group, layer)
            sums[key] = sums[key] + values[i] if key in sums else values[i].copy()
            counts[key] = counts.get(key, 0) + count
    return sums, counts

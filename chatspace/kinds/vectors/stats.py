"""Sufficient statistics of captures: per (group, layer), the number of generations and the
float64 sum of their vectors. They merge by addition (tasks and parts in any order give the
same sums up to float64 rounding), and hold groups x layers x hidden numbers, however many
generations were read (a task holds a few fixed read buffers besides them).

A generation's vector at a layer is its capture there: the one row that ``rows = "last"`` or
``pool = "mean"`` keeps, or the mean of the rows the capture holds.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import queue
import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import torch

from chatspace.errors import RunFailed
from chatspace.names import check_inside, check_relative

STATS_SCHEMA = pa.schema([("group", pa.string()), ("layer", pa.int32()),
                          ("count", pa.int64()), ("sum", pa.list_(pa.float64()))])
DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "F64": torch.float64}
READ_BYTES = 16 << 20  # one read of rows; BUFFERS of them are filled ahead of the sums
BUFFERS = 3
CHUNK_ROWS = 2048  # bfloat16 rows to float32 in blocks that stay in cache: 4x faster than whole


@dataclass(frozen=True)
class Batch:
    """The vectors of the generations `start:stop` (rows of the table read) at one layer:
    float64 [stop - start, hidden]."""

    start: int
    stop: int
    layer: int
    vectors: np.ndarray


@dataclass(frozen=True)
class Layout:
    """Where a capture file's captures lie: back to back from `offset`, one dtype and width,
    `counts[i]` rows for `keys[i]` (steer runs write them so)."""

    keys: list[str]
    counts: list[int]
    dtype: torch.dtype
    width: int
    offset: int


def read_layout(fh: BinaryIO, path: Path, hidden: int) -> Layout:
    """The layout of the safetensors file open as `fh`, from its header; its rows must be
    `hidden` wide (the model's hidden size)."""
    length = int.from_bytes(fh.read(8), "little")
    try:
        if not 2 <= length <= os.fstat(fh.fileno()).st_size - 8:
            raise ValueError(f"a header of {length} bytes")
        header, base = json.loads(fh.read(length)), 8 + length
    except ValueError as exc:  # JSON's errors and undecodable bytes are ValueErrors
        raise RunFailed(f"capture file {path} is not a safetensors file ({exc})") from None
    entries = sorted((info["data_offsets"], key, info) for key, info in header.items()
                     if key != "__metadata__")
    if not entries:
        return Layout([], [], torch.float32, 0, base)
    dtype, width = entries[0][2]["dtype"], entries[0][2]["shape"][-1]
    counts = [math.prod(info["shape"][:-1]) for _, _, info in entries]
    if 0 in counts:
        raise RunFailed(f"capture file {path}: {entries[counts.index(0)][1]} holds no rows, "
                        "so it has no mean (e.g. response rows of a one-token generation)")
    if width != hidden:
        raise RunFailed(f"capture file {path} holds rows of {width} numbers; the model's "
                        f"hidden size is {hidden}")
    if any(info["dtype"] != dtype or info["shape"][-1] != width for _, _, info in entries) or any(
            entries[i][0][0] != entries[i - 1][0][1] for i in range(1, len(entries))) or (
            width * DTYPES[dtype].itemsize > READ_BYTES):
        raise RunFailed(f"capture file {path} is not laid out as steer runs write it (one "
                        "dtype and width, captures back to back, rows of at most "
                       f"{READ_BYTES} bytes)")
    return Layout([key for _, key, _ in entries], counts, DTYPES[dtype], width,
                  base + entries[0][0][0])


def read_ahead(paths: list[Path], hidden: int, filled: queue.Queue, free: queue.Queue,
               stop: threading.Event) -> None:
    """The reader thread: for each file its layout, then its rows in blocks of whole rows,
    each read into a free buffer (`readinto` holds no GIL while the disk works, and a reused
    buffer costs no page faults); an error is handed on as the item."""
    try:
        for number, path in enumerate(paths):
            if number + 1 < len(paths):
                advise_next(paths[number + 1])
            with open(path, "rb", buffering=0) as fh:
                layout = read_layout(fh, path, hidden)
                filled.put(layout)
                fh.seek(layout.offset)
                row_bytes = layout.width * layout.dtype.itemsize
                left = sum(layout.counts)
                while left:
                    buffer = next_free(free, stop)
                    if buffer is None:
                        return
                    rows = min(READ_BYTES // row_bytes, left)
                    view, got = memoryview(buffer.numpy())[:rows * row_bytes], 0
                    while got < len(view):
                        read = fh.readinto(view[got:])
                        if not read:
                            raise RunFailed(f"capture file {path} ends before its rows do")
                        got += read
                    filled.put((buffer, rows))
                    left -= rows
    except BaseException as error:  # noqa: BLE001 - the consumer raises it
        filled.put(error)


def next_free(free: queue.Queue, stop: threading.Event) -> torch.Tensor | None:
    """A buffer the sums are done with, or None once the consumer has stopped."""
    while not stop.is_set():
        with contextlib.suppress(queue.Empty):
            return free.get(timeout=0.1)
    return None


def advise_next(path: Path) -> None:
    """Ask the system to start reading `path` (the file read next) into the page cache now, so
    the disk has the next file's requests queued while this one is read. Only a hint: a file
    that cannot be opened fails where it is read."""
    if hasattr(os, "posix_fadvise"):  # not on macOS
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)


def capture_means(paths: list[Path], hidden: int) -> Iterator[dict[str, np.ndarray]]:
    """Every capture of each file in `paths` as one float32 vector (its row, or the mean of its
    rows), by key, file after file. A reader thread reads ahead (`read_ahead`) while the rows
    read are summed by capture (`index_add_`, in float32: within 1e-7 relative for the rows of
    one generation; generations are summed in float64), so the disk and the sums overlap;
    memory is BUFFERS reads, whatever the files' sizes."""
    filled: queue.Queue = queue.Queue()
    free: queue.Queue = queue.Queue()
    for _ in range(BUFFERS):
        free.put(torch.empty(READ_BYTES, dtype=torch.uint8))
    stop = threading.Event()
    reader = threading.Thread(target=read_ahead, args=(paths, hidden, filled, free, stop),
                              name="capture-reader", daemon=True)
    reader.start()
    try:
        for _ in paths:
            layout = take(filled)
            lengths = torch.tensor(layout.counts, dtype=torch.int64)
            segment = torch.repeat_interleave(torch.arange(len(layout.counts)), lengths)
            sums, at = torch.zeros(len(layout.counts), layout.width), 0
            while at < len(segment):
                buffer, count = take(filled)
                rows = buffer[:count * layout.width * layout.dtype.itemsize].view(
                    layout.dtype).view(count, layout.width)
                for first in range(0, count, CHUNK_ROWS):  # a cache-sized block at a time
                    block = rows[first:first + CHUNK_ROWS]
                    sums.index_add_(0, segment[at + first:at + first + len(block)],
                                    block.to(torch.float32))
                at += count
                free.put(buffer)
            means = (sums / lengths[:, None]).numpy()
            yield {key: means[i] for i, key in enumerate(layout.keys)}
    finally:
        stop.set()
        reader.join()


def take(filled: queue.Queue) -> Any:
    """The reader's next item; its error raised here."""
    item = filled.get()
    if isinstance(item, BaseException):
        raise item
    return item


def file_runs(files: list[str], breaks: Iterable[int] = ()) -> list[tuple[int, int]]:
    """(start, stop) of each run of rows in one capture file, also cut at the rows in
    `breaks` (a run starts there)."""
    cuts = set(breaks)
    runs: list[tuple[int, int]] = []
    for number, name in enumerate(files):
        if runs and files[runs[-1][0]] == name and number not in cuts:
            runs[-1] = (runs[-1][0], number + 1)
        else:
            runs.append((number, number + 1))
    return runs


def generation_vectors(root: Path, rows: pa.Table, layers: list[int], hidden: int,
                       breaks: Iterable[int] = ()) -> Iterator[Batch]:
    """Every generation's vector at every layer, one batch per run of rows in one capture file
    (`file_runs`, cut at `breaks`) and layer. Each file is read once (`capture_means`), however
    many batches it gives; each must lie inside the root (the table is a record on a shared
    root) and hold rows `hidden` wide."""
    files = rows.column("file").to_pylist()
    keys = rows.column("keys").to_pylist()
    spans = file_runs(files, breaks)
    opens = [not i or files[start] != files[spans[i - 1][0]]  # a span that starts a new read
             for i, (start, _) in enumerate(spans)]
    means = capture_means([check_inside(root, root / check_relative(files[start], "capture file"),
                                        "capture file")
                           for (start, _), new in zip(spans, opens, strict=True) if new], hidden)
    try:
        vectors: dict[str, np.ndarray] = {}
        for (start, stop), new in zip(spans, opens, strict=True):
            if new:
                vectors = next(means)
            for index, layer in enumerate(layers):
                batch = np.stack([vectors[keys[n][index]] for n in range(start, stop)])
                yield Batch(start, stop, layer, batch.astype(np.float64))
    finally:
        means.close()


def _list_column(matrix: np.ndarray) -> pa.ListArray:
    """The rows of a float64 matrix as an Arrow list column, without Python floats."""
    rows, width = matrix.shape
    offsets = pa.array(np.arange(0, (rows + 1) * width, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1)))


def part_statistics(root: Path, rows: pa.Table, parts: list[tuple[int, int]],
                    layers: list[int], hidden: int) -> Iterator[pa.Table]:
    """The statistics of each part (`start`, `stop`: rows of the plan's table `rows`), in
    order, from one stream of reads, so the reader runs on while a part is committed. A part
    takes exactly its own batches (one per run of rows in one file, per layer), so it is
    yielded before anything of the next part is read: a damaged file fails its own part."""
    picked = pa.concat_tables([rows.slice(start, stop - start) for start, stop in parts])
    ends = list(itertools.accumulate(stop - start for start, stop in parts))
    starts = [span[0] for span in file_runs(picked.column("file").to_pylist(), ends[:-1])]
    batches = generation_vectors(root, picked, layers, hidden, ends[:-1])
    try:
        for start, stop in zip([0, *ends[:-1]], ends, strict=True):
            runs = bisect_left(starts, stop) - bisect_left(starts, start)  # the part's spans
            groups = picked.column("group").slice(start, stop - start).to_pylist()
            yield accumulate(groups, itertools.islice(batches, runs * len(layers)), start,
                             layers)
    finally:
        batches.close()


def accumulate(groups: list[str], batches: Iterable[Batch], first: int,
               layers: list[int]) -> pa.Table:
    """The statistics of the generations of `groups` (their groups, in order; the batches'
    rows count from `first`), as a table sorted by (group, layer)."""
    names = sorted(set(groups), key=group_order)
    place = {name: i for i, name in enumerate(names)}
    index = np.array([place[g] for g in groups], np.int64)
    position = {layer: i for i, layer in enumerate(layers)}
    sums: np.ndarray | None = None
    counts = np.zeros((len(names), len(layers)), np.int64)
    for batch in batches:
        if sums is None:
            sums = np.zeros((len(names), len(layers), batch.vectors.shape[1]), np.float64)
        present, inverse = np.unique(index[batch.start - first:batch.stop - first],
                                     return_inverse=True)
        members = np.zeros((len(present), len(inverse)))  # group x generation, one-hot
        members[inverse, np.arange(len(inverse))] = 1.0
        column = position[batch.layer]
        sums[present, column] += members @ batch.vectors  # np.add.at: ~10x slower
        counts[present, column] += np.bincount(inverse)
    present = np.argwhere(counts > 0)  # (group, layer) pairs, sorted: names are sorted
    return pa.table({
        "group": pa.array([names[g] for g, _ in present], pa.string()),
        "layer": pa.array([layers[i] for _, i in present], pa.int32()),
        "count": pa.array(counts[present[:, 0], present[:, 1]], pa.int64()),
        "sum": (_list_column(sums[present[:, 0], present[:, 1]]) if sums is not None
                else pa.array([], pa.list_(pa.float64()))),
    }, schema=STATS_SCHEMA)


def group_order(group: str | None) -> tuple[bool, str]:
    """Groups in order: the missing group (null, a generation with no value) first, then by
    name. Missing is its own group, never the same as any name (not even "none")."""
    return (group is not None, group or "")


def merge(tables: list[pa.Table]) -> tuple[dict[tuple[str | None, int], np.ndarray],
                                           dict[tuple[str | None, int], int]]:
    """Totals over every part's statistics: sums and counts by (group, layer)."""
    sums: dict[tuple[str | None, int], np.ndarray] = {}
    counts: dict[tuple[str | None, int], int] = {}
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

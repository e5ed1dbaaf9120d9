"""Dataset sources: find the files behind a dataset name or path, count rows from metadata,
and read chosen rows back in a task.

Every source becomes a list of `SourceFile`s (Parquet, Arrow, JSONL or CSV). Rows are numbered
globally across the files in order; a row's stable id is ``{label}:{row}`` (the file's name, or
the split for a HF dataset) unless the dataset has an id column.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from chatspace.errors import BadInput

log = logging.getLogger(__name__)

FORMATS = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".json": "json",
           ".csv": "csv"}


@dataclass(frozen=True)
class SourceFile:
    path: str
    format: str
    rows: int
    label: str  # id prefix: file name, or the split of a HF dataset
    first_row: int  # number of this file's first row within its label


@dataclass(frozen=True)
class SourceInfo:
    origin: str  # "local" or "hf"
    dataset: str  # name used in output paths
    files: tuple[SourceFile, ...]
    columns: tuple[str, ...]

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    def to_dict(self) -> dict:
        return {"origin": self.origin, "dataset": self.dataset, "columns": list(self.columns),
                "files": [asdict(f) for f in self.files]}

    @classmethod
    def from_dict(cls, data: dict) -> SourceInfo:
        return cls(data["origin"], data["dataset"],
                   tuple(SourceFile(**f) for f in data["files"]), tuple(data["columns"]))


def read_json_lines(path: str) -> list[dict]:
    """JSON Lines parsed row by row (values keep their own types; blank lines are skipped);
    BadInput naming the file and line when a line is not a JSON object."""
    rows = []
    try:
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise BadInput(f"dataset file {path}: line {number} is not JSON "
                                   f"({exc})") from None
                if not isinstance(row, dict):
                    raise BadInput(f"dataset file {path}: line {number} is a JSON "
                                   f"{type(row).__name__}, not an object")
                rows.append(row)
    except UnicodeDecodeError as exc:
        raise BadInput(f"dataset file {path} is not UTF-8 text ({exc})") from None
    return rows


def read_file_table(path: str, fmt: str) -> pa.Table:
    if fmt == "parquet":
        return pq.read_table(path)
    if fmt == "arrow":
        source = pa.memory_map(path)
        try:
            return pa.ipc.open_file(source).read_all()
        except pa.ArrowInvalid:
            source.seek(0)
            return pa.ipc.open_stream(source).read_all()
    if fmt == "json":
        return pa.Table.from_pylist(read_json_lines(path))
    import pyarrow.csv as pacsv

    return pacsv.read_csv(path)


def _describe(path: Path, fmt: str) -> tuple[int, tuple[str, ...]]:
    """Row count and column names, from metadata where the format has it."""
    try:
        if fmt == "parquet":
            meta = pq.ParquetFile(path)
            return meta.metadata.num_rows, tuple(meta.schema_arrow.names)
        if fmt == "json":
            rows = read_json_lines(str(path))
            return len(rows), tuple(dict.fromkeys(k for row in rows[:1000] for k in row))
        table = read_file_table(str(path), fmt)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise BadInput(f"cannot read dataset file {path}: {exc}") from None
    return table.num_rows, tuple(table.column_names)


def _local_files(root: Path) -> list[Path]:
    if root.is_file():
        if root.suffix not in FORMATS:
            raise BadInput(f"dataset file {root} has an unsupported format "
                           f"(supported: {', '.join(sorted(FORMATS))})")
        return [root]
    state = root / "state.json"  # a datasets.save_to_disk() directory
    if state.exists():
        return [root / f["filename"] for f in json.loads(state.read_text())["_data_files"]]
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in FORMATS
                   and not p.name.startswith((".", "_")))
    if not files:
        raise BadInput(f"dataset directory {root} holds no {'/'.join(sorted(FORMATS))} files")
    return files


def _open_local(root: Path) -> SourceInfo:
    name = root.stem if root.is_file() else root.name
    return open_files(_local_files(root), root, "local", name)


def open_files(paths: list[Path], root: Path, origin: str, dataset: str,
               label: str | None = None) -> SourceInfo:
    """A source over `paths` (files of one dataset, in order, with the same columns); each
    file's ids are labelled by `label`, else by its path under `root`."""
    files, columns, first = [], None, 0
    for path in paths:
        fmt = FORMATS[path.suffix]
        rows, cols = _describe(path, fmt)
        if columns is None:
            columns = cols
        elif set(cols) != set(columns):
            raise BadInput(f"dataset file {path} has columns {list(cols)}, "
                           f"unlike the others' {list(columns)}")
        if label is not None:  # one label for every file: rows numbered across them
            files.append(SourceFile(str(path.resolve()), fmt, rows, label, first))
            first += rows
            continue
        own = str(path.relative_to(root).with_suffix("")) if root.is_dir() else path.stem
        files.append(SourceFile(str(path.resolve()), fmt, rows, own, 0))
    return SourceInfo(origin, dataset, tuple(files), tuple(columns or ()))


def _open_hub(name: str, subset: str | None, split: str | None) -> SourceInfo:
    """A HF hub dataset already in the local cache (never downloads: HF_HUB_OFFLINE=1)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    datasets.disable_progress_bars()
    try:
        loaded = datasets.load_dataset(name, subset, split=split)
    except Exception as exc:  # datasets raises many types for "not cached / offline"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInput(f"dataset {name!r} is neither a local path nor in the local HF cache "
                       f"(the hub is not contacted): {first}") from None
    if isinstance(loaded, datasets.DatasetDict):
        raise BadInput(f"dataset {name!r} has splits {', '.join(loaded)}: choose one with --split")
    files, row = [], 0
    for cache_file in loaded.cache_files:
        rows, _ = _describe(Path(cache_file["filename"]), "arrow")
        files.append(SourceFile(cache_file["filename"], "arrow", rows, split or "train", row))
        row += rows
    return SourceInfo("hf", hub_label(name, subset), tuple(files), tuple(loaded.column_names))


def hub_label(name: str, subset: str | None) -> str:
    """A Hub dataset's name in output paths: ``org__name[__subset]``."""
    return name.replace("/", "__") + (f"__{subset}" if subset else "")


def open_source(name: str, subset: str | None, split: str | None) -> SourceInfo:
    """Resolve a dataset name or path to its files, reading metadata only where possible."""
    path = Path(name).expanduser()
    if path.exists():
        return _open_local(path)
    if name.startswith((".", "/", "~")) or Path(name).suffix in FORMATS:
        raise BadInput(f"dataset file not found: {name}")
    return _open_hub(name, subset, split)


def check_ids(info: SourceInfo, column: str, rows: np.ndarray) -> None:
    """BadInput naming the ids when column `column` (the id field) holds nulls or duplicates
    at the sampled global `rows`: found at plan time, not by the reduce after all the work.
    Reads that one column (Parquet and Arrow by column; JSON and CSV files whole)."""
    pieces = []
    for src in info.files:
        if src.format == "parquet":
            pieces.append(pq.read_table(src.path, columns=[column]).column(column))
        elif src.format == "json":
            pieces.append(pa.array([row.get(column) for row in read_json_lines(src.path)]))
        else:
            pieces.append(read_file_table(src.path, src.format).column(column))
    values = pa.chunked_array([c for p in pieces for c in
                               (p.chunks if isinstance(p, pa.ChunkedArray) else [p])])
    taken = values.take(pa.array(rows)).to_pylist()
    nulls = [str(r) for r, v in zip(rows.tolist(), taken, strict=True) if v is None]
    if nulls:
        raise BadInput(f"dataset.id_field {column!r} is null at {len(nulls)} sampled row(s) "
                       f"(rows {_some(nulls)})")
    repeated = sorted(k for k, n in Counter(str(v) for v in taken).items() if n > 1)
    if repeated:
        raise BadInput(f"dataset.id_field {column!r} repeats {len(repeated)} id(s) among the "
                       f"sampled rows: {_some(repeated)}")


def _some(items: list[str]) -> str:
    return ", ".join(items[:3]) + (", ..." if len(items) > 3 else "")


class RowReader:
    """Reads rows by global index from a planned source; keeps the last block it read, so
    consecutive parts of one slice do not read a block twice."""

    def __init__(self, info: SourceInfo):
        self.info = info
        self.offsets = np.cumsum([0] + [f.rows for f in info.files])
        self._cached: tuple[tuple[int, int], pa.Table | list[dict]] | None = None

    def _block(self, file_no: int, group: int) -> pa.Table | list[dict]:
        key = (file_no, group)
        if self._cached is None or self._cached[0] != key:
            src = self.info.files[file_no]
            if src.format == "json":
                block: pa.Table | list[dict] = read_json_lines(src.path)
            elif src.format == "parquet":
                block = pq.ParquetFile(src.path).read_row_group(group)
            else:
                block = read_file_table(src.path, src.format)
            self._cached = (key, block)
        return self._cached[1]

    @staticmethod
    def _take(block: pa.Table | list[dict], rows: np.ndarray, columns: list[str]) -> dict:
        if isinstance(block, list):
            return {c: [block[r].get(c) for r in rows.tolist()] for c in columns}
        taken = block.select(columns).take(pa.array(rows))
        return {c: taken.column(c).to_pylist() for c in columns}

    def read(self, indices: np.ndarray, columns: list[str]) -> tuple[dict[str, list], list[str]]:
        """Values of `columns` for the rows at sorted global `indices`, and their default
        ids, in that order."""
        values: dict[str, list] = {c: [] for c in columns}
        ids: list[str] = []
        file_nos = np.searchsorted(self.offsets, indices, side="right") - 1
        for file_no in np.unique(file_nos):
            src = self.info.files[file_no]
            local = indices[file_nos == file_no] - self.offsets[file_no]
            ids.extend(f"{src.label}:{src.first_row + int(r)}" for r in local)
            if src.format == "parquet":
                meta = pq.ParquetFile(src.path).metadata
                bounds = np.cumsum([0] + [meta.row_group(g).num_rows
                                          for g in range(meta.num_row_groups)])
                groups = np.searchsorted(bounds, local, side="right") - 1
                pieces = [(int(g), local[groups == g] - bounds[g]) for g in np.unique(groups)]
            else:
                pieces = [(-1, local)]
            for group, rows in pieces:
                for column, got in self._take(self._block(int(file_no), group), rows,
                                              columns).items():
                    values[column].extend(got)
        return values, ids

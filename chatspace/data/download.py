"""`download-dataset`: copy a dataset (from the local HF cache or local files) into the
workspace as Parquet, under ``datasets/raw/{source}/{dataset}/``, with an ``_info.json`` of its
row counts and features. Nothing is fetched from the network."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from chatspace.data.config import check_split
from chatspace.data.sources import open_source, read_file_table
from chatspace.names import check_replaceable, replace_recorded
from chatspace.runs.record import check_writable, tool_info, write_json


def record_dataset(name: str, subset: str | None, split: str | None,
                   root: Path) -> dict[str, Any]:
    check_writable(root)
    check_split(subset, split)
    source = open_source(name, subset, split)
    dest = check_replaceable(root, root.joinpath("datasets", "raw", source.origin,
                                                 source.dataset, *([split] if split else [])))
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dest.parent))
    try:
        files, features = [], None
        for number, src in enumerate(source.files):
            table = read_file_table(src.path, src.format)
            features = features or {f.name: str(f.type) for f in table.schema}
            out = staging / f"part-{number:05d}.parquet"
            pq.write_table(table, out, compression="zstd")
            files.append({"path": out.name, "rows": table.num_rows, "from": src.path})
        info = {"name": name, "subset": subset, "split": split, "source": source.origin,
                "rows": sum(f["rows"] for f in files), "features": features, "files": files,
                "tool": tool_info()}
        write_json(staging / "_info.json", info)
        replace_recorded(staging, dest, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {**info, "path": str(dest)}

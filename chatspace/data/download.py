"""`download-dataset`: copy a dataset into the workspace as Parquet, under
``datasets/raw/{source}/{dataset}[/{split}]/``, with an ``_info.json`` of its row counts,
features, the sha256 of every file and, from the Hub, the revision's commit. A local path is
read as it is; a Hub name is fetched with `huggingface_hub` (`chatspace.data.hub`), unless
``HF_HUB_OFFLINE=1``, where only the local `datasets` cache is read."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from chatspace.data.config import check_split
from chatspace.data.hub import (
    check_revision,
    checked_listing,
    dataset_files,
    fetch,
    hub_offline,
)
from chatspace.data.sources import (
    SourceInfo,
    hub_label,
    open_files,
    open_source,
    read_file_table,
)
from chatspace.errors import BadInput
from chatspace.names import check_replaceable, replace_recorded, staging_dir
from chatspace.runs.files import check_writable, sha256_file, tool_info, write_json
from chatspace.runs.formats import DatasetInfo, RecordedFile

INFO = DatasetInfo.file_name()


def _source(name: str, subset: str | None, split: str | None,
            revision: str | None) -> tuple[SourceInfo, str | None, str | None]:
    """The dataset's files, its split and (from the Hub) the commit they were taken at."""
    if Path(name).expanduser().exists() or hub_offline():
        if revision is not None:
            raise BadInput("--revision needs the Hub (a local path, or HF_HUB_OFFLINE=1, has "
                           "no revisions)")
        return open_source(name, subset, split), split, None
    commit, listed = checked_listing(name, "dataset", revision)
    files, split = dataset_files(listed, name, subset, split)
    check_split(None, split)
    snapshot = fetch(name, "dataset", commit, include=files)
    label = hub_label(name, subset)
    return (open_files([snapshot.path / f for f in files], snapshot.path, "hf", label,
                       label=split), split, snapshot.commit)


def record_dataset(name: str, subset: str | None, split: str | None, root: Path,
                   revision: str | None = None) -> dict[str, Any]:
    check_writable(root)
    check_split(subset, split)
    check_revision(revision)
    source, split, commit = _source(name, subset, split, revision)
    dest = check_replaceable(root, DatasetInfo.folder_in(
        root, source=source.origin, dataset=source.dataset, split=split or ""), INFO)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(dest.parent)
    try:
        files, features = [], None
        for number, src in enumerate(source.files):
            table = read_file_table(src.path, src.format)
            features = features or {f.name: str(f.type) for f in table.schema}
            out = staging / f"part-{number:05d}.parquet"
            pq.write_table(table, out, compression="zstd")
            files.append(RecordedFile(out.name, out.stat().st_size, sha256_file(out),
                                      table.num_rows, str(src.path)))
        info = DatasetInfo(name=name, subset=subset, split=split, source=source.origin,
                           revision=revision, commit=commit, rows=sum(f.rows for f in files),
                           features=features, files=tuple(files), tool=tool_info())
        write_json(staging / INFO, info.to_dict())
        replace_recorded(staging, dest, root, INFO)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {**info.to_dict(), "path": str(dest)}

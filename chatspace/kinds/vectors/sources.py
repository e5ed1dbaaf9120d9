"""What a vectors run reads: the generations of finished steer runs that have captures, one row
each (source run, row id, group, capture file, one key per layer), checked on the login node
(no tensor is read here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from chatspace.errors import BadInput
from chatspace.kinds.steer.kind import SteerKind
from chatspace.kinds.steer.schema import RESULTS_SCHEMA
from chatspace.kinds.vectors.judged import kept_ids, small_groups
from chatspace.kinds.vectors.spec import VectorsSpec
from chatspace.kinds.vectors.stats import group_order
from chatspace.names import check_name
from chatspace.runs.record import Run, stored_path

ROWS_FILE = "rows.parquet"


@dataclass(frozen=True)
class Inputs:
    """The generations to read, and what they have in common."""

    rows: pa.Table  # source, id, row, group, file (under the root), keys (one per layer)
    layers: list[int]
    groups: list[str]
    model: dict[str, Any]
    sources: list[dict[str, Any]]
    selection: dict[str, Any]  # judged_by, where, min_count and the groups left out


def _open(ref: str, root: Path) -> Run:
    run = Run.open(ref, root, {"steer": SteerKind()})
    if "capture_index" not in run.plan.outputs:
        raise BadInput(f"source.runs: steer run {run.run_id} has no captures (its sweep "
                       "captured no layers: [capture] layers)")
    undone = [t for t in range(run.num_tasks) if run.completion(t, check_hash=False) is None]
    if undone:
        raise BadInput(f"source.runs: steer run {run.run_id} is not finished (tasks "
                       f"{', '.join(map(str, undone[:5]))} not done): resume it first")
    return run


def _generations(run: Run, by: str) -> tuple[list[dict[str, Any]], set[int]]:
    """One entry per generation of `run` that has captures, and the layers captured."""
    entries, layers = [], set()
    for task in range(run.num_tasks):
        paths = run.output_paths(task)
        results = pq.read_table(paths["results"], columns=["id", "row", by]).to_pylist()
        index = pq.read_table(paths["capture_index"], columns=["id", "file", "key", "layer"])
        keys: dict[str, dict[int, tuple[str, str]]] = {}
        for item in index.to_pylist():
            check_name(item["file"], f"steer run {run.run_id}: capture index file")
            keys.setdefault(item["id"], {})[item["layer"]] = (item["file"], item["key"])
            layers.add(item["layer"])
        folder = paths["capture_index"].parent
        for result in results:
            if result["id"] in keys:
                value = result[by]
                entries.append({"id": result["id"], "row": result["row"],
                                "group": None if value is None else str(value),
                                "folder": folder, "keys": keys[result["id"]]})
    return entries, layers


def read_inputs(spec: VectorsSpec, root: Path) -> Inputs:
    by = spec.groups.by
    if by not in RESULTS_SCHEMA.names or by in ("output_token_ids", "layers"):
        raise BadInput(f"groups.by (--group-by) {by!r} is not a results column (columns: "
                       f"{', '.join(n for n in RESULTS_SCHEMA.names if n != 'output_token_ids')})")
    runs = [_open(ref, root) for ref in spec.source.runs]
    shapes = {(r.plan.details["model"]["label"], r.plan.details["model"]["hidden_size"])
              for r in runs}
    if len(shapes) > 1:
        raise BadInput("source.runs: the runs are of different models or hidden sizes ("
                       + "; ".join(f"{m} hidden {h}" for m, h in sorted(shapes)) + ")")
    records: list[dict[str, Any]] = []
    captured: set[int] | None = None
    chosen = kept_ids(runs, spec.source.judged_by, spec.source.where, root)
    for number, run in enumerate(runs):
        entries, layers = _generations(run, by)
        captured = layers if captured is None else captured & layers
        records += [{**e, "source": number} for e in entries
                    if chosen is None or (run.run_id, e["id"]) in chosen]
    records, selection = _selected(records, spec)
    wanted_layers = spec.source.layers if spec.source.layers is not None \
        else sorted(captured or ())
    missing = sorted(set(wanted_layers) - (captured or set()))
    if missing or not wanted_layers:
        raise BadInput(f"source.layers (--layers): layer(s) {missing or wanted_layers} not "
                       f"captured in every run (captured in all: "
                       f"{sorted(captured or ()) or 'none'})")
    groups = sorted({r["group"] for r in records}, key=group_order)
    wanted = [g for pair in spec.groups.pairs() for g in pair]
    wanted += [spec.groups.baseline] if spec.groups.baseline is not None else []
    for group in wanted:
        if group not in groups:
            raise BadInput(f"groups: no group {group!r} in column {by!r} (groups: "
                           f"{', '.join(map(shown, groups))})")
    for contrast in spec.groups.contrasts:
        splits = [(contrast[:i], contrast[i + 1:]) for i, c in enumerate(contrast) if c == ":"]
        named = [f"{a!r} and {b!r}" for a, b in splits if a in groups and b in groups]
        if len(named) > 1:
            raise BadInput(f"groups.contrasts (--contrast) {contrast!r} is ambiguous: it may "
                           f"mean {' or '.join(named)}")
    if spec.groups.pca > len(groups):
        raise BadInput(f"groups.pca (--pca) {spec.groups.pca} is more than the "
                       f"{len(groups)} groups")
    rows = pa.table({
        "source": [r["source"] for r in records],
        "id": [r["id"] for r in records],
        "row": pa.array([r["row"] for r in records], pa.int64()),
        "group": [r["group"] for r in records],
        "file": [stored_path(r["folder"] / r["keys"][wanted_layers[0]][0], root)
                 for r in records],
        "keys": [[r["keys"][layer][1] for layer in wanted_layers] for r in records],
    })
    model = runs[0].plan.details["model"]
    return Inputs(rows, list(wanted_layers), groups,
                  {"label": model["label"], "hidden_size": model["hidden_size"]},
                  [{"run_id": r.run_id, "run_dir": stored_path(r.dir, root),
                    "capture": r.spec.capture.model_dump()} for r in runs], selection)


def _selected(records: list[dict[str, Any]],
              spec: VectorsSpec) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The records left once groups under --min-count are left out, and what the plan says
    of the selection."""
    small = small_groups([r["group"] for r in records], spec.source.min_count)
    records = [r for r in records if r["group"] not in small]
    if not records:
        raise BadInput("source: no generation left to read (--judged-by / --where / "
                       "--min-count leave none)")
    return records, {"judged_by": spec.source.judged_by, "where": spec.source.where,
                     "min_count": spec.source.min_count,
                     "left_out_groups": [{"group": g, "generations": n} for g, n in
                                         sorted(small.items(), key=lambda x: shown(x[0]))]}


def shown(group: str | None) -> str:
    """A group as messages and reports show it (the missing group: null)."""
    return "null" if group is None else repr(group)


def rows_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()

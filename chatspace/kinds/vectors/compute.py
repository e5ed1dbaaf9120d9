"""The vectors a run's merged statistics give, per layer: every group's mean, the contrasts
(``mean(A) - mean(B)``, named pairs or every group against a baseline), and the top principal
components of the group means (explained variance ratio and each group's coordinates). Then
the files: ``vectors.safetensors`` (by key: ``mean/{group}/L{layer}``,
``contrast/{A}-{B}/L{layer}``, ``pc{k}/L{layer}``), ``vectors.parquet`` (one row per vector)
and ``projections.parquet`` (every generation's projection on every vector of its layer).

A group's name goes into a key escaped (`key_name`), so that keys cannot collide: ``%``, ``/``,
``-`` and ``~`` are written ``%25``, ``%2F``, ``%2D``, ``%7E``, and the missing group (null) is
``~``. A key that still repeats is an error, never an overwrite."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from chatspace.errors import RunFailed
from chatspace.kinds.vector_refs import PERCENTILES_FILE, VECTORS_FILE
from chatspace.kinds.vectors.spec import GroupsConfig
from chatspace.kinds.vectors.stats import generation_vectors, group_order
from chatspace.runs.files import atomic_path, write_json, write_parquet
from chatspace.runs.formats import VECTORS_FORMAT

VECTORS_SCHEMA = pa.schema([
    ("key", pa.string()), ("kind", pa.string()), ("layer", pa.int32()),
    ("groups", pa.list_(pa.string())), ("counts", pa.list_(pa.int64())),
    ("norm", pa.float64()), ("explained_variance", pa.float64()),
    ("coordinates", pa.map_(pa.string(), pa.float64())),
])
PROJECTIONS_SCHEMA = pa.schema([
    ("source_run", pa.string()), ("id", pa.string()), ("row", pa.int64()),
    ("group", pa.string()), ("layer", pa.int32()), ("key", pa.string()),
    ("projection", pa.float64()),
])


ESCAPED = {c: f"%{ord(c):02X}" for c in "%/-~"}
MISSING = "~"


def key_name(group: str | None) -> str:
    """A group's name as it stands in a vector key (see the module's docstring)."""
    return MISSING if group is None else "".join(ESCAPED.get(c, c) for c in group)


@dataclass
class Vector:
    key: str
    kind: str  # mean | contrast | pc
    layer: int
    groups: list[str | None]
    counts: list[int]
    values: np.ndarray  # float64 [hidden]
    explained_variance: float | None = None
    coordinates: dict[str, float] = field(default_factory=dict)


def _principal(means: dict[str | None, np.ndarray], layer: int, k: int,
               counts: dict[str | None, int]) -> list[Vector]:
    """The top `k` principal components of the group means (centred on their mean), each with
    the explained variance ratio and the groups' coordinates; signs make the largest entry
    positive, so that runs agree."""
    names = sorted(means, key=group_order)
    centred = np.stack([means[g] for g in names])
    centred = centred - centred.mean(axis=0)
    _, singular, components = np.linalg.svd(centred, full_matrices=False)
    variance = singular ** 2
    out = []
    for i in range(min(k, len(singular))):
        component = components[i]
        if component[np.argmax(np.abs(component))] < 0:
            component = -component
        out.append(Vector(f"pc{i + 1}/L{layer}", "pc", layer, names,
                          [counts[g] for g in names], component,
                          float(variance[i] / variance.sum()) if variance.sum() else 0.0,
                          {key_name(g): float(c) for g, c in zip(names, centred @ component,
                                                                 strict=True)}))
    return out


def compute(sums: dict[tuple[str | None, int], np.ndarray],
            counts: dict[tuple[str | None, int], int], layers: list[int],
            cfg: GroupsConfig) -> list[Vector]:
    vectors: list[Vector] = []
    for layer in layers:
        means = {g: s / counts[(g, lay)] for (g, lay), s in sums.items() if lay == layer}
        n = {g: counts[(g, layer)] for g in means}
        groups = sorted(means, key=group_order)
        layer_vectors = [Vector(f"mean/{key_name(g)}/L{layer}", "mean", layer, [g], [n[g]],
                                means[g]) for g in groups]
        pairs = cfg.pairs() + ([(g, cfg.baseline) for g in groups if g != cfg.baseline]
                               if cfg.baseline is not None else [])
        layer_vectors += [Vector(f"contrast/{key_name(a)}-{key_name(b)}/L{layer}", "contrast",
                                 layer, [a, b], [n[a], n[b]], means[a] - means[b])
                          for a, b in dict.fromkeys(pairs)]
        if cfg.normalize:
            for vector in layer_vectors:
                vector.values = vector.values / max(np.linalg.norm(vector.values), 1e-30)
        if cfg.pca:
            layer_vectors += _principal(means, layer, cfg.pca, n)
        vectors += layer_vectors
    seen: set[str] = set()
    for vector in vectors:
        if vector.key in seen:
            raise RunFailed(f"two vectors would have the key {vector.key!r}")
        seen.add(vector.key)
    return vectors


def write_vectors(vectors: list[Vector], folder: Path) -> list[Path]:
    """vectors.safetensors and vectors.parquet, each written atomically."""
    import torch
    from safetensors.torch import save

    tensors = {v.key: torch.from_numpy(v.values.astype(np.float32)) for v in vectors}
    with atomic_path(folder / VECTORS_FILE) as tmp:
        tmp.write_bytes(save(tensors, metadata=VECTORS_FORMAT.tags()))
    table = pa.Table.from_pylist([
        {"key": v.key, "kind": v.kind, "layer": v.layer, "groups": v.groups,
         "counts": v.counts, "norm": float(np.linalg.norm(v.values)),
         "explained_variance": v.explained_variance,
         "coordinates": list(v.coordinates.items())} for v in vectors], VECTORS_SCHEMA)
    write_parquet(folder / "vectors.parquet", [table], VECTORS_SCHEMA, {"compression": "zstd"})
    return [folder / VECTORS_FILE, folder / "vectors.parquet"]


def write_projections(root: Path, rows: pa.Table, layers: list[int], hidden: int,
                      vectors: list[Vector], sources: list[str], folder: Path) -> Path:
    """Every generation's projection on the unit direction of every vector of its layer
    (written as it is read, generation by generation)."""
    units: dict[int, list[tuple[str, np.ndarray]]] = {layer: [] for layer in layers}
    for v in vectors:
        units[v.layer].append((v.key, v.values / max(np.linalg.norm(v.values), 1e-30)))
    meta = {"source_run": pa.array(sources).take(rows.column("source")),
            **{c: rows.column(c) for c in ("id", "row", "group")}}

    def pieces():
        for batch in generation_vectors(root, rows, layers, hidden):
            if not units[batch.layer]:
                continue
            keys = [key for key, _ in units[batch.layer]]
            # [generations, vectors]: row-major, a generation's projections side by side
            projections = batch.vectors @ np.stack([u for _, u in units[batch.layer]]).T
            yield pa.table({
                "n": pa.array(np.repeat(np.arange(batch.start, batch.stop), len(keys))),
                "layer": pa.array(np.full(projections.size, batch.layer, np.int32)),
                "key": pa.array(keys * (batch.stop - batch.start), pa.string()),
                "projection": pa.array(projections.reshape(-1)),
            })

    def flush(held: list[pa.Table]) -> pa.Table:
        table = pa.concat_tables(held).sort_by("n")  # stable: a generation's layers in order
        taken = table.column("n")
        return pa.table({**{name: meta[name].take(taken) for name in meta},
                         **{c: table.column(c) for c in ("layer", "key", "projection")}}
                        ).select(PROJECTIONS_SCHEMA.names).cast(PROJECTIONS_SCHEMA)

    def tables():  # row groups of whole capture files, ~100k rows or more
        held: list[pa.Table] = []
        for piece in pieces():
            starts_file = held and piece["n"][0].as_py() != held[-1]["n"][0].as_py()
            if starts_file and sum(t.num_rows for t in held) >= 100_000:
                yield flush(held)
                held = []
            held.append(piece)
        if held:
            yield flush(held)

    path = folder / "projections.parquet"
    write_parquet(path, tables(), PROJECTIONS_SCHEMA, {"compression": "zstd"})
    return path


def write_percentiles(projections: Path, cfg: GroupsConfig, folder: Path) -> Path:
    """``percentiles.json``: per vector key, the asked percentiles of every generation's
    projection on it (numpy's linear method, over all of them at once)."""
    import pyarrow.parquet as pq

    table = pq.read_table(projections, columns=["key", "projection"])
    keys = table.column("key").to_numpy(zero_copy_only=False)
    values = table.column("projection").to_numpy()
    order = np.argsort(keys, kind="stable")
    names, starts = np.unique(keys[order], return_index=True)
    recorded = {}
    for name, group in zip(names, np.split(values[order], starts[1:]), strict=True):
        found = np.percentile(group, cfg.percentiles)
        recorded[str(name)] = dict(zip(cfg.percentile_names(), map(float, found), strict=True))
    write_json(folder / PERCENTILES_FILE, recorded)
    return folder / PERCENTILES_FILE

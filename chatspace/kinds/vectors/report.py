"""The vectors kind's blocks of `chatspace report`: its vectors as a table, then per layer the
groups on the first two principal components (scatter) and every generation's projection on
each contrast (or PC) per group (box plots)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow.parquet as pq

from chatspace.results import svg
from chatspace.results.html import Block, chart, grouped, heading, note, table

if TYPE_CHECKING:
    from chatspace.runs.run_files import RunFiles

SHOWN_PER_LAYER = 4


def vectors_blocks(runs: list[RunFiles]) -> list[Block]:
    blocks: list[Block] = []
    for files in runs:
        vectors_path = files.reduce_file("vectors.parquet")
        if vectors_path is None:
            blocks.append(note("run not reduced yet: no vectors to show"))
            continue
        vectors = pq.read_table(vectors_path).to_pylist()
        projections = pq.read_table(files.reduce_file("projections.parquet"),
                                    columns=["group", "key", "projection"]).to_pylist()
        blocks.append(table(["key", "kind", "layer", "groups", "norm", "explained variance"],
                            [[v["key"], v["kind"], v["layer"],
                              ", ".join("null" if g is None else g for g in v["groups"]),
                              v["norm"], v["explained_variance"]] for v in vectors]))
        for layer in sorted({v["layer"] for v in vectors}):
            pcs = {v["key"].split("/")[0]: dict(v["coordinates"]) for v in vectors
                   if v["layer"] == layer and v["kind"] == "pc"}
            blocks.append(heading(f"Layer {layer}"))
            if "pc1" in pcs:
                blocks.append(chart(svg.scatter(
                    f"groups on PC1/PC2 · layer {layer}",
                    {g: (x, pcs.get("pc2", {}).get(g, 0.0)) for g, x in pcs["pc1"].items()},
                    "PC1", "PC2"), "no principal components"))
            shown = [v["key"] for v in vectors if v["layer"] == layer
                     and v["kind"] in ("contrast", "pc")][:SHOWN_PER_LAYER]
            for key in shown:
                by_group = grouped([p for p in projections if p["key"] == key], "group",
                                   "projection")
                blocks.append(chart(svg.box_plot(f"projection on {key}", sorted(by_group),
                                                 {"projection": by_group}, "projection"),
                                    f"no projections on {key}"))
    return blocks

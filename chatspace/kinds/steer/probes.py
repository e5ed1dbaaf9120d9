"""A sweep's probes (``[[probes]]``): resolved when the run is planned (vectors loaded from
files or vectors runs, ``{layer}`` in a key filled in per layer, checked against the model) and
saved in the run directory (``probes.safetensors``), so tasks need neither the vector files nor
their paths; then each generation's values summarised into the probes table, one row per
generation, probe and layer.

A row's per-token ``values`` are the prompt's rows, then one per generated token run through the
model (the last sampled token never is). The means are over the prompt rows, the response rows,
and the response rows split at ``</think>`` as the token metrics are (a row belongs to the token
it is the state of: thinking is up to and including the first ``</think>``); ``last`` is the
value on the last row. A part with no rows has no mean (None)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from chatspace.errors import BadInput
from chatspace.kinds.steer.metrics import mean_of
from chatspace.kinds.steer.spec import SteerSpec
from chatspace.kinds.vector_refs import vectors_file

PROBES_FILE = "probes.safetensors"
PROBES_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("row", pa.int64()),
    ("point", pa.string()),
    ("persona", pa.string()),
    ("category", pa.string()),
    ("probe", pa.string()),
    ("layer", pa.int32()),
    ("prompt_mean", pa.float64()),
    ("response_mean", pa.float64()),
    ("thinking_mean", pa.float64()),
    ("output_mean", pa.float64()),
    ("last", pa.float64()),
    ("values", pa.list_(pa.float32())),
    ("run_id", pa.string()),
    ("created_at", pa.string()),
])


def resolve_probes(spec: SteerSpec, hidden_size: int, num_layers: int, root: Path) -> list:
    """The spec's probes as `steering.probes.Probe`s (a ``{layer}`` key: one per layer, named
    ``{name}@L{layer}``); BadInput naming the entry that does not fit the model."""
    from chatspace.steering.probes import Probe, check_probes
    from chatspace.steering.spec import load_vector

    out = []
    for number, entry in enumerate(spec.probes):
        where = f"probes[{number}]"
        per_layer = bool(entry.vector_key and "{layer}" in entry.vector_key)
        for layers in [[layer] for layer in entry.layers] if per_layer else [entry.layers]:
            key = entry.vector_key.replace("{layer}", str(layers[0])) if per_layer \
                else entry.vector_key
            try:
                vector = load_vector(vectors_file(entry.vector, root), key)
                probe = Probe(f"{entry.name}@L{layers[0]}" if per_layer else entry.name,
                              vector, tuple(layers), entry.normalize)
                check_probes([probe], hidden_size, num_layers)
            except ValueError as exc:
                raise BadInput(f"{where}: {str(exc).removeprefix('probes[0]')}") from None
            out.append(probe)
    return out


def probes_bytes(probes: list) -> bytes:
    """The probes as one safetensors file (`load_probes` reads it)."""
    from safetensors.torch import save

    tensors = {f"probe.{n}": p.vector.detach().cpu().contiguous() for n, p in enumerate(probes)}
    meta = [{"name": p.name, "layers": list(p.layers), "normalize": p.normalize}
            for p in probes]
    return save(tensors, metadata={"probes": json.dumps(meta)})


def load_probes(path: Path) -> list:
    from safetensors import safe_open

    from chatspace.steering.probes import Probe

    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["probes"])
        return [Probe(m["name"], fh.get_tensor(f"probe.{n}"), tuple(m["layers"]), m["normalize"])
                for n, m in enumerate(meta)]


def probe_rows(values: dict[str, dict[int, list[float]]], prompt_len: int, split: int,
               row: dict[str, Any]) -> list[dict[str, Any]]:
    """One generation's probes table rows: `row` holds its id, row, point, persona, category,
    run id and plan time; `split` is the number of generated tokens that are thinking."""
    out = []
    for name, layers in values.items():
        for layer, series in sorted(layers.items()):
            response = series[prompt_len:]
            out.append({**row, "probe": name.split("@L")[0], "layer": layer,
                        "prompt_mean": mean_of(series[:prompt_len]),
                        "response_mean": mean_of(response),
                        "thinking_mean": mean_of(response[:split]),
                        "output_mean": mean_of(response[split:]),
                        "last": series[-1] if series else None, "values": series})
    return out

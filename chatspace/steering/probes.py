"""Probes: a direction read on every token while generating, without moving hidden states.

A `Probe` names a vector and the layers to read it at. Its value at a token is the post-layer
residual stream (after any steering at that layer) dotted with the unit vector (``normalize``,
the default: the projection) or with the vector as it is (the dot product), in float32. Both
backends compute it where the hidden state is (the vLLM worker's decoder-layer op, the HF
layer hooks) and hand back a few floats per token: `Generation.probes` maps each probe's name
and layer to the values of the rows a capture with ``rows = "all"`` would keep (the prompt's
rows, then one per generated token run through the model).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from chatspace.steering.spec import NORM_RANGE

# probe name -> layer -> value per row (prompt rows, then one per fed generated token)
ProbeValues = dict[str, dict[int, list[float]]]


@dataclass(frozen=True, eq=False)  # a tensor: compare by identity
class Probe:
    name: str
    vector: torch.Tensor
    layers: tuple[int, ...]
    normalize: bool = True

    def direction(self) -> torch.Tensor:
        """The float32 vector the hidden states are dotted with."""
        vector = self.vector.detach().to(torch.float32).cpu()
        return vector / vector.norm() if self.normalize else vector


def check_probes(probes: Sequence[Probe], hidden_size: int, num_layers: int) -> None:
    """Raise ValueError naming the first bad field (``probes[1].layers``)."""
    names: set[str] = set()
    for number, probe in enumerate(probes):
        where = f"probes[{number}]"
        if not isinstance(probe, Probe):
            raise ValueError(f"{where}: {type(probe).__name__} is not a Probe")
        if not probe.name or probe.name in names:
            raise ValueError(f"{where}.name: {probe.name!r} is empty or used twice")
        names.add(probe.name)
        vector = probe.vector
        if not isinstance(vector, torch.Tensor) or vector.ndim != 1 or \
                vector.shape[0] != hidden_size:
            raise ValueError(f"{where}.vector: must be a 1-D tensor of the model's hidden "
                             f"size {hidden_size}")
        norm = float(vector.double().norm())
        if not torch.isfinite(vector).all() or not NORM_RANGE[0] <= norm <= NORM_RANGE[1]:
            raise ValueError(f"{where}.vector: needs finite values and a norm in "
                             f"[{NORM_RANGE[0]:g}, {NORM_RANGE[1]:g}], has norm {norm:.3g}")
        if not probe.layers:
            raise ValueError(f"{where}.layers: give at least one layer")
        for layer in probe.layers:
            if not isinstance(layer, int) or not 0 <= layer < num_layers:
                raise ValueError(f"{where}.layers: layer {layer!r} out of range (the model "
                                 f"has {num_layers} decoder layers)")


def by_layer(probes: Sequence[Probe]) -> dict[int, tuple[list[str], torch.Tensor]]:
    """Per layer: the names of the probes read there and their directions as the columns of
    one float32 ``[hidden, k]`` matrix (one matrix product reads them all)."""
    out: dict[int, tuple[list[str], list[torch.Tensor]]] = {}
    for probe in probes:
        direction = probe.direction()
        for layer in sorted(set(probe.layers)):
            names, columns = out.setdefault(layer, ([], []))
            names.append(probe.name)
            columns.append(direction)
    return {layer: (names, torch.stack(columns, dim=1)) for layer, (names, columns)
            in sorted(out.items())}


def fingerprint(probes: Sequence[Probe]) -> str:
    """Equal probe sets, equal digests (a set travels to the vLLM worker once)."""
    digest = hashlib.sha256()
    for probe in probes:
        digest.update(json.dumps([probe.name, sorted(set(probe.layers)),
                                  probe.normalize]).encode())
        digest.update(probe.vector.detach().to(torch.float32).cpu().numpy().tobytes())
    return digest.hexdigest()[:32]


def to_wire(probes: Sequence[Probe]) -> list[dict]:
    return [{"name": p.name, "layers": sorted(set(p.layers)), "normalize": p.normalize,
             "vector": p.vector.detach().to(torch.float32).cpu().numpy().tobytes()}
            for p in probes]


def from_wire(wire: list[dict]) -> list[Probe]:
    return [Probe(e["name"], torch.frombuffer(bytearray(e["vector"]), dtype=torch.float32),
                  tuple(e["layers"]), e["normalize"]) for e in wire]


def read_rows(states: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``[rows, k]`` float32 values of the probes whose directions are `matrix`'s columns."""
    return states.to(torch.float32) @ matrix.to(states.device)


def values_of(layers: dict[int, torch.Tensor], probes: Sequence[Probe]) -> ProbeValues:
    """The probes' values from whole hidden states (``layer -> [rows, hidden]``)."""
    out: ProbeValues = {p.name: {} for p in probes}
    for layer, (names, matrix) in by_layer(probes).items():
        values = read_rows(layers[layer], matrix)
        for column, name in enumerate(names):
            out[name][layer] = values[:, column].tolist()
    return out

"""The original chatspace's steering spec classes, as its users build them, on chatspace's
own (`chatspace.steering.spec`): they are those classes, so `SteerModel` takes them as they are.

    SteeringSpec(layers={4: LayerSteeringSpec(operations=[AddSpec(unit, scale=8.0)])})
    LayerSteeringSpec(add=AddSpec(unit, 8.0), projection_cap=ProjectionCapSpec(d, max=2.0))

What the original did, kept: a vector that is zero, NaN or infinite is a `ValueError` when the
op is built; `ProjectionCapSpec` needs `min` or `max`; `AblationSpec`'s scale defaults to 1.0 (a
no-op: 0 removes the component); ops of a layer apply in the order given (`operations`, then
the README's `add`, `projection_cap`, `ablation` keywords, in that order); `clone`,
`is_empty`, `materialize`. `simple_steering` / `simple_projection_cap` / `simple_ablation`
build one-layer specs from a raw vector (as the model's static methods of the same names).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from chatspace.steering import spec as core


def _check_vector(vector: object, what: str) -> None:
    if not isinstance(vector, torch.Tensor):
        raise ValueError(f"{what}: vector must be a torch.Tensor, got {type(vector).__name__}")
    if not torch.isfinite(vector).all():
        raise ValueError(f"{what}: vector contains NaN or Inf values")
    if float(vector.double().norm()) == 0.0:
        raise ValueError(f"{what}: vector has zero norm (cannot be normalized)")


class _Checked:
    """What the original's ops share: the vector checked when the op is built, and `clone`."""

    vector: torch.Tensor

    def __post_init__(self) -> None:
        _check_vector(self.vector, type(self).__name__)

    def clone(self):  # the same op over a copy of its vector
        return dataclasses.replace(self, vector=self.vector.detach().clone())


@dataclass(frozen=True, eq=False)
class AddSpec(_Checked, core.AddSpec):
    """``h + scale * vector`` (the original kept a unit vector and its norm in `scale`)."""

    vector: torch.Tensor
    scale: float = 1.0

    def materialize(self) -> torch.Tensor:
        """The vector added: ``vector * scale``."""
        return (self.vector * self.scale).contiguous()


@dataclass(frozen=True, eq=False)
class ProjectionCapSpec(_Checked, core.ProjectionCapSpec):
    """Clamp the component along ``vector / |vector|`` into ``[min, max]``."""

    vector: torch.Tensor
    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        if self.min is None and self.max is None:
            raise ValueError("ProjectionCapSpec requires at least one of min or max to be set")
        super().__post_init__()


@dataclass(frozen=True, eq=False)
class AblationSpec(_Checked, core.AblationSpec):
    """Multiply the component along ``vector / |vector|`` by `scale` (1.0 keeps it)."""

    vector: torch.Tensor
    scale: float = 1.0


SteeringOp = AddSpec | ProjectionCapSpec | AblationSpec


class LayerSteeringSpec(core.LayerSteeringSpec):
    """One layer's ops, in order: `operations` (the original's field; a list, as there),
    chatspace's `ops`, and the README's `add`, `projection_cap`, `ablation` keywords."""

    def __init__(self, operations: list | None = None, *, ops: tuple = (),
                 add: core.AddSpec | None = None,
                 projection_cap: core.ProjectionCapSpec | None = None,
                 ablation: core.AblationSpec | None = None):
        named = [op for op in (add, projection_cap, ablation) if op is not None]
        object.__setattr__(self, "operations", [*(operations or ()), *ops, *named])

    @property
    def ops(self) -> tuple[core.Op, ...]:  # what chatspace reads: `operations` as they are now
        return tuple(self.operations)

    @property
    def add(self) -> core.AddSpec | None:
        return next((op for op in self.operations if isinstance(op, core.AddSpec)), None)

    @property
    def projection_cap(self) -> core.ProjectionCapSpec | None:
        return next((op for op in self.operations if isinstance(op, core.ProjectionCapSpec)),
                    None)

    @property
    def ablation(self) -> core.AblationSpec | None:
        return next((op for op in self.operations if isinstance(op, core.AblationSpec)), None)

    def clone(self) -> LayerSteeringSpec:
        return LayerSteeringSpec([op.clone() if hasattr(op, "clone") else op
                                  for op in self.operations])

    def is_empty(self) -> bool:
        """No op, or only adds of scale 0 (the original's cleared vector)."""
        return all(isinstance(op, core.AddSpec) and math.isclose(float(op.scale), 0.0,
                                                                  abs_tol=1e-12)
                   for op in self.operations)


@dataclass(frozen=True)
class SteeringSpec(core.SteeringSpec):
    """Layer index -> `LayerSteeringSpec`."""

    def clone(self) -> SteeringSpec:
        return SteeringSpec({index: LayerSteeringSpec.clone(layer) if isinstance(
            layer, LayerSteeringSpec) else layer for index, layer in self.layers.items()})

    def is_empty(self) -> bool:
        return all(LayerSteeringSpec.is_empty(layer) for layer in self.layers.values())


def _unit(vector: torch.Tensor, what: str) -> tuple[torch.Tensor, float]:
    _check_vector(vector, what)
    norm = float(vector.norm())
    return vector / norm, norm


def simple_steering(layer: int, vector: torch.Tensor, scale: float = 1.0) -> SteeringSpec:
    """Add ``scale * vector`` at `layer` (stored as the unit vector times ``|vector| * scale``)."""
    unit, norm = _unit(vector, "simple_steering")
    return SteeringSpec({layer: LayerSteeringSpec([AddSpec(unit, norm * scale)])})


def simple_projection_cap(layer: int, vector: torch.Tensor, min: float | None = None,
                          max: float | None = None) -> SteeringSpec:
    """Clamp the component along `vector` into ``[min, max]`` at `layer`."""
    if min is None and max is None:
        raise ValueError("simple_projection_cap: give min, max or both")
    unit, _ = _unit(vector, "simple_projection_cap")
    return SteeringSpec({layer: LayerSteeringSpec([ProjectionCapSpec(unit, min, max)])})


def simple_ablation(layer: int, vector: torch.Tensor, scale: float = 1.0) -> SteeringSpec:
    """Multiply the component along `vector` by `scale` at `layer` (the original's default,
    1.0, keeps it; 0 removes it)."""
    unit, _ = _unit(vector, "simple_ablation")
    return SteeringSpec({layer: LayerSteeringSpec([AblationSpec(unit, scale)])})

"""Steering specs: which operations to apply to the residual stream after which decoder layer.

A `SteeringSpec` maps layer indices to a `LayerSteeringSpec`, an ordered list of operations:

- `AddSpec(vector, scale)`: ``h + scale * v``;
- `ProjectionCapSpec(vector, min, max)`: clamp the component of ``h`` along the unit vector
  ``u = v / |v|`` into ``[min, max]`` (either bound may be None: open);
- `AblationSpec(vector, scale)`: scale that component by ``scale`` (0 removes it).

`SteeringSpec.check(hidden_size, num_layers)` validates a spec once, at the edge, and raises
`ValueError` naming the field (``layers[3].ops[1].vector``). `apply_ops` is the one
implementation of the maths that every backend calls. A spec saves to one safetensors file
(vectors as tensors, the rest as JSON metadata); `load_vector` reads a vector from
``.npy``, ``.pt`` or ``.safetensors``.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

# The saved spec's format and version (docs/formats.md lists it: runs/formats.py STEERING_FORMAT).
FORMAT, VERSION = "chatspace-steering", 2
# A vector's norm must lie in this range: outside it float32 projections lose the direction
# (1e-30 entries square to 0) or overflow (1e30 entries square to inf).
NORM_RANGE = (1e-8, 1e8)
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


@dataclass(frozen=True, eq=False)  # tensors: compare by identity
class AddSpec:
    vector: torch.Tensor
    scale: float = 1.0
    op = "add"


@dataclass(frozen=True, eq=False)
class ProjectionCapSpec:
    vector: torch.Tensor
    min: float | None = None
    max: float | None = None
    op = "cap"


@dataclass(frozen=True, eq=False)
class AblationSpec:
    vector: torch.Tensor
    scale: float = 0.0
    op = "ablate"


Op = AddSpec | ProjectionCapSpec | AblationSpec
OPS: dict[str, type[Op]] = {"add": AddSpec, "cap": ProjectionCapSpec, "ablate": AblationSpec}


@dataclass(frozen=True)
class LayerSteeringSpec:
    ops: tuple[Op, ...] = ()


@dataclass(frozen=True)
class SteeringSpec:
    layers: dict[int, LayerSteeringSpec] = field(default_factory=dict)

    def check(self, hidden_size: int, num_layers: int) -> None:
        """Raise ValueError naming the first bad field for a model of this shape."""
        for index, layer in self.layers.items():
            where = f"layers[{index}]"
            if not isinstance(index, int) or not 0 <= index < num_layers:
                raise ValueError(f"{where}: layer index out of range (the model has "
                                 f"{num_layers} decoder layers)")
            for number, op in enumerate(layer.ops):
                _check_op(op, f"{where}.ops[{number}]", hidden_size)

    def fingerprint(self) -> str:
        """A digest of everything the spec does: equal specs, equal fingerprints (used to keep
        steered and unsteered requests from sharing cached prefixes)."""
        digest = hashlib.sha256()
        for index in sorted(self.layers):
            for op in self.layers[index].ops:
                digest.update(json.dumps([index, _op_fields(op)]).encode())
                digest.update(op.vector.detach().to(torch.float32).cpu().numpy().tobytes())
        return digest.hexdigest()[:32]

    def to_wire(self) -> list[dict]:
        """The spec as plain data (vectors as float32 bytes) for another process."""
        return [{"layer": index, **_op_fields(op),
                 "vector": op.vector.detach().to(torch.float32).cpu().numpy().tobytes()}
                for index in sorted(self.layers) for op in self.layers[index].ops]

    def with_scale(self, scale: float) -> SteeringSpec:
        """The same spec with every add and ablate op at `scale` (caps have no scale)."""
        return SteeringSpec({i: LayerSteeringSpec(tuple(
            op if isinstance(op, ProjectionCapSpec) else type(op)(op.vector, scale)
            for op in layer.ops)) for i, layer in self.layers.items()})

    @classmethod
    def from_wire(cls, wire: list[dict]) -> SteeringSpec:
        layers: dict[int, list[Op]] = {}
        for entry in wire:
            entry = dict(entry)
            op_type = OPS[entry.pop("op")]
            vector = torch.frombuffer(bytearray(entry.pop("vector")), dtype=torch.float32)
            layers.setdefault(entry.pop("layer"), []).append(op_type(vector=vector, **entry))
        return cls({i: LayerSteeringSpec(tuple(ops)) for i, ops in layers.items()})

    def to_bytes(self) -> bytes:
        """The spec as one safetensors file's bytes (what `save` writes)."""
        from safetensors.torch import save

        tensors, ops = {}, []
        for index in sorted(self.layers):
            for number, op in enumerate(self.layers[index].ops):
                key = f"layers.{index}.ops.{number}.vector"
                tensors[key] = op.vector.detach().cpu().contiguous()
                ops.append({"layer": index, "key": key, **_op_fields(op)})
        return save(tensors, metadata={"format": FORMAT, "version": str(VERSION),
                                       "ops": json.dumps(ops)})

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> SteeringSpec:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            version = _spec_version(meta)
            if version is None:
                raise ValueError(f"{path}: not a chatspace steering spec (format "
                                 f"{meta.get('format')!r}, expected {FORMAT!r})")
            if version > VERSION:
                raise ValueError(f"{path} is {FORMAT} version {version}; this chatspace reads "
                                 f"up to version {VERSION}: upgrade chatspace to read it")
            layers: dict[int, list[Op]] = {}
            for entry in json.loads(meta["ops"]):
                if entry.get("op") not in OPS:
                    raise ValueError(f"{path}: unknown op {entry.get('op')!r} (ops: "
                                     f"{', '.join(OPS)})")
                op_type = OPS[entry.pop("op")]
                vector = fh.get_tensor(entry.pop("key"))
                layers.setdefault(entry.pop("layer"), []).append(op_type(vector=vector, **entry))
        return cls({i: LayerSteeringSpec(tuple(ops)) for i, ops in layers.items()})


def _spec_version(meta: dict[str, str]) -> int | None:
    """The version of steering spec a safetensors file's metadata names (version 1 wrote
    ``chatspace-steering/1`` as its format); None when it is not a steering spec."""
    if meta.get("format") == f"{FORMAT}/1":
        return 1
    version = meta.get("version", "")
    return int(version) if meta.get("format") == FORMAT and version.isdigit() else None


def _op_fields(op: Op) -> dict:
    if isinstance(op, ProjectionCapSpec):
        return {"op": op.op, "min": op.min, "max": op.max}
    return {"op": op.op, "scale": op.scale}


def _check_op(op: Op, where: str, hidden_size: int) -> None:
    if not isinstance(op, AddSpec | ProjectionCapSpec | AblationSpec):
        raise ValueError(f"{where}: {type(op).__name__} is not an operation "
                         "(AddSpec, ProjectionCapSpec, AblationSpec)")
    vector = op.vector
    if not isinstance(vector, torch.Tensor) or vector.ndim != 1:
        raise ValueError(f"{where}.vector: must be a 1-D tensor")
    if vector.shape[0] != hidden_size:
        raise ValueError(f"{where}.vector: has size {vector.shape[0]}, the model's hidden size "
                         f"is {hidden_size}")
    if not torch.isfinite(vector).all():
        raise ValueError(f"{where}.vector: contains NaN or infinite values")
    norm = float(vector.double().norm())  # float64: a float32 norm under/overflows first
    if not NORM_RANGE[0] <= norm <= NORM_RANGE[1]:
        what = "is all zeros" if norm == 0 else f"has norm {norm:.3g}"
        raise ValueError(f"{where}.vector: {what}; steering needs a norm in "
                         f"[{NORM_RANGE[0]:g}, {NORM_RANGE[1]:g}] (float32 maths)")
    numbers = ({"min": op.min, "max": op.max} if isinstance(op, ProjectionCapSpec)
               else {"scale": op.scale})
    for name, value in numbers.items():
        if value is not None and not (isinstance(value, int | float) and math.isfinite(value)):
            raise ValueError(f"{where}.{name}: must be a finite number, got {value!r}")
        if value is not None and abs(value) > FLOAT32_MAX:
            raise ValueError(f"{where}.{name}: {value!r} is not finite in float32, steering's "
                             f"compute dtype (at most {FLOAT32_MAX:.4g} in size)")
    if isinstance(op, AddSpec) and not torch.isfinite(op.scale * vector.to(torch.float32)).all():
        raise ValueError(f"{where}.scale: {op.scale!r} times the vector overflows float32, "
                         "steering's compute dtype")
    if isinstance(op, ProjectionCapSpec):
        if op.min is None and op.max is None:
            raise ValueError(f"{where}: give min, max or both")
        if op.min is not None and op.max is not None and op.min > op.max:
            raise ValueError(f"{where}: min {op.min} > max {op.max}")


def apply_ops(hidden: torch.Tensor, ops: tuple[Op, ...]) -> torch.Tensor:
    """The steered residual stream: `ops` applied in order to rows ``hidden[..., H]``. Returns
    a new tensor (never modifies `hidden`); the maths runs in float32."""
    out = hidden.to(torch.float32)
    for op in ops:
        vector = op.vector.to(device=out.device, dtype=torch.float32)
        if isinstance(op, AddSpec):
            out = out + op.scale * vector
            continue
        unit = vector / vector.norm()
        component = out @ unit
        if isinstance(op, ProjectionCapSpec):
            target = component.clamp(min=op.min, max=op.max)
        else:
            target = component * op.scale
        out = out + (target - component).unsqueeze(-1) * unit
    return out.to(hidden.dtype)


def is_spec_file(path: str | Path) -> bool:
    """Whether `path` is a steering spec saved by `SteeringSpec.save` (not a bare vector)."""
    if Path(path).suffix != ".safetensors":
        return False
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return _spec_version(fh.metadata() or {}) is not None


def make_op(op: str, vector: torch.Tensor, scale: float | None = None,
            min: float | None = None, max: float | None = None) -> Op:
    """One op by name: add or ablate at `scale` (default 1 and 0), cap between the bounds."""
    if op not in OPS:
        raise ValueError(f"op {op!r} is not one of {', '.join(OPS)}")
    if op == "cap":
        return ProjectionCapSpec(vector, min, max)
    return OPS[op](vector) if scale is None else OPS[op](vector, scale)


def _read_tensor_file(path: Path) -> torch.Tensor | dict[str, torch.Tensor]:
    if path.suffix == ".npy":  # no pickles: allow_pickle stays False
        return torch.from_numpy(np.load(path))
    if path.suffix == ".pt":  # tensors only: weights_only refuses other pickles
        return torch.load(path, map_location="cpu", weights_only=True)
    from safetensors.torch import load_file

    return load_file(str(path))


def load_vector(path: str | Path, key: str | None = None) -> torch.Tensor:
    """A steering vector from a ``.npy``, ``.pt`` or ``.safetensors`` file (with several tensors
    in the file, `key` names one); ValueError naming the file when it holds no 1-D vector."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"vector file not found: {path}")
    if path.suffix not in (".npy", ".pt", ".safetensors"):
        raise ValueError(f"{path}: vector files are .npy, .pt or .safetensors")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr
            warnings.simplefilter("ignore")
            loaded = _read_tensor_file(path)
    except pickle.UnpicklingError:
        raise ValueError(f"{path}: not a readable .pt tensor file (it holds Python objects "
                         "other than tensors, which are never unpickled)") from None
    except Exception as exc:  # each format raises its own kinds
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ValueError(f"{path}: not a readable {path.suffix} tensor file ({first})") from None
    if isinstance(loaded, dict):
        if key is None and len(loaded) != 1:
            raise ValueError(f"{path}: holds {len(loaded)} tensors "
                             f"({', '.join(sorted(loaded))}): name one")
        name = key or next(iter(loaded))
        if name not in loaded:
            raise ValueError(f"{path}: no tensor {name!r} (has {', '.join(sorted(loaded))})")
        loaded = loaded[name]
    if not isinstance(loaded, torch.Tensor) or loaded.squeeze().ndim != 1:
        raise ValueError(f"{path}: expected one 1-D vector, got "
                         f"{getattr(loaded, 'shape', type(loaded).__name__)}")
    return loaded.squeeze().clone()

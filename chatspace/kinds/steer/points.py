"""The sweep's points: each ``[[steering]]`` entry expanded into one point per layer x scale
(add, ablate) or per layer (cap), or with ``per_layer = false`` one point per scale steering
all its layers together, or one baseline point; vectors loaded and checked against the model
when the run is planned (a ``{layer}`` in `vector_key` names each layer's vector), and a cap's
percentile bounds (``min = "p25"``) resolved from the vectors run into numbers. A point's
steering spec is saved in the run directory (``point-NNN.safetensors``), so tasks need neither
the vector files nor their paths."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from chatspace.errors import BadInput
from chatspace.kinds.steer.spec import SteeringPoint, SteerSpec
from chatspace.kinds.vector_refs import recorded_percentile, vectors_file
from chatspace.steering.spec import LayerSteeringSpec, Op, SteeringSpec, load_vector, make_op


@dataclass(frozen=True)
class Point:
    name: str
    op: str | None
    layer: int | None
    scale: float | None
    # a cap's bounds; per layer where a percentile resolved differently at each layer
    min: float | list[float] | None
    max: float | list[float] | None
    layers: list[int] | None = None  # the steered layers (`layer` is set when one)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def expand_points(spec: SteerSpec, hidden_size: int, num_layers: int,
                  root: Path) -> list[tuple[Point, SteeringSpec | None]]:
    """Every point of the sweep in order, with its steering spec (None: baseline). A spec
    without ``[[steering]]`` entries is one baseline point. A point's vector is a file or a
    vectors run under `root` (with `vector_key` naming one of its vectors). A point's label is
    ``{name}/L{layers}/x{scale}`` (``{name}/L{layers}`` for a cap, ``{name}`` for a baseline;
    layers as `layer_label` writes them), unique in the run: BadInput names a label given
    twice."""
    entries = spec.steering or [SteeringPoint(name="baseline")]
    points: list[tuple[Point, SteeringSpec | None]] = []
    for number, entry in enumerate(entries):
        if entry.op is None:
            points.append((Point(entry.name, None, None, None, None, None), None))
            continue
        where = f"steering[{number}]"
        ops = {layer: _layer_op(entry, layer, where, root) for layer in entry.layers}
        groups = [[layer] for layer in entry.layers] if entry.per_layer else [entry.layers]
        for layers in groups:
            for scale in [None] if entry.op == "cap" else [float(s) for s in entry.scales]:
                steering = SteeringSpec({layer: LayerSteeringSpec((
                    ops[layer] if scale is None else type(ops[layer])(ops[layer].vector, scale),
                )) for layer in layers})
                try:
                    steering.check(hidden_size, num_layers)
                except ValueError as exc:
                    raise BadInput(f"{where} ({entry.vector}): {exc}") from None
                label = f"{entry.name}/L{layer_label(layers)}" + \
                    ("" if scale is None else f"/x{exact(scale)}")
                bounds = [[getattr(ops[layer], side) for layer in layers]
                          for side in ("min", "max")] if entry.op == "cap" else [[None]] * 2
                points.append((Point(label, entry.op, layers[0] if len(layers) == 1 else None,
                                     scale, *(b[0] if len(set(b)) == 1 else b for b in bounds),
                                     layers), steering))
    labels: dict[str, str] = {}
    for number, (point, _) in enumerate(points):
        if point.name in labels:
            raise BadInput(f"steering: point label {point.name!r} is given twice (by "
                           f"{labels[point.name]} and by point {number}): labels name one "
                           "configuration each; rename an entry or drop a repeated scale")
        labels[point.name] = f"point {number}"
    return points


def _layer_op(entry: SteeringPoint, layer: int, where: str, root: Path) -> Op:
    """The entry's op at `layer`: its vector (the key's ``{layer}`` filled in) and, for a cap,
    its bounds with percentiles resolved from the vectors run."""
    key = entry.vector_key.replace("{layer}", str(layer)) if entry.vector_key else None
    try:
        vector = load_vector(vectors_file(entry.vector, root), key)
    except ValueError as exc:
        raise BadInput(f"{where}.vector: {exc}") from None
    bounds = {}
    for side in ("min", "max"):
        bound = getattr(entry, side)
        if isinstance(bound, str):
            if key is None:
                raise BadInput(f"{where}.{side}: {bound} needs vector_key (the vector whose "
                               "projections the vectors run recorded)")
            bound = recorded_percentile(entry.vector, key, bound, root)
        bounds[side] = bound
    return make_op(entry.op, vector, 1.0, bounds["min"], bounds["max"])


def layer_label(layers: list[int]) -> str:
    """``12``, ``46-53`` for a contiguous range, else ``8,12``."""
    if len(layers) > 1 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


def exact(scale: float) -> str:
    """A scale as a point label shows it: the shortest text that reads back as the same
    float (``2``, ``0.5``, ``1.0000001``, ``1e+20``), so two scales never share a label."""
    return str(int(scale)) if scale.is_integer() and abs(scale) < 1e16 else repr(scale)


def point_layers(meta: dict[str, Any]) -> list[int]:
    """The layers a point (as inputs.json records it) steers; runs planned before multi-layer
    points record only `layer`."""
    if meta.get("layers") is not None:
        return meta["layers"]
    return [] if meta["layer"] is None else [meta["layer"]]


def point_file(number: int) -> str:
    return f"point-{number:03d}.safetensors"

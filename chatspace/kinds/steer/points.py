"""The sweep's points: each ``[[steering]]`` entry expanded into one point per layer x scale
(add, ablate) or per layer (cap), or one baseline point; vectors loaded and checked against the
model when the run is planned. A point's steering spec is saved in the run directory
(``point-NNN.safetensors``), so tasks need neither the vector files nor their paths."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from chatspace.errors import BadInput
from chatspace.kinds.steer.spec import SteeringPoint, SteerSpec
from chatspace.kinds.vector_refs import vectors_file
from chatspace.steering.spec import LayerSteeringSpec, SteeringSpec, load_vector, make_op


@dataclass(frozen=True)
class Point:
    name: str
    op: str | None
    layer: int | None
    scale: float | None
    min: float | None
    max: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def expand_points(spec: SteerSpec, hidden_size: int, num_layers: int,
                  root: Path) -> list[tuple[Point, SteeringSpec | None]]:
    """Every point of the sweep in order, with its steering spec (None: baseline). A spec
    without ``[[steering]]`` entries is one baseline point. A point's vector is a file or a
    vectors run under `root` (with `vector_key` naming one of its vectors). A point's label is
    ``{name}/L{layer}/x{scale}`` (``{name}/L{layer}`` for a cap, ``{name}`` for a baseline),
    unique in the run: BadInput names a label given twice."""
    entries = spec.steering or [SteeringPoint(name="baseline")]
    points: list[tuple[Point, SteeringSpec | None]] = []
    for number, entry in enumerate(entries):
        where = f"steering[{number}]"
        if entry.op is None:
            points.append((Point(entry.name, None, None, None, None, None), None))
            continue
        try:
            vector = load_vector(vectors_file(entry.vector, root), entry.vector_key)
        except ValueError as exc:
            raise BadInput(f"{where}.vector: {exc}") from None
        scales = [None] if entry.op == "cap" else [float(s) for s in entry.scales]
        for layer in entry.layers:
            for scale in scales:
                op = make_op(entry.op, vector, scale, entry.min, entry.max)
                steering = SteeringSpec({layer: LayerSteeringSpec((op,))})
                try:
                    steering.check(hidden_size, num_layers)
                except ValueError as exc:
                    raise BadInput(f"{where} ({entry.vector}): {exc}") from None
                label = f"{entry.name}/L{layer}" + ("" if scale is None else f"/x{exact(scale)}")
                points.append((Point(label, entry.op, layer, scale, entry.min, entry.max),
                               steering))
    labels: dict[str, str] = {}
    for number, (point, _) in enumerate(points):
        if point.name in labels:
            raise BadInput(f"steering: point label {point.name!r} is given twice (by "
                           f"{labels[point.name]} and by point {number}): labels name one "
                           "configuration each; rename an entry or drop a repeated scale")
        labels[point.name] = f"point {number}"
    return points


def exact(scale: float) -> str:
    """A scale as a point label shows it: the shortest text that reads back as the same
    float (``2``, ``0.5``, ``1.0000001``, ``1e+20``), so two scales never share a label."""
    return str(int(scale)) if scale.is_integer() and abs(scale) < 1e16 else repr(scale)


def point_file(number: int) -> str:
    return f"point-{number:03d}.safetensors"

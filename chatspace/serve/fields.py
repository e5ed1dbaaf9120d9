"""The fields chatspace adds to a request of vLLM's OpenAI API, read and checked before vLLM
sees the request (`Extras.parse`):

- ``steering``: a list of points in a steer spec's ``[[steering]]`` shape (``op``, ``layers``,
  ``vector``, ``vector_key``, ``scale`` or ``min``/``max``), all applied together; ``null``
  for an unsteered request even where the server has a default spec; absent: the default.
  A point's ``vector`` is a list of numbers, a vector registered with the server by name, or
  a vectors run under the server's root (with ``vector_key``); never a path.
- ``capture``: ``{"layers": [...], "rows": "all|prompt|response|last", "pool": "none|mean",
  "dtype": ...}``: the hidden states after those layers, fetched once from
  ``/v1/captures/{id}``.
- ``chatspace_metrics``: true for mean token entropy and top-k mass (k 5, or
  ``{"top_k": K}``), split at ``</think>``.

Each problem is `FieldError`: one line naming the field, answered with HTTP 400.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from chatspace.steering.choices import OP_NAMES
from chatspace.steering.outputs import CaptureOptions
from chatspace.steering.spec import LayerSteeringSpec, SteeringSpec, make_op

FIELDS = ("steering", "capture", "chatspace_metrics")
DEFAULT = object()  # the request left `steering` out: the server's default applies
POINT_KEYS = {"op", "layers", "vector", "vector_key", "scale", "min", "max", "name"}
CAPTURE_KEYS = {"layers", "rows", "pool", "dtype"}
TOP_K = 5  # as a steer spec's metrics.top_k_mass_k

# a vector by reference: (registered name or vectors run, key) -> the tensor; ValueError
VectorLookup = Callable[[str, str | None], torch.Tensor]


class FieldError(ValueError):
    """A chatspace field of a request that cannot be served as given (HTTP 400)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Shape:
    """What a request is checked against: the served model's size."""

    hidden_size: int
    num_layers: int


@dataclass(frozen=True)
class Extras:
    """A request's chatspace fields, checked: its steering (None: unsteered; `DEFAULT`: the
    server's), capture and metrics."""

    steering: SteeringSpec | None | object = DEFAULT
    capture_layers: tuple[int, ...] = ()
    capture: CaptureOptions | None = None
    metrics_k: int | None = None

    @property
    def collects(self) -> bool:
        """Whether the response carries what the hooks gathered (captures, metrics)."""
        return bool(self.capture_layers) or self.metrics_k is not None

    @classmethod
    def parse(cls, body: dict[str, Any], shape: Shape, lookup: VectorLookup) -> Extras:
        """The fields, popped from `body`; FieldError naming the first bad one."""
        steering: SteeringSpec | None | object = DEFAULT
        if "steering" in body:
            points = body.pop("steering")
            steering = None if points is None else steering_of(points, shape, lookup)
        layers, options = capture_of(body.pop("capture", None), shape)
        metrics = body.pop("chatspace_metrics", None)
        metrics_k = metrics_k_of(metrics)
        if (layers or metrics_k) and (body.get("n") or 1) != 1:
            raise FieldError("n", "capture and chatspace_metrics are per generation: ask "
                                  "with n = 1")
        if (layers or metrics_k) and body.get("stream"):
            raise FieldError("stream", "capture and chatspace_metrics come with the whole "
                                       "response: ask with stream = false")
        return cls(steering, layers, options, metrics_k)


def steering_of(points: Any, shape: Shape, lookup: VectorLookup) -> SteeringSpec | None:
    """One steering spec of every point's ops (an empty list: unsteered)."""
    if not isinstance(points, list):
        raise FieldError("steering", "must be a list of points (or null), got "
                                     f"{type(points).__name__}")
    layers: dict[int, list] = {}
    for number, point in enumerate(points):
        where = f"steering[{number}]"
        if not isinstance(point, dict):
            raise FieldError(where, f"must be an object, got {type(point).__name__}")
        if unknown := sorted(set(point) - POINT_KEYS):
            raise FieldError(f"{where}.{unknown[0]}", "is not a field of a steering point "
                                                      f"({', '.join(sorted(POINT_KEYS))})")
        op = point.get("op")
        if op not in OP_NAMES:
            raise FieldError(f"{where}.op", f"{op!r} is not one of {', '.join(OP_NAMES)}")
        vector = _vector(point, where, lookup)
        numbers = {name: _number(point.get(name), f"{where}.{name}")
                   for name in ("scale", "min", "max")}
        if op == "cap" and numbers["scale"] is not None:
            raise FieldError(f"{where}.scale", "op cap takes min and max, not scale")
        if op == "cap" and numbers["min"] is None and numbers["max"] is None:
            raise FieldError(where, "op cap needs min, max or both")
        if op != "cap" and (numbers["min"] is not None or numbers["max"] is not None):
            raise FieldError(f"{where}.min", f"op {op} takes scale, not min/max")
        for layer in _layers(point.get("layers"), f"{where}.layers", shape):
            try:
                layers.setdefault(layer, []).append(make_op(op, vector, **numbers))
            except ValueError as exc:
                raise FieldError(where, str(exc)) from None
    spec = SteeringSpec({i: LayerSteeringSpec(tuple(ops)) for i, ops in layers.items()})
    try:
        spec.check(shape.hidden_size, shape.num_layers)
    except ValueError as exc:
        raise FieldError("steering", str(exc)) from None
    return spec if spec.layers else None


def capture_of(capture: Any, shape: Shape) -> tuple[tuple[int, ...], CaptureOptions | None]:
    if capture is None:
        return (), None
    if not isinstance(capture, dict):
        raise FieldError("capture", f"must be an object, got {type(capture).__name__}")
    if unknown := sorted(set(capture) - CAPTURE_KEYS):
        raise FieldError(f"capture.{unknown[0]}", "is not a capture field "
                                                  f"({', '.join(sorted(CAPTURE_KEYS))})")
    layers = _layers(capture.get("layers"), "capture.layers", shape)
    options = {k: capture[k] for k in ("rows", "pool", "dtype") if capture.get(k) is not None}
    for name, value in options.items():
        if not isinstance(value, str):
            raise FieldError(f"capture.{name}", f"must be a string, got {value!r}")
    try:
        return tuple(layers), CaptureOptions(**{"rows": "last", **options})
    except ValueError as exc:
        raise FieldError("capture", str(exc).removeprefix("capture.")) from None


def metrics_k_of(metrics: Any) -> int | None:
    if metrics is None or metrics is False:
        return None
    if metrics is True:
        return TOP_K
    top_k = metrics.get("top_k", TOP_K) if isinstance(metrics, dict) else None
    if isinstance(metrics, dict) and set(metrics) <= {"top_k"} and isinstance(top_k, int) \
            and not isinstance(top_k, bool) and top_k >= 1:
        return top_k
    raise FieldError("chatspace_metrics", f"must be true, false or {{\"top_k\": K >= 1}}, got "
                                          f"{str(metrics)[:60]}")


def _vector(point: dict[str, Any], where: str, lookup: VectorLookup) -> torch.Tensor:
    vector, key = point.get("vector"), point.get("vector_key")
    if key is not None and not isinstance(key, str):
        raise FieldError(f"{where}.vector_key", f"must be a string, got {key!r}")
    if isinstance(vector, list):
        if key is not None:
            raise FieldError(f"{where}.vector_key", "an inline vector has no key")
        if not vector or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                 for v in vector):
            raise FieldError(f"{where}.vector", "an inline vector is a non-empty list of "
                                                "numbers")
        return torch.tensor(vector, dtype=torch.float32)
    if not isinstance(vector, str) or not vector:
        raise FieldError(f"{where}.vector", "is required: a list of numbers, a registered "
                                            "vector's name or a vectors run")
    try:
        return lookup(vector, key)
    except ValueError as exc:
        raise FieldError(f"{where}.vector", str(exc)) from None


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not math.isfinite(value):
        raise FieldError(where, f"must be a finite number, got {str(value)[:40]}")
    return float(value)


def _layers(value: Any, where: str, shape: Shape) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool)
                                              for v in value) or not value:
        raise FieldError(where, f"must be a non-empty list of layer indices, got "
                                f"{str(value)[:40]}")
    if bad := [v for v in value if not 0 <= v < shape.num_layers]:
        raise FieldError(where, f"layer {bad[0]} is out of range: the model has "
                                f"{shape.num_layers} layers (0..{shape.num_layers - 1})")
    if len(set(value)) != len(value):
        raise FieldError(where, f"{value} names a layer twice")
    return value

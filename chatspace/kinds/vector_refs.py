"""Where a steering vector comes from: a vector file, or a vectors run (its id or directory),
whose ``vectors.safetensors`` holds every vector by key (``contrast/pirate-assistant/L12``).
Used by a steer spec's ``vector``, by `chat`'s and `serve`'s ``--vector`` and by ``/steer``;
the vectors kind writes that file (`VECTORS_FILE`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from chatspace.errors import BadInput
from chatspace.runs.record import NAMED, inside_root, locate_run

if TYPE_CHECKING:
    from chatspace.steering.spec import SteeringSpec

VECTORS_FILE = "vectors.safetensors"  # a vectors run's vectors, in its output directory
# beside it, with --percentiles: {key: {"p25": value, …}} of the generations' projections
PERCENTILES_FILE = "percentiles.json"


def vectors_file(ref: str, root: Path) -> Path:
    """The file `ref` names, or the vectors file of the vectors run `ref` names (read from its
    plan: no kind package is imported, so that the steer and vectors kinds do not import each
    other)."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    try:
        root, run_id, plan = locate_run(ref, root)
    except BadInput:
        if ref.startswith(NAMED):  # no run of that name: say so
            raise
        plan = None
    if plan is None or plan.kind != "vectors":
        raise BadInput(f"{ref}: neither a vector file nor a vectors run under {root}")
    found = inside_root(root, plan.output_dir, f"run {run_id}: output directory") / VECTORS_FILE
    if not found.is_file():
        raise BadInput(f"vectors run {run_id} has no vectors yet (it has not been reduced: "
                       f"chatspace status {run_id})")
    return found


def recorded_percentile(ref: str, key: str, name: str, root: Path) -> float:
    """Percentile `name` (``p25``) of the projections on vector `key` that the vectors run
    `ref` recorded (``submit vectors --percentiles``); BadInput saying what is missing."""
    import json

    path = vectors_file(ref, root)
    table = path.parent / PERCENTILES_FILE
    if path.name != VECTORS_FILE or not table.is_file():
        raise BadInput(f"{ref}: a percentile bound ({name}) needs a vectors run that recorded "
                       "percentiles (submit vectors --percentiles …)")
    recorded = json.loads(table.read_text())
    if key not in recorded or name not in recorded[key]:
        have = sorted(recorded.get(key, {})) if key in recorded else "no such key"
        raise BadInput(f"{ref}: no {name} recorded for {key!r} (recorded: {have})")
    return float(recorded[key][name])


def layer_of(key: str | None) -> int | None:
    """The layer a vector key names (``…/L12`` -> 12), if it names one."""
    match = re.search(r"/L(\d+)$", key or "")
    return int(match.group(1)) if match else None


def default_steering(path: str, layer: int | None, scale: float | None, op: str,
                     hidden_size: int, num_layers: int, key: str | None,
                     root: Path) -> tuple[SteeringSpec, str]:
    """A chatspace steering spec file as it is (its add/ablate ops at `scale` if given), or
    one vector (from a file, or a vectors run under `root` with `key` naming it) applied with
    `op` at `layer` (default: the layer the key names, else the middle one; scale 1), and
    where it came from; ValueError naming what does not fit the model. What `chat`'s and
    `serve`'s --steer / --vector flags give."""
    from chatspace.steering.spec import (
        LayerSteeringSpec,
        SteeringSpec,
        is_spec_file,
        load_vector,
        make_op,
    )

    try:
        path = str(vectors_file(path, root))
    except BadInput as exc:
        raise ValueError(str(exc)) from None
    if is_spec_file(path) and key is None:
        spec, source = SteeringSpec.load(path), path
        spec = spec if scale is None else spec.with_scale(scale)
    else:
        where = layer if layer is not None else layer_of(key)
        where = num_layers // 2 if where is None else where
        spec = SteeringSpec({where: LayerSteeringSpec((make_op(op, load_vector(path, key),
                                                               scale),))})
        source = f"{path}{f' [{key}]' if key else ''} ({op} at layer {where})"
    spec.check(hidden_size, num_layers)
    return spec, source

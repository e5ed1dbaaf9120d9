"""Where a steering vector comes from: a vector file, or a vectors run (its id or directory),
whose ``vectors.safetensors`` holds every vector by key (``contrast/pirate-assistant/L12``).
Used by a steer spec's ``vector`` and by `chat`'s ``--vector`` and ``/steer``; the vectors
kind writes that file (`VECTORS_FILE`)."""

from __future__ import annotations

import re
from pathlib import Path

from chatspace.errors import BadInput
from chatspace.runs.record import inside_root, locate_run

VECTORS_FILE = "vectors.safetensors"  # a vectors run's vectors, in its output directory


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
        plan = None
    if plan is None or plan.kind != "vectors":
        raise BadInput(f"{ref}: neither a vector file nor a vectors run under {root}")
    found = inside_root(root, plan.output_dir, f"run {run_id}: output directory") / VECTORS_FILE
    if not found.is_file():
        raise BadInput(f"vectors run {run_id} has no vectors yet (it has not been reduced: "
                       f"chatspace status {run_id})")
    return found


def layer_of(key: str | None) -> int | None:
    """The layer a vector key names (``…/L12`` -> 12), if it names one."""
    match = re.search(r"/L(\d+)$", key or "")
    return int(match.group(1)) if match else None

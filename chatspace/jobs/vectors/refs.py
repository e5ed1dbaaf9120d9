"""Where a steering vector comes from: a vector file, or a vectors run (its id or directory),
whose ``vectors.safetensors`` holds every vector by key (``contrast/pirate-assistant/L12``).
Used by a steer spec's ``vector`` and by `chat`'s ``--vector`` and ``/steer``."""

from __future__ import annotations

import re
from pathlib import Path

from chatspace.errors import BadInput


def vectors_file(ref: str, root: Path) -> Path:
    """The file `ref` names, or the vectors file of the vectors run `ref` names."""
    from chatspace.jobs.vectors.kind import VectorsKind
    from chatspace.runs.record import Run

    path = Path(ref).expanduser()
    if path.is_file():
        return path
    try:
        run = Run.open(ref, root, {"vectors": VectorsKind()})
    except BadInput:
        raise BadInput(f"{ref}: neither a vector file nor a vectors run under {root}") from None
    found = run.output_dir / "vectors.safetensors"
    if not found.is_file():
        raise BadInput(f"vectors run {run.run_id} has no vectors yet (it has not been reduced: "
                       f"chatspace status {run.run_id})")
    return found


def layer_of(key: str | None) -> int | None:
    """The layer a vector key names (``…/L12`` -> 12), if it names one."""
    match = re.search(r"/L(\d+)$", key or "")
    return int(match.group(1)) if match else None

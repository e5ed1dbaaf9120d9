"""Names from input that become paths: a run id, a run name, a dataset split or subset, a model
label. Each is checked to be one plain directory name before it is joined to a path, and every
path a command writes or replaces is checked to lie inside the root."""

from __future__ import annotations

import os
import shutil
import unicodedata
from pathlib import Path

from chatspace.errors import BadInput

MAX_NAME = 128


def check_name(value: str, field: str) -> str:
    """`value` if it can be one directory name under the root; BadInput naming `field` if not
    (empty, ``.``/``..``, a separator, a leading ``.`` or ``-``, control characters, too
    long)."""
    why = None
    if not value:
        why = "is empty"
    elif len(value) > MAX_NAME:
        why = f"is {len(value)} characters long (at most {MAX_NAME})"
    elif "/" in value or "\\" in value:
        why = "contains a path separator"
    elif value.startswith((".", "-")):
        why = f"starts with {value[0]!r}"
    elif any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in value):
        why = "contains control characters"
    if why:
        shown = value if len(value) <= 60 else value[:57] + "..."
        raise BadInput(f"{field} {shown!r} {why}: it must be a plain directory name")
    return value


def check_inside(root: Path, path: Path, what: str) -> Path:
    """`path` if it lies inside `root` once both are resolved; BadInput otherwise."""
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(path))
    if real != real_root and real_root not in real.parents:
        raise BadInput(f"{what} {path} is outside the root {root}")
    return path


def check_replaceable(root: Path, dest: Path) -> Path:
    """`dest` if a recording may be written there: inside `root`, and either absent or an
    earlier recording of chatspace's (it has ``_info.json``); BadInput otherwise."""
    check_inside(root, dest, "destination")
    if dest.exists() and not (dest / "_info.json").is_file():
        raise BadInput(f"{dest} exists and is not a recording of chatspace's (no _info.json): "
                       "move it away first")
    return dest


def replace_recorded(staging: Path, dest: Path, root: Path) -> None:
    """Move a finished `staging` directory to `dest`, replacing an earlier recording there; a
    directory chatspace did not record is never deleted."""
    if check_replaceable(root, dest).exists():
        shutil.rmtree(dest)
    staging.rename(dest)

"""Names from input that become paths: a run id, a run name, a dataset split or subset, a model
label, a Hub revision. Each is checked to be one plain directory name (or a relative path of
plain names) before it is joined to a path; every path a command writes, replaces or deletes is
checked to lie inside the root as resolved, with no link on the way from the root (a shared
root is group-writable: a planted link must not turn a write or a delete into one elsewhere)."""

from __future__ import annotations

import os
import shutil
import tempfile
import unicodedata
from pathlib import Path

from chatspace.errors import BadInput
from chatspace.text import one_line

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


def check_relative(value: str, field: str) -> str:
    """`value` if it is a relative path of plain names (``a/b.parquet``: no ``..``, no
    absolute path, no empty part); BadInput naming `field` otherwise. For paths that a record
    or a server names inside a folder."""
    parts = value.split("/")
    if not value or value.startswith("/") or any(p in ("", ".", "..") for p in parts) or \
            "\\" in value or any(unicodedata.category(c) in ("Cc", "Cf") for c in value):
        raise BadInput(f"{field} {one_line(value[:80])!r} is not a relative path of plain "
                       "names")
    return value


def link_on_the_way(root: Path, path: Path) -> Path | None:
    """The first folder or file from `root` down to `path` (inclusive) that is a symbolic
    link, or None; `path` is `root` joined with a relative path."""
    current = root
    for part in path.relative_to(root).parts:
        current = current / part
        if current.is_symlink():
            return current
    return None


def check_no_link(root: Path, path: Path, what: str) -> Path:
    """`path` if nothing from `root` down to it is a link; BadInput saying which path is a
    link and where to otherwise."""
    found = link_on_the_way(root, path)
    if found is not None:
        raise BadInput(f"{what}: {one_line(str(found))} is a link to "
                       f"{one_line(os.readlink(found))}; chatspace writes and deletes "
                       "nothing through a link under the root")
    return path


def inside(root: Path, path: Path) -> bool:
    """Whether `path` lies inside `root` once both are resolved (links followed)."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))


def check_inside(root: Path, path: Path, what: str) -> Path:
    """`path` if it lies inside `root` once both are resolved; BadInput otherwise."""
    if not inside(root, path):
        raise BadInput(f"{what} {one_line(str(path))} is outside the root {root}")
    return path


def check_replaceable(root: Path, dest: Path, marker: str) -> Path:
    """`dest` if a recording may be written there: inside `root`, and either absent or an
    earlier recording of chatspace's (it has the recording's record, `marker`); BadInput
    otherwise."""
    check_inside(root, dest, "destination")
    if dest.exists() and not (dest / marker).is_file():
        raise BadInput(f"{dest} exists and is not a recording of chatspace's (no {marker}): "
                       "move it away first")
    return dest


def staging_dir(parent: Path) -> Path:
    """A new temp directory (a dot-name, skipped by readers) in `parent` with the mode the
    umask gives, as every other folder chatspace makes: on a shared root the group reads
    what is recorded (``mkdtemp`` alone makes it 0700)."""
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=parent))
    mask = os.umask(0)
    os.umask(mask)
    staging.chmod(0o777 & ~mask)
    return staging


def replace_recorded(staging: Path, dest: Path, root: Path, marker: str) -> None:
    """Move a finished `staging` directory to `dest`, replacing an earlier recording there
    (one with `marker`); a directory chatspace did not record is never deleted."""
    if check_replaceable(root, dest, marker).exists():
        shutil.rmtree(dest)
    staging.rename(dest)

"""The experiment store: a training or analysis script logs what it ran and what it got, and
`chatspace query` finds it again beside the runs.

    from chatspace.experiments import save_experiment
    save_experiment("probe-sweep", config={"lr": 1e-3, "layer": 12},
                    metrics={"loss": 0.41, "accuracy": 0.87}, tags=["probe"], notes="first try")

Each call writes one Parquet row, atomically, to
``{root}/experiments/{name}/{created}-{id}.parquet`` (root: the `root` argument, else
``$CHATSPACE_ROOT``, else ``/workspace``) with the experiment id, name, time, config (JSON),
metrics (a map of numbers), tags, notes, the git commit of the working directory and the host.
`chatspace query` reads them as the ``experiments`` view; ``--experiments`` turns ``--list``,
``--summary``, ``--best METRIC`` and ``--compare ID ID`` to them.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import secrets
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from chatspace.errors import BadInput
from chatspace.names import check_name
from chatspace.runs.files import default_root, git_commit, write_parquet
from chatspace.runs.formats import EXPERIMENT_FORMAT
from chatspace.text import is_text

SCHEMA = pa.schema([
    ("experiment_id", pa.string()), ("name", pa.string()),
    ("created_at", pa.timestamp("us", "UTC")), ("config", pa.string()),
    ("metrics", pa.map_(pa.string(), pa.float64())), ("tags", pa.list_(pa.string())),
    ("notes", pa.string()), ("git_sha", pa.string()), ("host", pa.string()),
], metadata=EXPERIMENT_FORMAT.tags())


def _numbers(metrics: Any) -> dict[str, float]:
    """The metrics as floats: any real number (numpy's too), finite; ValueError otherwise."""
    if not isinstance(metrics, dict):
        raise ValueError(f"metrics must be a dict of numbers, got {type(metrics).__name__}")
    out = {}
    for key, value in metrics.items():
        number = None
        if isinstance(key, str) and not isinstance(value, bool | str | bytes) and \
                isinstance(value, numbers.Real):
            with contextlib.suppress(OverflowError):  # an int beyond float: not finite
                number = float(value)
        if number is None or not math.isfinite(number) or not is_text(key):
            raise ValueError(f"metrics[{key!r}] must be a finite number, got {value!r}")
        out[key] = number
    return out


def save_experiment(name: str, config: dict[str, Any], metrics: dict[str, float], *,
                    tags: list[str] | None = None, notes: str | None = None,
                    root: str | Path | None = None) -> Path:
    """Record one experiment; returns the file written. ValueError (one line naming the
    argument) for a name that cannot be a directory, a config that is not JSON, a metric that
    is not a finite number, or tags that are not strings."""
    if not isinstance(name, str):
        raise ValueError(f"name must be a string, got {type(name).__name__}")
    try:
        check_name(name, "name")
    except BadInput as exc:  # the CLI's type; a script gets a ValueError
        raise ValueError(str(exc)) from None
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict, got {type(config).__name__}")
    try:
        config_json = json.dumps(config, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"config is not JSON: {exc}") from None
    if not is_text(json.dumps(config, ensure_ascii=False)):
        raise ValueError("config holds a lone surrogate (an unpaired \\ud800-\\udfff), "
                         "which is not text")
    if tags is not None and (isinstance(tags, str) or not isinstance(tags, list | tuple)
                             or not all(is_text(t) for t in tags)):
        raise ValueError(f"tags must be a list of strings, got {tags!r}")
    if notes is not None and not is_text(notes):
        raise ValueError(f"notes must be a string, got {type(notes).__name__}")
    created = datetime.now(UTC)
    experiment_id = f"{created:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
    row = {"experiment_id": experiment_id, "name": name, "created_at": created,
           "config": config_json, "metrics": list(_numbers(metrics).items()),
           "tags": list(tags or []), "notes": notes, "git_sha": git_commit(Path.cwd()),
           "host": socket.gethostname()}
    path = Path(root or default_root()) / EXPERIMENT_FORMAT.path.format(
        name=name, experiment_id=experiment_id)
    table = pa.Table.from_pylist([row], SCHEMA)
    write_parquet(path, [table], SCHEMA, {"compression": "zstd"})
    return path


def experiment_files(root: Path) -> list[Path]:
    """Every experiment's file under the root, by name then time (temp files of a write in
    progress start with a dot and are not experiments)."""
    folder = root / "experiments"
    if not folder.is_dir():
        return []
    return [f for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")
            for f in sorted(d.glob("[!.]*.parquet"))]

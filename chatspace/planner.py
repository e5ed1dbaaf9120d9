"""Plan a run on the login node: resolve the dataset and model from metadata, draw the sample,
cut it into slices and write the run record. Everything is checked before anything is written.
"""

from __future__ import annotations

import logging
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from chatspace.config import EmbedSpec
from chatspace.dataset import open_source
from chatspace.errors import BadInput
from chatspace.model import resolve_model
from chatspace.runrecord import Run, atomic_path, read_json, spec_hash, tool_info, write_json
from chatspace.sampling import draw_sample, slice_bounds

log = logging.getLogger(__name__)


def check_writable(root: Path) -> None:
    probe = root
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise BadInput(f"root {root} is not writable (checked {probe}); "
                       "choose another with --root or CHATSPACE_ROOT")


def _check_fields(spec: EmbedSpec, columns: tuple[str, ...]) -> None:
    cfg = spec.dataset
    for key in ("text_field", "messages_field", "id_field"):
        name = getattr(cfg, key)
        if name is not None and name not in columns:
            raise BadInput(f"dataset.{key} {name!r} is not a column of {cfg.name} "
                           f"(columns: {', '.join(columns)})")


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def plan_embed(spec: EmbedSpec, root: Path, run_id: str | None = None) -> tuple[Run, bool]:
    """Plan `spec` under `root`. Returns the run and whether it was newly planned (False: the
    run id already existed with this same spec, so its record is reused)."""
    check_writable(root)
    digest = spec_hash(spec)
    if run_id is not None:
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise BadInput(f"run id {run_id!r} is not a valid directory name")
        existing = Run(root, run_id)
        if existing.plan_path.exists():
            if read_json(existing.plan_path)["spec_hash"] != digest:
                raise BadInput(f"run id {run_id} already exists at {existing.dir} with a "
                               "different spec; choose another --run-id")
            return existing, False
    ds = spec.dataset
    source = open_source(ds.name, ds.subset, ds.split)
    _check_fields(spec, source.columns)
    model = resolve_model(spec.model.name)
    sample = draw_sample(spec.sampling, source.rows)
    slices = slice_bounds(len(sample), spec.run.array)

    run = Run(root, run_id or new_run_id())
    where = [model.label, source.dataset] + ([ds.split] if ds.split else []) + [run.run_id]
    plan = {
        "run_id": run.run_id,
        "kind": "embed",
        "created_at": datetime.now(UTC).isoformat(timespec="microseconds"),
        "spec": spec.to_dict(),
        "spec_hash": digest,
        "source": source.to_dict(),
        "model": {"label": model.label, "path": model.path},
        "sampling": {"seed": spec.sampling.seed, "n": spec.sampling.n, "p": spec.sampling.p,
                     "max_rows": spec.sampling.max_rows, "rows_available": source.rows,
                     "rows_sampled": len(sample)},
        "tasks": [{"task": i, "start": s, "stop": e} for i, (s, e) in enumerate(slices)],
        "output_dir": str(root.joinpath("embeddings", *where)),
        "manifest_path": str(root.joinpath("indexes", *where, "manifest.json")),
        "tool": tool_info(),
    }
    with atomic_path(run.dir / "sample.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, sample)
    write_json(run.dir / "spec.json", spec.to_dict())
    write_json(run.plan_path, plan)  # written last: its presence means "planned"
    log.info("planned run %s: %d of %d rows in %d tasks", run.run_id, len(sample),
             source.rows, len(slices))
    return run, True

"""Plain helpers of the tests: the CLI in a subprocess, polling, files, embed jobs planned and
run in-process (the debug executor), and steering specs (fixtures are in tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from chatspace.kinds import KINDS
from chatspace.kinds.embed.spec import EmbedSpec
from chatspace.runs.executors import DebugExecutor
from chatspace.runs.plan import plan_run
from chatspace.runs.record import Run
from chatspace.specs import resolve_spec
from chatspace.steering import LayerSteeringSpec, SteeringSpec

REPO = Path(__file__).resolve().parent.parent
PYDOCS = REPO / "jobs" / "data" / "pydocs.jsonl"


def chatspace(*args: str, root: Path | None = None, env: dict | None = None,
              timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (exit codes and output as a user sees them)."""
    cmd = [sys.executable, "-m", "chatspace", *args]
    if root is not None:
        cmd += ["--root", str(root)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **(env or {})})


def chatspace_here(*args: str, root: Path | None = None) -> subprocess.CompletedProcess:
    """The CLI in this process, for what fails before any work (bad input): its exit code,
    stdout and stderr as a subprocess gives them (UTF-8, stderr with Python's
    backslashreplace, run from the checkout), without a new interpreter's imports."""
    import contextlib
    import io

    from chatspace.cli import main

    argv = ["chatspace", *args] + (["--root", str(root)] if root is not None else [])
    streams = [io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors=errors)
               for errors in ("strict", "backslashreplace")]
    code: int | str | None = 0
    with contextlib.redirect_stdout(streams[0]), contextlib.redirect_stderr(streams[1]), \
            contextlib.chdir(REPO):
        saved, sys.argv = sys.argv, argv
        try:
            main()
        except SystemExit as exc:
            code = exc.code
        finally:
            sys.argv = saved
    for stream in streams:
        stream.flush()
    out, err = (stream.buffer.getvalue().decode() for stream in streams)
    return subprocess.CompletedProcess(argv, code or 0, out, err)


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


def wait_until(predicate, timeout: float = 300, poll: float = 0.5, what: str = ""):
    """Poll `predicate` until it returns something truthy (returned), or fail."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def vector(seed: int, size: int = 64):
    """A seeded random direction (a torch tensor) of the tiny models' hidden size."""
    import torch

    return torch.randn(size, generator=torch.Generator().manual_seed(seed))


def spec_at(layer: int, *ops) -> SteeringSpec:
    """A steering spec with `ops` at one layer."""
    return SteeringSpec({layer: LayerSteeringSpec(tuple(ops))})


def plan(root: Path, data: Path, run_id: str | None = None, *, n: int = 60,
         array: int = 2, **sections: dict[str, Any]) -> Run:
    overrides = {"dataset": {"name": str(data), "text_field": "text"},
                 "sampling": {"n": n, "seed": 1}, "run": {"array": array}}
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return plan_run(KINDS["embed"], resolve_spec(EmbedSpec, None, overrides), root,
                    run_id).run


def embed(root: Path, data: Path, run_id: str | None = None, **kwargs: Any) -> Run:
    run = plan(root, data, run_id, **kwargs)
    DebugExecutor().execute(run, range(run.num_tasks))
    return run


def shard(run: Run, task: int) -> Path:
    return run.output_paths(task)["shard"]


def open_run(ref: str | Path) -> Run:
    return Run.open(str(ref), Path("/nonexistent"), KINDS)


def read_run(run: Run) -> pa.Table:
    return pa.concat_tables(pq.read_table(shard(run, t)) for t in range(run.num_tasks))

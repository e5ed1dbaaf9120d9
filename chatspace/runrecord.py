"""The run record: one directory per run under ``{root}/runs/{run_id}`` holding the resolved
spec, the plan, the sample, per-task completion records, in-progress parts, the submission
record and the logs. Outputs live beside it under the seeds' layout, always keyed by run id.

Every file is written atomically (temp name in the same directory, fsync, rename).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from chatspace import __version__
from chatspace.config import EmbedSpec, spec_from_dict
from chatspace.dataset import SourceInfo
from chatspace.errors import BadInput

DEFAULT_ROOT = "/workspace"


def default_root() -> Path:
    return Path(os.environ.get("CHATSPACE_ROOT", DEFAULT_ROOT))


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def spec_hash(spec: EmbedSpec) -> str:
    text = json.dumps(spec.work_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def tool_info() -> dict[str, str | None]:
    try:
        done = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"],
                              cwd=Path(__file__).parent, capture_output=True, text=True,
                              timeout=5)
        sha = done.stdout.strip() if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        sha = None
    return {"version": __version__, "git_sha": sha}


@dataclass(frozen=True)
class Run:
    """Paths and records of one planned run. Construct with `Run.open` or the planner."""

    root: Path
    run_id: str

    @property
    def dir(self) -> Path:
        return self.root / "runs" / self.run_id

    @property
    def plan_path(self) -> Path:
        return self.dir / "plan.json"

    @property
    def log_dir(self) -> Path:
        return self.dir / "logs"

    @cached_property
    def plan(self) -> dict[str, Any]:
        return read_json(self.plan_path)

    @cached_property
    def spec(self) -> EmbedSpec:
        return spec_from_dict(self.plan["spec"])

    @cached_property
    def source(self) -> SourceInfo:
        return SourceInfo.from_dict(self.plan["source"])

    @cached_property
    def sample(self) -> np.ndarray:
        return np.load(self.dir / "sample.npy")

    @property
    def num_tasks(self) -> int:
        return len(self.plan["tasks"])

    def task_bounds(self, task: int) -> tuple[int, int]:
        entry = self.plan["tasks"][task]
        return entry["start"], entry["stop"]

    @property
    def output_dir(self) -> Path:
        return Path(self.plan["output_dir"])

    @property
    def manifest_path(self) -> Path:
        return Path(self.plan["manifest_path"])

    def shard_path(self, task: int) -> Path:
        return self.output_dir / f"shard-{task:05d}.parquet"

    def completion_path(self, task: int) -> Path:
        return self.dir / "tasks" / f"task-{task:05d}.json"

    def parts_dir(self, task: int) -> Path:
        return self.dir / "parts" / f"task-{task:05d}"

    def completion(self, task: int) -> dict[str, Any] | None:
        """The task's completion record, if it exists and its shard still matches it."""
        path = self.completion_path(task)
        if not path.exists():
            return None
        record = read_json(path)
        shard = self.shard_path(task)
        if not shard.exists() or shard.stat().st_size != record["bytes"]:
            return None
        if sha256_file(shard) != record["sha256"]:
            return None
        return record

    @property
    def submissions_path(self) -> Path:
        return self.dir / "submissions.json"

    def submissions(self) -> list[dict[str, Any]]:
        """Every submission of this run (executor, job ids, sbatch parameters), oldest first."""
        return read_json(self.submissions_path) if self.submissions_path.exists() else []

    def save_submission(self, record: dict[str, Any]) -> None:
        write_json(self.submissions_path, [*self.submissions(), record])

    def task_jobs(self) -> dict[int, str]:
        """The SLURM job id (``A_a``, or ``A`` for a one-task array) of each task whose latest
        submission went to SLURM."""
        jobs: dict[int, str] = {}
        for record in self.submissions():
            for task in record.get("tasks", []):  # a later local/debug attempt
                jobs.pop(task, None)
            for array in record.get("arrays", []):
                jobs.update(zip(array["tasks"], array["jobs"], strict=True))
        return jobs

    def task_logs(self, task: int, jobs: dict[int, str] | None = None) -> list[Path]:
        """Existing log files of the task's latest attempt: ``local-{task}.log`` from the local
        executor, or submitit's ``{A}_{a}_0_log.out`` and ``.err`` (error output last).
        `jobs` is `task_jobs()` when the caller has it already."""
        job = (self.task_jobs() if jobs is None else jobs).get(task)
        names = ([f"{job}_0_log.out", f"{job}_0_log.err"] if job
                 else [f"local-{task:05d}.log"])
        return [self.log_dir / n for n in names if (self.log_dir / n).exists()]

    @classmethod
    def open(cls, ref: str, root: Path | None = None) -> Run:
        """Resolve RUN (a run directory or a run id under root) to a planned run."""
        path = Path(ref).expanduser()
        if (path / "plan.json").exists():
            path = path.resolve()
            return cls(path.parent.parent, path.name)
        run = cls(root or default_root(), ref)
        if not run.plan_path.exists():
            raise BadInput(f"no planned run {ref!r} (looked for {path}/plan.json and "
                           f"{run.plan_path})")
        return run

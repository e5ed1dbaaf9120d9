"""The run record: one directory per run under ``{root}/runs/{run_id}`` holding the resolved
spec, the plan, per-task completion records, in-progress parts, the submission record and the
logs. Outputs live where the job type's plan put them, always keyed by run id.

Every file is written atomically (temp name in the same directory, fsync, rename). A task is
*done* when its completion record exists and every output file it lists is there with its
recorded size (and, where it matters, its recorded sha256).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from chatspace import __version__
from chatspace.errors import BadInput
from chatspace.runs.job import JobType
from chatspace.specs import JobSpec, spec_from_dict

DEFAULT_ROOT = "/workspace"


def default_root() -> Path:
    return Path(os.environ.get("CHATSPACE_ROOT", DEFAULT_ROOT))


def check_writable(root: Path) -> None:
    probe = root
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise BadInput(f"root {root} is not writable (checked {probe}); "
                       "choose another with --root or CHATSPACE_ROOT")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
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


def write_parquet(path: Path, tables: Iterable[pa.Table], schema: pa.Schema,
                  options: dict[str, Any]) -> None:
    """Write tables (one row group each) to `path` atomically: a reader never sees a partial
    file, and a failure leaves nothing behind."""
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, **options) as writer:
        for table in tables:
            writer.write_table(table, row_group_size=max(table.num_rows, 1))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path: Path, **extra: Any) -> dict[str, Any]:
    """A file as completion records and manifests list it: path, bytes, sha256."""
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": sha256_file(path),
            **extra}


def file_problem(entry: dict[str, Any], check_hash: bool = True) -> str | None:
    """Why a listed file no longer matches its entry (None if it does)."""
    path = entry["path"]
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return f"{path} is missing"
    if size != entry["bytes"]:
        return f"{path} has {size} bytes, its record says {entry['bytes']}"
    if check_hash and sha256_file(Path(path)) != entry["sha256"]:
        return f"{path} sha256 differs from its record"
    return None


def output_problems(record: dict[str, Any], check_hash: bool = True) -> list[str]:
    """Why the outputs a completion record lists no longer match it ([] when they all do)."""
    return [p for entry in record["outputs"] if (p := file_problem(entry, check_hash))]


def spec_hash(spec: JobSpec) -> str:
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
    """Paths and records of one planned run, and the job type that runs it."""

    root: Path
    run_id: str
    job: JobType = field(compare=False)

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
    def spec(self) -> Any:
        return spec_from_dict(self.job.spec_type, self.plan["spec"])

    @cached_property
    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays the job type's plan saved beside plan.json (e.g. the sample), by name."""
        return {path.stem: np.load(path) for path in sorted(self.dir.glob("*.npy"))}

    @property
    def num_tasks(self) -> int:
        return len(self.plan["tasks"])

    @property
    def rows(self) -> int:
        return self.plan["tasks"][-1]["stop"]

    def task_bounds(self, task: int) -> tuple[int, int]:
        entry = self.plan["tasks"][task]
        return entry["start"], entry["stop"]

    @property
    def output_dir(self) -> Path:
        return Path(self.plan["output_dir"])

    @property
    def manifest_path(self) -> Path:
        return Path(self.plan["manifest_path"])

    def output_paths(self, task: int) -> dict[str, Path]:
        """Output name -> the file the task writes; the primary output (whose rows a
        completion record counts) first."""
        outputs = self.plan["outputs"]
        first = self.plan.get("primary_output", next(iter(outputs)))
        return {name: self.output_dir / outputs[name].format(task=task)
                for name in [first, *sorted(set(outputs) - {first})]}

    def part_file_path(self, task: int, part: int, name: str) -> Path:
        """Where part `part` of `task` keeps its file of part-file output `name`."""
        pattern = self.plan.get("part_files", {})[name]
        return self.output_dir / pattern.format(task=task, part=part)

    def completion_path(self, task: int) -> Path:
        return self.dir / "tasks" / f"task-{task:05d}.json"

    def parts_dir(self, task: int) -> Path:
        return self.dir / "parts" / f"task-{task:05d}"

    def completion(self, task: int, check_hash: bool = True) -> dict[str, Any] | None:
        """The task's completion record if the task is done: every output it lists is there
        with its recorded size (and sha256 unless `check_hash` is False)."""
        path = self.completion_path(task)
        if not path.exists():
            return None
        record = read_json(path)
        return None if output_problems(record, check_hash) else record

    def done_records(self, check_hash: bool = True) -> dict[int, dict[str, Any]]:
        """The completion records of every done task, by task: what `completion` says task
        by task, from one scan of the records' directory (for views over many tasks)."""
        folder = self.dir / "tasks"
        if not folder.is_dir():
            return {}
        records = [read_json(Path(entry.path)) for entry in os.scandir(folder)
                   if entry.name.startswith("task-") and entry.name.endswith(".json")]
        return {r["task"]: r for r in sorted(records, key=lambda r: r["task"])
                if not output_problems(r, check_hash)}

    @property
    def submissions_path(self) -> Path:
        return self.dir / "submissions.json"

    def submissions(self) -> list[dict[str, Any]]:
        """Every submission of this run (executor, job ids, sbatch parameters), oldest first."""
        return read_json(self.submissions_path) if self.submissions_path.exists() else []

    def save_submission(self, record: dict[str, Any], replace_last: bool = False) -> None:
        """Append a submission, or update the latest one as its jobs get queued."""
        history = self.submissions()
        write_json(self.submissions_path, [*history[:-1 if replace_last else None], record])

    @classmethod
    def open(cls, ref: str, root: Path, job_types: Mapping[str, JobType]) -> Run:
        """Resolve RUN (a run directory or a run id under root) to a planned run of one of
        `job_types`."""
        path = Path(ref).expanduser()
        if (path / "plan.json").exists():
            path = path.resolve()
            root, ref = path.parent.parent, path.name
        plan_path = root / "runs" / ref / "plan.json"
        if not plan_path.exists():
            raise BadInput(f"no planned run {ref!r} (looked for {path}/plan.json and "
                           f"{plan_path})")
        kind = read_json(plan_path).get("kind")
        if kind not in job_types:
            raise BadInput(f"run {ref} is of kind {kind!r}, which this chatspace does not know "
                           f"(known: {', '.join(job_types)})")
        return cls(root, ref, job_types[kind])

"""The run record: one directory per run under ``{root}/runs/{run_id}`` holding the resolved
spec, the plan, per-task completion records, in-progress parts, the submission record and the
logs. Outputs live where the kind's plan put them, always keyed by run id.

Every file is written atomically (a temp name with host and pid in the same directory, fsync,
rename, fsync of the directory). Readers skip temp names (dot-files) and treat a record that
does not parse (torn by a crash or a full disk) as absent, saying why. A task is *done* when its
completion record parses and every output file it lists is there with its recorded size (and,
where it matters, its recorded sha256).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from chatspace.errors import BadInput
from chatspace.names import check_inside, check_name, check_no_link, check_relative, inside
from chatspace.runs.files import read_json, sha256_file, write_json
from chatspace.runs.formats import (
    Completion,
    FileEntry,
    PartSidecar,
    Plan,
    Submission,
    Submissions,
)
from chatspace.runs.typed_records import Record, UnreadableRecord
from chatspace.specs import JobSpec, spec_from_dict
from chatspace.text import one_line

if TYPE_CHECKING:  # a run's kind is handed in; the kind interface names Run in turn
    from chatspace.runs.kind import Kind

log = logging.getLogger(__name__)


R = TypeVar("R", bound=Record)


def read_typed(path: Path, cls: type[R]) -> R:
    """A record file as its type: UnreadableRecord if it does not parse, NewerRecord if a
    newer chatspace wrote it, FileNotFoundError if absent."""
    data = read_json(path)
    try:
        return cls.parse(data, path)
    except (TypeError, AttributeError, KeyError, ValueError) as exc:  # a field missing/wrong
        raise UnreadableRecord(f"{path} is not a {cls.FORMAT} record ({exc})") from None


def read_typed_record(path: Path, cls: type[R]) -> R | None:
    """`read_typed`, or None when the record is absent or does not parse (logged: the caller
    treats it as not written, and a rerun writes it again); a record of a newer version is
    still an error (NewerRecord)."""
    try:
        return read_typed(path, cls)
    except FileNotFoundError:
        return None
    except UnreadableRecord as exc:
        log.warning("%s", exc)
        return None


def write_record(path: Path, record: Record) -> None:
    write_json(path, record.to_dict())


def record_files(folder: Path, prefix: str = "") -> list[Path]:
    """The records in `folder` whose names start with `prefix` and end in ``.json``, sorted by
    name; temp files (dot-files) are not records."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return [folder / n for n in sorted(names)
            if n.startswith(prefix) and n.endswith(".json") and not n.startswith(".")]


def stored_path(path: Path, root: Path) -> str:
    """How a record stores a path: relative to the root, so that a moved root still reads
    (a path outside the root, which plans never make, stays absolute)."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def file_entry(path: Path, root: Path, **extra: Any) -> FileEntry:
    """A file as completion records and manifests list it: path (relative to the root), bytes,
    sha256."""
    return FileEntry(path=stored_path(path, root), bytes=path.stat().st_size,
                     sha256=sha256_file(path), **extra)


def file_problem(entry: FileEntry, root: Path, check_hash: bool = True) -> str | None:
    """Why a listed file no longer matches its entry (None if it does). Records written
    before paths were relative hold absolute paths, which `root /` leaves as they are."""
    path = root / entry.path
    if not inside(root, path):
        return f"{path} is outside the root"
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return f"{path} is missing"
    size = info.st_size
    if not stat.S_ISREG(info.st_mode):
        return f"{path} is not a regular file"
    if size != entry.bytes:
        return f"{path} has {size} bytes, its record says {entry.bytes}"
    if check_hash and sha256_file(path) != entry.sha256:
        return f"{path} sha256 differs from its record"
    return None


def output_problems(record: Completion, root: Path, check_hash: bool = True) -> list[str]:
    """Why the outputs a completion record lists no longer match it ([] when they all do)."""
    return [p for entry in record.outputs if (p := file_problem(entry, root, check_hash))]


def spec_hash(spec: JobSpec) -> str:
    text = json.dumps(spec.work_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def inside_root(root: Path, stored: str, what: str) -> Path:
    """A path a record stores (relative to the root) that a run writes in, checked when used
    (a record on a shared root may have been edited) to lie inside the root with no link on
    the way."""
    path = root / stored
    if path.is_relative_to(root):  # (a version 1 record's absolute path may not be)
        check_no_link(root, path, what)
    return check_inside(root, path, what)


NAMED = "name:"  # RUN as name:NAME: the latest run under the root whose spec's run.name is NAME


def latest_named(name: str, root: Path) -> str:
    """The id of the latest planned run under `root` named `name` (its spec's run.name)."""
    for plan_path in sorted((root / "runs").glob("[!.]*/plan.json"), reverse=True):
        try:
            plan = read_typed(plan_path, Plan)
        except UnreadableRecord:
            continue
        if (plan.spec.get("run") or {}).get("name") == name:
            return plan_path.parent.name
    raise BadInput(f"no run named {name!r} under {root} (RUN as name:NAME finds the latest "
                   "run whose spec's run.name is NAME)")


def locate_run(ref: str, root: Path) -> tuple[Path, str, Plan]:
    """RUN (a run directory, a run id under root, or ``name:NAME``: the latest run named NAME)
    as (its root, its id, its plan), whatever its kind; BadInput if it is not a planned run."""
    if ref.startswith(NAMED):
        ref = latest_named(ref.removeprefix(NAMED), root)
    path = Path(ref).expanduser()
    if (path / "plan.json").exists():
        path = path.resolve()
        root, ref = path.parent.parent, path.name
    plan_path = Plan.path_in(root, run_id=ref)
    if os.sep not in ref:
        check_name(ref, "RUN")
    if os.sep in ref or not plan_path.exists():
        raise BadInput(f"no planned run {ref!r} (looked for {path}/plan.json and "
                       f"{plan_path})")
    try:
        return root, ref, read_typed(plan_path, Plan)
    except UnreadableRecord as exc:
        raise BadInput(f"run {ref}: {exc}") from None


@dataclass(frozen=True)
class Run:
    """Paths and records of one planned run, and the kind that runs it."""

    root: Path
    run_id: str
    kind: Kind = field(compare=False)

    @property
    def dir(self) -> Path:
        return self.root / "runs" / self.run_id

    @property
    def plan_path(self) -> Path:
        return Plan.path_in(self.root, run_id=self.run_id)

    @property
    def log_dir(self) -> Path:
        return self.dir / "logs"

    @cached_property
    def plan(self) -> Plan:
        return read_typed(self.plan_path, Plan)

    def path(self, stored: str) -> Path:
        """A path as this run's records store it (relative to the root) made usable."""
        return self.root / stored

    def inside(self, stored: str, what: str) -> Path:
        """`path(stored)` for a path the run writes in (`inside_root`)."""
        return inside_root(self.root, stored, f"run {self.run_id}: {what}")

    def entry(self, path: Path, **extra: Any) -> FileEntry:
        """`file_entry` for a file of this run."""
        return file_entry(path, self.root, **extra)

    @cached_property
    def spec(self) -> Any:
        return spec_from_dict(self.kind.spec_type, self.plan.spec)

    @cached_property
    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays the kind's plan saved beside plan.json (e.g. the sample), by name."""
        return {path.stem: np.load(path) for path in sorted(self.dir.glob("*.npy"))}

    @property
    def num_tasks(self) -> int:
        return len(self.plan.tasks)

    @property
    def rows(self) -> int:
        return self.plan.rows

    def task_bounds(self, task: int) -> tuple[int, int]:
        entry = self.plan.tasks[task]
        return entry.start, entry.stop

    @property
    def output_dir(self) -> Path:
        return self.inside(self.plan.output_dir, "output directory")

    @property
    def manifest_path(self) -> Path:
        return self.inside(self.plan.manifest_path, "manifest")

    def output_paths(self, task: int) -> dict[str, Path]:
        """Output name -> the file the task writes; the primary output (whose rows a
        completion record counts) first."""
        outputs, first = self.plan.outputs, self.plan.primary
        return {name: self.output_dir / self._inside_output(outputs[name].format(task=task))
                for name in [first, *sorted(set(outputs) - {first})]}

    def part_file_path(self, task: int, part: int, name: str) -> Path:
        """Where part `part` of `task` keeps its file of part-file output `name`."""
        pattern = self.plan.part_files[name]
        return self.output_dir / self._inside_output(pattern.format(task=task, part=part))

    def _inside_output(self, relative: str) -> str:
        return check_relative(relative, f"run {self.run_id}: output file")

    def check_folders(self, task: int | None = None) -> None:
        """BadInput unless every folder this run (and `task`) writes in lies under the root
        with no link on the way: a link planted in a shared root (``parts``, ``tasks``,
        ``leases``, the output directory) would send writes and deletes elsewhere."""
        folders = [self.dir, self.dir / "tasks", self.dir / "leases", self.dir / "parts",
                   self.dir / "attempts", self.log_dir, self.output_dir,
                   self.manifest_path.parent]
        if task is not None:
            folders += [self.parts_dir(task), self.completion_path(task).parent,
                        *(p.parent for p in self.output_paths(task).values()),
                        *(self.part_file_path(task, 0, n).parent for n in self.plan.part_files)]
        for folder in folders:
            if folder.is_relative_to(self.root):  # (a version 1 record's absolute path may
                check_no_link(self.root, folder, f"run {self.run_id}")  # spell it otherwise)
            check_inside(self.root, folder, f"run {self.run_id}: folder")

    def completion_path(self, task: int) -> Path:
        return Completion.path_in(self.root, run_id=self.run_id, task=task)

    def parts_dir(self, task: int) -> Path:
        return PartSidecar.folder_in(self.root, run_id=self.run_id, task=task)

    def completion_record(self, task: int) -> tuple[Completion | None, str | None]:
        """The task's completion record as written (its outputs not checked), or None; with
        why when a record is there but does not parse (a torn record: not done)."""
        try:
            return read_typed(self.completion_path(task), Completion), None
        except FileNotFoundError:
            return None, None
        except UnreadableRecord as exc:
            return None, str(exc)

    def completion(self, task: int, check_hash: bool = True) -> Completion | None:
        """The task's completion record if the task is done: the record parses and every
        output it lists is there with its recorded size (and sha256 unless `check_hash` is
        False)."""
        record = read_typed_record(self.completion_path(task), Completion)
        if record is None or output_problems(record, self.root, check_hash):
            return None
        return record

    def done_records(self, check_hash: bool = True) -> dict[int, Completion]:
        """The completion records of every done task, by task: what `completion` says task
        by task, from one scan of the records' directory (for views over many tasks)."""
        records = [r for p in record_files(self.dir / "tasks", "task-")
                   if (r := read_typed_record(p, Completion)) is not None]
        return {r.task: r for r in sorted(records, key=lambda r: r.task)
                if not output_problems(r, self.root, check_hash)}

    @property
    def submissions_path(self) -> Path:
        return Submissions.path_in(self.root, run_id=self.run_id)

    def submissions(self) -> list[Submission]:
        """Every submission of this run (executor, job ids, sbatch parameters), oldest first."""
        record = read_typed_record(self.submissions_path, Submissions)
        return list(record.submissions) if record else []

    def save_submission(self, record: dict[str, Any], replace_last: bool = False) -> None:
        """Append a submission, or update the latest one as its jobs get queued."""
        history = self.submissions()[:-1 if replace_last else None]
        write_record(self.submissions_path,
                     Submissions(submissions=(*history, Submission.parse(record))))

    @classmethod
    def open(cls, ref: str, root: Path, kinds: Mapping[str, Kind]) -> Run:
        """Resolve RUN (a run directory or a run id under root) to a planned run of one of
        `kinds`."""
        root, ref, plan = locate_run(ref, root)
        kind = plan.kind
        if kind not in kinds:
            raise BadInput(f"run {ref} is a {one_line(kind)[:40]!r} run; a "
                           f"{' or '.join(kinds)} run is needed here")
        run = cls(root, ref, kinds[kind])
        try:
            run.spec  # noqa: B018 - the plan's spec must be one of its kind's
        except BadInput as exc:
            raise BadInput(f"run {ref}: its plan's spec is not a {kind} spec: {exc}") from None
        return run


def open_finished(ref: str, root: Path, kind: Kind, field: str, wrong_kind: str) -> Run:
    """A run of `kind` whose every task is done; BadInput naming `field` when it is of another
    kind (the message goes on with `wrong_kind`) or not finished."""
    _, run_id, plan = locate_run(ref, root)
    if plan.kind != kind.name:
        raise BadInput(f"{field}: run {run_id} is a {plan.kind} run{wrong_kind}")
    run = Run.open(ref, root, {kind.name: kind})
    undone = [t for t in range(run.num_tasks) if run.completion(t, check_hash=False) is None]
    if undone:
        raise BadInput(f"{field}: {kind.name} run {run.run_id} is not finished (tasks "
                       f"{', '.join(map(str, undone[:5]))} not done): resume it first")
    return run

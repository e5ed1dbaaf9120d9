"""The records the run machinery writes under a root, as types: one frozen dataclass per file
with one parse/serialise pair, read once at the edge (`Run`, `attempts`, `catalog`) and used
typed inside. Each record names its ``format`` and ``version``. A record without them was
written by a release before versions (version 1) and reads the same way; a record of a newer
version than this chatspace knows is `NewerRecord`, naming both versions.

A kind's own fields (its plan details, its completion stats, its manifest summary) sit
flat in the same JSON object beside the machinery's, as they always have; the types keep them
as `details`, a dict the kind reads. `docs/formats.md` is generated from these types
(`chatspace.runs.formats_doc`), and a test keeps it so.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

from chatspace.errors import RunFailed


class NewerRecord(RunFailed):
    """A record written by a newer chatspace, in a version this one cannot read."""


class UnreadableRecord(RunFailed):
    """A record that exists but does not parse into its type: torn by a crash or a full disk,
    edited, or not a file chatspace wrote."""


INT64 = 1 << 63


def doc(text: str, default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A field with its documentation (docs/formats.md lists it)."""
    if default is not dataclasses.MISSING:
        kwargs["default"] = default
    return field(metadata={"doc": text}, **kwargs)


@dataclass(frozen=True)
class Item:
    """A typed object inside a record (a file entry, a task's slice)."""

    OMIT_NONE: ClassVar[bool] = False  # leave out optional fields that are None

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Self:
        if not isinstance(data, dict):
            raise TypeError(f"a {cls.__name__} is {str(data)[:40]!r}, not an object")
        return cls(**_typed(cls, {k: v for k, v in data.items() if k in _names(cls)}))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)
                if not (self.OMIT_NONE and getattr(self, f.name) is None
                        and f.default is not dataclasses.MISSING)}


@dataclass(frozen=True)
class Record(Item):
    """A record file: its machinery fields typed, the kind's fields in `details`."""

    FORMAT: ClassVar[str]
    VERSION: ClassVar[int]
    PATH: ClassVar[str]  # where it is written: the docs print it, `path_in` fills it in
    WRITER: ClassVar[str]  # who writes it and when it is complete, for the docs

    @classmethod
    def path_in(cls, root: Path, **fields: Any) -> Path:
        """Where this record lives under `root`: its PATH with `fields` filled in."""
        return root / cls.PATH.format(**fields)

    @classmethod
    def parse(cls, data: dict[str, Any], where: object = "record") -> Self:
        if not isinstance(data, dict):
            raise UnreadableRecord(f"{where} is not a {cls.FORMAT} record (a JSON "
                                   f"{type(data).__name__}, not an object)")
        given_format = data.get("format", cls.FORMAT)
        if given_format != cls.FORMAT:
            raise UnreadableRecord(f"{where} is a {str(given_format)[:40]!r} record, not "
                                   f"{cls.FORMAT!r}")
        version = data.get("version", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise UnreadableRecord(f"{where} has version {str(version)[:20]!r}, which is not "
                                   "a version number")
        if version > cls.VERSION:
            raise NewerRecord(f"{where} is {cls.FORMAT} version {version}; this chatspace "
                              f"reads up to version {cls.VERSION}: upgrade chatspace to read it")
        names = _names(cls) - {"details"}
        details = {k: v for k, v in data.items() if k not in names | {"format", "version"}}
        known = {k: v for k, v in data.items() if k in names}
        return cls(**_typed(cls, known), details=details)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in super().to_dict().items() if k != "details"}
        return {"format": self.FORMAT, "version": self.VERSION, **self.details, **out}


@functools.cache
def _names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """Each field's type, ``X | None`` unwrapped to X (read once per type)."""
    return {name: _unwrap(hint) for name, hint in typing.get_type_hints(cls).items()}


@functools.cache
def _nullable(cls: type) -> frozenset[str]:
    """The fields that may be null (``X | None``)."""
    return frozenset(name for name, hint in typing.get_type_hints(cls).items()
                     if type(None) in typing.get_args(hint))


_JSON_TYPES: dict[Any, tuple[type, ...]] = {
    str: (str,), int: (int,), float: (int, float), bool: (bool,), dict: (dict,),
    tuple: (list, tuple)}


def _check_type(cls: type, name: str, hint: Any, value: Any) -> None:
    """TypeError unless `value` is what JSON gives for `hint` (an int within 64 bits, a bool
    that is no int)."""
    if value is None:
        if name not in _nullable(cls):
            raise TypeError(f"{cls.__name__}.{name} is null")
        return
    expected = _JSON_TYPES.get(typing.get_origin(hint) or hint)
    if expected is None:
        return
    wrong = not isinstance(value, expected) or (bool not in expected and isinstance(value, bool))
    if not wrong and isinstance(value, int) and not -INT64 <= value < INT64:
        wrong = True
    if wrong:
        raise TypeError(f"{cls.__name__}.{name} is {str(value)[:40]!r}, not a "
                        f"{expected[0].__name__}")


def _typed(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Nested typed objects (lists of `Item`s, an `Item`) built from their dicts; TypeError
    when a value is not of its field's type."""
    hints = _hints(cls)
    out = {}
    for name, value in values.items():
        hint = hints[name]
        args = typing.get_args(hint)
        if not _is_item(hint) or value is None:
            _check_type(cls, name, hint, value)
        if value is not None and typing.get_origin(hint) is tuple:  # JSON lists as tuples
            value = tuple(args[0].parse(v) if _is_item(args[0]) else v for v in value)
        elif value is not None and _is_item(hint):
            value = hint.parse(value)
        out[name] = value
    return out


def _unwrap(hint: Any) -> Any:
    """``X | None`` -> X."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) and \
        len(args) == 1 else hint


def _is_item(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, Item)


def _plain(value: Any) -> Any:
    if isinstance(value, Item):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


# -- the records ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FileEntry(Item):
    OMIT_NONE = True  # an output has rows, a part file its part

    path: str = doc("the file, relative to the root (absolute in version 1 records)")
    bytes: int = doc("its size")
    sha256: str = doc("its checksum")
    name: str | None = doc("the output it is (the kind's output name)", None)
    rows: int | None = doc("Parquet rows in it (Parquet outputs)", None)
    part: int | None = doc("the part it came from (files kept per part)", None)


@dataclass(frozen=True, kw_only=True)
class ManifestFile(FileEntry):
    task: int | None = doc("the task that wrote it (null: the reduce)")


@dataclass(frozen=True)
class TaskSlice(Item):
    task: int = doc("task number")
    start: int = doc("first row of the plan's rows")
    stop: int = doc("one past the last row")


@dataclass(frozen=True)
class Plan(Record):
    """What a run is: written once by `plan` (also by `submit`), last of the run's planning
    files, so its presence means the run is planned."""

    FORMAT = "chatspace-plan"
    VERSION = 2
    PATH = "runs/{run_id}/plan.json"
    WRITER = "`chatspace plan` / `submit`; complete when it exists (written last, atomically)"

    run_id: str = doc("the run's id (also its directory name)")
    kind: str = doc("the kind that runs it (embed, steer, vectors, …)")
    created_at: str = doc("when it was planned (ISO 8601, UTC)")
    spec: dict[str, Any] = doc("the resolved job spec, every table with its defaults")
    spec_hash: str = doc("sha256 of the spec's work part (without [slurm])")
    tasks: tuple[TaskSlice, ...] = doc("each task's contiguous slice of the rows")
    output_dir: str = doc("where the tasks' outputs go, relative to the root")
    outputs: dict[str, str] = doc("output name -> file pattern with {task:05d}")
    manifest_path: str = doc("where the reduce writes the manifest, relative to the root")
    tool: dict[str, Any] = doc("chatspace version and git_sha that planned it")
    primary_output: str | None = doc("the output whose rows completion records count", None)
    part_files: dict[str, str] = doc("output name -> pattern with {task} and {part} of files "
                                     "kept per part", default_factory=dict)
    details: dict[str, Any] = doc("the kind's details (model, sources, sampling, …), "
                                  "flat beside the fields above", default_factory=dict)

    @property
    def primary(self) -> str:
        return self.primary_output or next(iter(self.outputs))

    @property
    def rows(self) -> int:
        return self.tasks[-1].stop


@dataclass(frozen=True)
class PartTime(Item):
    part: int = doc("part number within the run's rows")
    rows_in: int = doc("rows of the plan the part covered")
    committed_at: str | None = doc("when its sidecar was written", None)


@dataclass(frozen=True)
class Completion(Record):
    """A finished task: written last by the task, after every output is in place."""

    FORMAT = "chatspace-completion"
    VERSION = 2
    PATH = "runs/{run_id}/tasks/task-{task:05d}.json"
    WRITER = ("the task (`chatspace run task`), after its outputs are assembled; the task is "
              "done when it parses and every file it lists has its recorded size")

    task: int = doc("task number")
    rows: int = doc("rows in the primary output")
    rows_in: int = doc("rows of the plan the task covered")
    outputs: tuple[FileEntry, ...] = doc("every output file with bytes and sha256")
    timings: dict[str, dict[str, float]] = doc("stage -> {busy, idle} seconds; wall -> "
                                               "{seconds}")
    parts: tuple[PartTime, ...] = doc("its parts and when each was committed", ())
    threads: int | None = doc("the CPU threads it computed with (`slurm.cpus_per_task`)", None)
    details: dict[str, Any] = doc("the kind's task stats (tokens, skipped rows, …), flat",
                                  default_factory=dict)


@dataclass(frozen=True)
class PartSidecar(Record):
    """A committed part of a task: written after the part's files; removed when the task
    completes."""

    FORMAT = "chatspace-part"
    VERSION = 2
    PATH = "runs/{run_id}/parts/task-{task:05d}/part-{part:05d}.json"
    WRITER = "the task's writer thread, after the part's Parquet files"

    part: int = doc("part number")
    rows_in: int = doc("rows of the plan it covered")
    rows: dict[str, int] = doc("output name -> rows written")
    stats: dict[str, Any] = doc("the kind's stats of the part")
    files: tuple[str, ...] = doc("names of the part files kept as they are", ())
    committed_at: str | None = doc("when it was committed", None)
    details: dict[str, Any] = doc("unused", default_factory=dict)


@dataclass(frozen=True)
class LogFile(Item):
    path: str = doc("a log file the attempt's stdout or stderr went to")
    offset: int = doc("its size when the attempt started (where the attempt's output begins)")


@dataclass(frozen=True)
class Attempt(Record):
    """One run of a task (or of the reduce), wherever it ran."""

    FORMAT = "chatspace-attempt"
    VERSION = 2
    PATH = "runs/{run_id}/attempts/{task-NNNNN|reduce}/{start}-{host}-{pid}.json"
    WRITER = "the attempt itself, when it starts and again when it ends (a killed one has no end)"

    task: int | None = doc("task number; null for the reduce")
    host: str = doc("where it ran")
    pid: int = doc("its process id")
    started_at: str = doc("when it started")
    slurm: dict[str, Any] | None = doc("its SLURM job and array ids, when under SLURM", None)
    logs: tuple[LogFile, ...] = doc("where its output went", ())
    cuda_visible_devices: str | None = doc("the GPUs it saw", None)
    ended_at: str | None = doc("when it ended", None)
    outcome: str | None = doc("done | failed", None)
    error: str | None = doc("the first line of its error, when it failed", None)
    details: dict[str, Any] = doc("unused", default_factory=dict)


@dataclass(frozen=True)
class Submission(Item):
    executor: str = doc("local | debug | slurm")
    submitted_at: str = doc("when")
    tasks: tuple[int, ...] | None = doc("local/debug: the tasks it ran", None)
    tasks_at_once: int | None = doc("how many of its tasks run at the same time (they share "
                                    "rate limits)", None)
    arrays: tuple[dict[str, Any], ...] = doc("slurm: each job array (job_id, tasks)", ())
    reduce_job_id: str | None = doc("slurm: the afterok reduce job", None)
    sbatch_scripts: tuple[str, ...] | None = doc("slurm: submitit's scripts", None)
    sbatch_parameters: dict[str, Any] | None = doc("slurm: the tasks' sbatch parameters", None)
    reduce_sbatch_parameters: dict[str, Any] | None = doc("slurm: the reduce's", None)
    python: str | None = doc("slurm: the interpreter the jobs run", None)
    slurm_config: dict[str, Any] | None = doc("slurm: the [slurm] table used", None)
    error: str | None = doc("slurm: why a later sbatch failed, if one did", None)


@dataclass(frozen=True)
class Submissions(Record):
    """Every submission of a run, oldest first."""

    FORMAT = "chatspace-submissions"
    VERSION = 2
    PATH = "runs/{run_id}/submissions.json"
    WRITER = ("`submit` / `resume`, before and after each sbatch (version 1: a bare list of "
              "submissions)")

    submissions: tuple[Submission, ...] = doc("each submission", ())
    details: dict[str, Any] = doc("unused", default_factory=dict)

    @classmethod
    def parse(cls, data: Any, where: object = "record") -> Self:
        if isinstance(data, list):  # version 1
            data = {"submissions": data}
        return super().parse(data, where)


@dataclass(frozen=True)
class Manifest(Record):
    """A reduced run: every file checksummed, and the kind's summary."""

    FORMAT = "chatspace-manifest"
    VERSION = 2
    PATH = "{the plan's manifest_path}"
    WRITER = "the reduce, after every task's outputs passed their checks"

    run_id: str = doc("the run")
    kind: str = doc("its kind")
    files: tuple[ManifestFile, ...] = doc("every file of the run: the tasks' (task: N) and the "
                                       "reduce's own (task: null)")
    created_at: str = doc("when the run was planned")
    tool: dict[str, Any] = doc("chatspace version and git_sha that planned it")
    run_config: dict[str, Any] = doc("the spec, secrets redacted")
    totals: dict[str, Any] = doc("sums over tasks, stage timings, reduce_seconds",
                                 default_factory=dict)
    details: dict[str, Any] = doc("the kind's summary (rows_total, per-point metrics, "
                                  "…), flat", default_factory=dict)


RECORDS: tuple[type[Record], ...] = (Plan, Completion, PartSidecar, Attempt, Submissions,
                                     Manifest)

"""The records the run machinery writes under a root, as types (`chatspace.runs.typed_records`):
one frozen dataclass per file, read once at the edge (`Run`, `attempts`, `catalog`) and used
typed inside, each path built from its record's own PATH.

A kind's own fields (its plan details, its completion stats, its manifest summary) sit
flat in the same JSON object beside the machinery's, as they always have; the types keep them
as `details`, a dict the kind reads. `docs/formats.md` is generated from these types
(`chatspace.runs.formats_doc`), and a test keeps it so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

from chatspace.runs.typed_records import Item, Record, doc


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
    """One run of a task (or of the reduce), wherever it ran; `group` in its path is
    ``task-NNNNN`` or ``reduce``."""

    FORMAT = "chatspace-attempt"
    VERSION = 2
    PATH = "runs/{run_id}/attempts/{group}/{started:%Y%m%dT%H%M%S%f}-{host}-{pid}.json"
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


@dataclass(frozen=True)
class Lease(Record):
    """The process that runs a task, named in the task's lease file. Whether the lease is held
    is the POSIX lock on the file alone (the kernel releases it when the process dies, however
    it dies), never what the file says."""

    FORMAT = "chatspace-lease"
    VERSION = 2
    PATH = "runs/{run_id}/leases/task-{task:05d}.lock"
    WRITER = "the process that runs the task, when it takes the lease"

    host: str = doc("where the holder runs")
    pid: int = doc("its process id")
    since: str = doc("when it took the lease")
    slurm_job: str | None = doc("its SLURM job, when under SLURM", None)
    details: dict[str, Any] = doc("unused", default_factory=dict)


@dataclass(frozen=True)
class Endpoint(Record):
    """Where a serving task's server answers (the serve kind): written once the server is
    ready, and again with `ended_at` when it stops. The API key is not in it: it is in the
    0600 file `api-key` beside it."""

    FORMAT = "chatspace-endpoint"
    VERSION = 1
    PATH = "runs/{run_id}/endpoint.json"
    WRITER = "a serve task, when its server first answers and when it has stopped"

    url: str = doc("the OpenAI base URL clients use (http://NODE:PORT/v1)")
    node: str = doc("the host the server runs on")
    port: int = doc("the port it listens on")
    pid: int = doc("the server's process id")
    task_pid: int = doc("the id of the task process that started it (its lease holder)")
    started_at: str = doc("when the server first answered")
    ended_at: str | None = doc("when it stopped (null while it serves)", None)
    stopped_by: str | None = doc("the signal that stopped it (SIGTERM: cancel or the time "
                                 "limit; SIGUSR2: SLURM's pre-timeout signal)", None)
    details: dict[str, Any] = doc("unused", default_factory=dict)


@dataclass(frozen=True)
class RecordedFile(Item):
    OMIT_NONE = True  # a dataset's files have rows and a source, a model's do not

    path: str = doc("the file, relative to the recording's folder")
    bytes: int = doc("its size")
    sha256: str = doc("its checksum")
    rows: int | None = doc("Parquet rows in it (datasets)", None)
    copied_from: str | None = doc("the file it was converted from (datasets; version 1: "
                                  "`from`)", None)


def _from_v1(data: Any) -> Any:
    """A version 1 recording's ``from`` (a keyword in Python) read as ``copied_from``."""
    if isinstance(data, dict) and "from" in data and "format" not in data:
        data = {("copied_from" if k == "from" else k): v for k, v in data.items()}
    return data


@dataclass(frozen=True)
class DatasetInfo(Record):
    """A dataset recorded under the root by `download-dataset` (`{split}` empty for a dataset
    without splits): what it was, where from, every file's size and checksum."""

    FORMAT = "chatspace-dataset"
    VERSION = 2
    PATH = "datasets/raw/{source}/{dataset}/{split}/_info.json"
    WRITER = ("`download-dataset`, last in its staging folder, which then replaces the "
              "folder at once (version 1: without format and version)")

    name: str = doc("the name or path it was recorded from")
    source: str = doc("hf | local | …: where the files came from")
    rows: int = doc("rows in all its files")
    features: dict[str, str] | None = doc("column -> Arrow type")
    files: tuple[RecordedFile, ...] = doc("its Parquet files, with rows and source file")
    tool: dict[str, Any] = doc("chatspace version and git_sha that recorded it")
    subset: str | None = doc("the Hub subset (config)", None)
    split: str | None = doc("the split", None)
    revision: str | None = doc("the Hub revision asked for", None)
    commit: str | None = doc("the Hub commit the files were taken at", None)
    details: dict[str, Any] = doc("unused", default_factory=dict)

    @classmethod
    def parse(cls, data: Any, where: object = "record") -> Self:
        if isinstance(data, dict) and "format" not in data:
            data = {**data, "files": [_from_v1(f) for f in data.get("files", [])]}
        return super().parse(data, where)


@dataclass(frozen=True)
class ModelInfo(Record):
    """A model recorded under the root by `download-model`, where tasks load it from."""

    FORMAT = "chatspace-model"
    VERSION = 2
    PATH = "models/{label}/_info.json"
    WRITER = DatasetInfo.WRITER.replace("download-dataset", "download-model")

    name: str = doc("the name or path it was recorded from")
    label: str = doc("its folder's name (the name with `/` as `__`)")
    copied_from: str = doc("the directory its files were copied from (version 1: `from`)")
    files: tuple[RecordedFile, ...] = doc("its files (weights, config, tokenizer)")
    tool: dict[str, Any] = doc("chatspace version and git_sha that recorded it")
    revision: str | None = doc("the Hub revision asked for", None)
    commit: str | None = doc("the Hub commit the files were taken at", None)
    details: dict[str, Any] = doc("unused", default_factory=dict)

    @classmethod
    def parse(cls, data: Any, where: object = "record") -> Self:
        return super().parse(_from_v1(data), where)


RECORDS: tuple[type[Record], ...] = (Plan, Completion, PartSidecar, Attempt, Submissions,
                                     Manifest, Lease, Endpoint, DatasetInfo, ModelInfo)


@dataclass(frozen=True)
class TaggedFile:
    """A file that is not JSON (safetensors, Parquet) but carries a record's ``format`` and
    ``version`` in its own metadata (safetensors' header metadata, Parquet's schema
    metadata), as text: those formats hold only strings."""

    format: str
    version: int
    path: str
    what: str

    def tags(self) -> dict[str, str]:
        """The metadata to write."""
        return {"format": self.format, "version": str(self.version)}


VECTORS_FORMAT = TaggedFile(
    "chatspace-vectors", 2, "{output_dir}/vectors.safetensors",
    "a vectors run's vectors, one tensor per key (version 1: format `chatspace-vectors/1`)")
STEERING_FORMAT = TaggedFile(
    "chatspace-steering", 2, "any path (`SteeringSpec.save`)",
    "a steering spec: its vectors as tensors, its ops as JSON in metadata `ops` (version 1: "
    "format `chatspace-steering/1`)")
EXPERIMENT_FORMAT = TaggedFile(
    "chatspace-experiment", 1, "experiments/{name}/{experiment_id}.parquet",
    "one experiment's row (`save_experiment`); files before versions are version 1 too")
TAGGED_FILES = (VECTORS_FORMAT, STEERING_FORMAT, EXPERIMENT_FORMAT)

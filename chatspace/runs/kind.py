"""The interface between the run machinery and a kind.

A kind says what its spec is, how a spec becomes rows to run (`plan`), how one task turns
its parts of those rows into tables (`run_parts`), what a finished task's outputs must satisfy
(`check_task`), and what the manifest says about the whole run (`summarize`). The machinery does
the rest the same way for every kind: slicing, part commits, assembly, completion records,
reduce, status, resume and the executors. A kind may add a line to `status` (`status_note`: a
serving run's endpoint) and name the spec key its first argument sets (`argument`).

A kind also says what its results are to the results layer (`query`, `report`), which
names no kind: the Parquet views over its files (`task_views`, `reduce_views`) and over other
views (`derived_views`), its per-generation metrics (`metrics`), its facts in the run table
(`run_facts`) and its report blocks (`report_blocks`).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa

from chatspace.specs import JobSpec

if TYPE_CHECKING:
    from chatspace.runs.formats import Completion, FileEntry, Plan
    from chatspace.runs.record import Run
    from chatspace.runs.run_files import RunFiles
    from chatspace.runs.timing import StageTimer

@dataclass(frozen=True)
class WorkPlan:
    """What a kind resolved from a spec, before the machinery slices and records it."""

    rows: int  # rows the tasks split between them (contiguous, balanced slices)
    details: dict[str, Any]  # the kind's section of plan.json (sources, model, sampling, ...)
    output_dir: Path  # where the tasks' outputs go (includes the run id)
    manifest_path: Path
    # output name -> file name pattern in output_dir, with {task:05d}; the first is the
    # primary output, whose rows completion records count
    outputs: dict[str, str]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # saved as {name}.npy
    files: dict[str, bytes] = field(default_factory=dict)  # saved in the run directory
    # file output name -> pattern in output_dir with {task:05d} and {part:05d}: one file per
    # part that has one (PartOutput.files), kept as it is rather than joined
    part_files: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Part:
    """Rows [start, stop) of the plan: the unit a task commits and resumes from."""

    number: int
    start: int
    stop: int


@dataclass
class PartOutput:
    """One part's results: a table per output name, file contents per part-file output name
    (`WorkPlan.part_files`), and JSON stats for its sidecar."""

    part: Part
    tables: dict[str, pa.Table]
    stats: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Metrics:
    """Per-row metrics of one query view (whose rows name their run: a ``run_id`` column), for
    `query --best` and `--compare`: their columns, and the columns a mean is taken over
    besides the run (e.g. a steering point and scale)."""

    view: str
    keys: tuple[str, ...]
    columns: tuple[str, ...]


@dataclass(frozen=True)
class TaskCheck:
    """What reduce found in one finished task's outputs: problems (empty when none) and the
    row keys it holds, which must be unique across the run."""

    problems: list[str]
    keys: pa.Array


@dataclass(frozen=True)
class Summary:
    """What a kind's `summarize` says about a whole run, for its manifest."""

    details: dict[str, Any]  # the kind's section of the manifest
    totals: dict[str, Any] = field(default_factory=dict)  # sums over the tasks (bytes, …)
    reduce_outputs: list[FileEntry] = field(default_factory=list)  # files the reduce wrote


@dataclass(frozen=True)
class StatusNote:
    """What a kind adds to `chatspace status` about a run (a serving run's endpoint): one
    line, and its facts under `key` in ``status --json``."""

    key: str
    line: str
    facts: dict[str, Any]


def summed(records: list[Completion], key: str) -> float | None:
    """The sum of a kind's completion stat over the records that have it (None if none)."""
    values = [r.details[key] for r in records if r.details.get(key) is not None]
    return sum(values) if values else None


class Kind(ABC):
    name: ClassVar[str]  # embed, steer, vectors, …: the `kind` of its runs' records
    spec_type: ClassVar[type[JobSpec]]
    # query views: view name -> the task output whose files (every done task's) it reads
    task_views: ClassVar[dict[str, str]] = {}
    # view name -> a Parquet file the reduce writes (the manifest lists it with task null)
    reduce_views: ClassVar[dict[str, str]] = {}
    # view name -> (the views it reads, its SELECT over them): e.g. results joined with scores
    derived_views: ClassVar[dict[str, tuple[tuple[str, ...], str]]] = {}
    metrics: ClassVar[Metrics | None] = None
    # (table, key) that a first argument which is not a spec file (.toml) sets (`submit serve
    # MODEL`); None: the first argument is always the spec file
    argument: ClassVar[tuple[str, str] | None] = None

    def help(self) -> str:
        return inspect.cleandoc(self.__class__.__doc__ or self.name)

    @abstractmethod
    def plan(self, spec: JobSpec, root: Path, run_id: str) -> WorkPlan:
        """Resolve inputs from metadata (no heavy reads on a login node); BadInput if wrong."""

    def estimate(self, spec: JobSpec, plan: WorkPlan, execute: bool) -> list[str]:
        """Lines saying what running `plan` costs, for work that runs only with --execute
        (an empty list: nothing to confirm). Raise BadInput if it cannot run as asked."""
        return []

    @abstractmethod
    def run_parts(self, run: Run, task: int, parts: list[Part],
                  timer: StageTimer) -> Iterator[PartOutput]:
        """Process `parts` of `task` in order, yielding each part's tables as soon as they are
        ready (the machinery commits them while the next part runs)."""

    def write_options(self, output: str) -> dict[str, Any]:
        """pyarrow ParquetWriter keywords for an output."""
        return {"compression": "zstd"}

    def task_stats(self, run: Run, task: int, parts: list[dict[str, Any]]) -> dict[str, Any]:
        """The kind's section of a completion record, from its parts' stats."""
        return {}

    @abstractmethod
    def check_task(self, run: Run, task: int, record: Completion) -> TaskCheck:
        """Check one task's outputs (whose bytes already match its completion record)."""

    @abstractmethod
    def summarize(self, run: Run, records: list[Completion]) -> Summary:
        """The kind's section of the manifest, its totals and the files the reduce wrote,
        from every task's completion record."""

    def status_note(self, run: Run, task_states: list[str]) -> StatusNote | None:
        """A line for `chatspace status` beside the tasks' states (`task_states`, by task)."""
        return None

    def run_facts(self, plan: Plan, records: list[Completion]) -> dict[str, Any]:
        """A run's `model`, `backend`, `dataset`, `tokens` and `cost_usd` for the run table,
        from its plan and its done tasks' completion records (a fact left out is null)."""
        return {}

    def report_blocks(self, runs: list[RunFiles]) -> list[str]:
        """The HTML blocks of `chatspace report` for runs of this kind, one `RunFiles` per
        run."""
        return []


Kinds = Mapping[str, Kind]  # the kinds a command knows, by name (`chatspace.kinds.KINDS`)

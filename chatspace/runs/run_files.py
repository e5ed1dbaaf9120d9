"""One run's records, read once: what the results layer and the kinds' report blocks read a run
through (its done tasks' completion records, attempts, manifest and files)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path

from chatspace.runs.attempts import attempts
from chatspace.runs.formats import Attempt, Completion, Manifest
from chatspace.runs.record import Run, read_typed_record


def parse_time(stamp: str | None) -> datetime | None:
    return datetime.fromisoformat(stamp) if stamp else None


@dataclass(frozen=True)
class RunFiles:
    """One run's records, read once. A task is *done* when its completion record lists every
    output with its recorded size (hashes are not re-read here; `chatspace verify` does that)."""

    run: Run

    @cached_property
    def records(self) -> dict[int, Completion]:
        """Completion records of the done tasks, by task."""
        return self.run.done_records(check_hash=False)

    @cached_property
    def attempts(self) -> dict[int, list[Attempt]]:
        return {t: attempts(self.run, t) for t in range(self.run.num_tasks)}

    @cached_property
    def manifest(self) -> Manifest | None:
        return read_typed_record(self.run.manifest_path, Manifest)

    def reduce_file(self, name: str) -> Path | None:
        """A file the run's reduce wrote (listed in its manifest with task null), by name."""
        for entry in self.manifest.files if self.manifest else ():
            if entry.task is None and Path(entry.path).name == name:
                return self.run.path(entry.path)
        return None

    @property
    def missing_tasks(self) -> list[int]:
        return [t for t in range(self.run.num_tasks) if t not in self.records]

    @property
    def state(self) -> str:
        """``done`` (every task done and the manifest written), ``unreduced`` (every task done,
        not reduced yet) or ``incomplete``."""
        if self.missing_tasks:
            return "incomplete"
        return "done" if self.manifest is not None else "unreduced"

    def files(self, output: str) -> list[str]:
        """The files of output `output` that the done tasks list, in task order."""
        return [str(self.run.path(e.path)) for r in self.records.values()
                for e in r.outputs if e.name == output]

    def task_span(self, task: int) -> tuple[datetime | None, datetime | None]:
        """When the task's first attempt started and its last attempt ended."""
        tried = self.attempts.get(task, [])
        starts = [t for a in tried if (t := parse_time(a.started_at))]
        ends = [t for a in tried if (t := parse_time(a.ended_at))]
        return (min(starts) if starts else None), (max(ends) if ends else None)

"""The executor interface: where a run's tasks and its reduce run (`Executor.submit(run,
tasks) -> Submission`). The executors that run here are `chatspace.runs.executors`; SLURM's is
`chatspace.runs.slurm`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from chatspace.runs.formats import Submission
from chatspace.runs.record import Run


class Executor(ABC):
    """Where tasks run: `submit` runs (here) or queues (SLURM) `tasks` of `run` and then its
    reduce, and returns the submission as the run's submissions.json records it."""

    name: ClassVar[str]

    def parallelism(self, run: Run) -> int:
        """How many of the run's tasks run at the same time (at most)."""
        return 1

    @abstractmethod
    def submit(self, run: Run, tasks: Sequence[int]) -> Submission:
        """Run or queue the tasks, then the reduce."""

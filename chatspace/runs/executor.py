"""The executor interface: where a run's tasks and its reduce run (`Executor.submit(run,
tasks) -> Submission`). The executors that run here are `chatspace.runs.executors`; SLURM's is
`chatspace.runs.slurm`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from chatspace.runs.formats import Submission
from chatspace.runs.record import Run


def tasks_at_once(limit: int | None, tasks: int) -> int:
    """How many of `tasks` tasks run at the same time under a throttle of `limit` (None: no
    throttle): what a submission records and the OpenAI rate limits are shared by."""
    return min(limit or tasks, max(tasks, 1))


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

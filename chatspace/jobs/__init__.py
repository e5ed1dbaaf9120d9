"""Job types and the registry that maps a run's ``kind`` to the job type that runs it. The CLI
hands the run machinery a job type from here; the machinery never imports this package."""

from __future__ import annotations

from pathlib import Path

from chatspace.jobs.embed import EmbedJob
from chatspace.jobs.steer.job import SteerJob
from chatspace.jobs.vectors.job import VectorsJob
from chatspace.runs.job import JobType
from chatspace.runs.record import Run

JOB_TYPES: dict[str, JobType] = {job.kind: job for job in (EmbedJob(), SteerJob(),
                                                           VectorsJob())}


def open_run(ref: str, root: Path) -> Run:
    """The planned run RUN (a run id under root, or a run directory) with its job type."""
    return Run.open(ref, root, JOB_TYPES)

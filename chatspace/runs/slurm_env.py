"""The SLURM job this process runs in, read once from the environment SLURM gives a job's
steps (as submitit's `JobEnvironment` reads it): the one place chatspace reads ``SLURM_*``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SlurmJobEnvironment:
    job_id: str  # SLURM_JOB_ID: this job's own id (an array task has one too)
    restart_count: int = 0  # SLURM_RESTART_COUNT: times the job was requeued
    array_job_id: str | None = None  # SLURM_ARRAY_JOB_ID, for an array task
    array_task_id: int | None = None  # SLURM_ARRAY_TASK_ID
    array_task_min: int | None = None
    array_task_max: int | None = None
    array_task_count: int | None = None

    @classmethod
    def current(cls, env: Mapping[str, str] = os.environ) -> SlurmJobEnvironment | None:
        """This process's job, or None outside SLURM."""
        if "SLURM_JOB_ID" not in env:
            return None
        base = cls(job_id=env["SLURM_JOB_ID"],
                   restart_count=int(env.get("SLURM_RESTART_COUNT", "0")))
        array, index = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
        if not (array and index):
            return base
        return cls(job_id=base.job_id, restart_count=base.restart_count, array_job_id=array,
                   array_task_id=int(index),
                   array_task_min=int(env.get("SLURM_ARRAY_TASK_MIN", index)),
                   array_task_max=int(env.get("SLURM_ARRAY_TASK_MAX", index)),
                   array_task_count=int(env.get("SLURM_ARRAY_TASK_COUNT", "1")))

    @property
    def job(self) -> str:
        """The job as squeue and sacct name it: ``ARRAY_INDEX`` for an array task."""
        if self.array_job_id is not None:
            return f"{self.array_job_id}_{self.array_task_id}"
        return self.job_id

    def attempt_fields(self) -> dict[str, Any]:
        """The ``slurm`` section of an attempt record (array fields only for an array task)."""
        fields: dict[str, Any] = {"job_id": self.job_id, "job": self.job,
                                  "restart_count": self.restart_count}
        if self.array_job_id is not None:
            fields.update(array_job_id=self.array_job_id, array_task_id=self.array_task_id,
                          array_task_min=self.array_task_min,
                          array_task_max=self.array_task_max,
                          array_task_count=self.array_task_count)
        return fields

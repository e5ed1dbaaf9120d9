"""The command lines that run a task and a reduce: the one source of truth shared by the local
executor, the SLURM jobs and the sbatch templates in hpc/."""

from __future__ import annotations

from chatspace.runs.record import Run


def task_command(run: Run, task: int | str) -> list[str]:
    return ["chatspace", "run", "task", str(run.dir), "--task", str(task)]


def reduce_command(run: Run) -> list[str]:
    return ["chatspace", "run", "reduce", str(run.dir)]

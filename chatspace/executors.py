"""Executors decide where a run's tasks and its reduce run; the work itself is the same
`chatspace run …` entry points everywhere.

- `debug`: every task and the reduce in this process, one after another (pdb works).
- `local`: each task as a `chatspace run embed-task` subprocess, at most K at a time, then the
  reduce; a progress bar follows the committed parts.
- `slurm`: see `chatspace.slurm`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence

from tqdm import tqdm

from chatspace.errors import RunFailed
from chatspace.pipeline import run_embed_task
from chatspace.reduce import reduce_run, task_problem
from chatspace.runrecord import Run
from chatspace.status import run_status

log = logging.getLogger(__name__)


def task_command(run: Run, task: int | str) -> list[str]:
    """The one command line that runs a task, for every executor and the sbatch templates."""
    return ["chatspace", "run", "embed-task", str(run.dir), "--task", str(task)]


def reduce_command(run: Run) -> list[str]:
    return ["chatspace", "run", "reduce", str(run.dir)]


class DebugExecutor:
    name = "debug"

    def execute(self, run: Run, tasks: Sequence[int]) -> None:
        for task in tasks:
            run_embed_task(run, task)
        reduce_run(run)


class LocalExecutor:
    name = "local"

    def __init__(self, parallelism: int | None = None, progress: bool = True):
        self.parallelism = max(1, parallelism or os.cpu_count() or 1)
        self.progress = progress

    def _start(self, run: Run, task: int, threads: int) -> subprocess.Popen:
        run.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        cmd = [sys.executable, "-m", "chatspace", *task_command(run, task)[1:]]
        with open(run.log_dir / f"local-{task:05d}.log", "ab") as out:
            return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    stdin=subprocess.DEVNULL)

    def execute(self, run: Run, tasks: Sequence[int]) -> None:
        queue = list(tasks)
        workers = min(self.parallelism, max(len(queue), 1))
        threads = max(1, (os.cpu_count() or 1) // workers)
        running: dict[int, subprocess.Popen] = {}
        failed: list[int] = []
        total = run.plan["sampling"]["rows_sampled"]
        bar = tqdm(total=total, unit="rows", disable=not self.progress, desc=run.run_id,
                   file=sys.stderr)
        try:
            while queue or running:
                while queue and len(running) < workers:
                    task = queue.pop(0)
                    running[task] = self._start(run, task, threads)
                time.sleep(0.5)
                for task, proc in list(running.items()):
                    if proc.poll() is not None:
                        del running[task]
                        if proc.returncode != 0:
                            failed.append(task)
                            log.error("task %d exited with %d", task, proc.returncode)
                bar.update(run_status(run)["rows_done"] - bar.n)
        finally:
            for proc in running.values():
                proc.kill()
            bar.close()
        if failed:
            raise RunFailed(f"run {run.run_id}: {len(failed)} task(s) failed:\n  "
                            + "\n  ".join(task_problem(run, t) for t in sorted(failed)))
        reduce_run(run)


def make_executor(name: str, parallelism: int | None = None, progress: bool = True):
    if name == "debug":
        return DebugExecutor()
    if name == "local":
        return LocalExecutor(parallelism, progress)
    from chatspace.slurm import SlurmExecutor

    return SlurmExecutor(parallelism=parallelism)

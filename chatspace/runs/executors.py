"""Executors decide where a run's tasks and its reduce run; the work itself is the same
`chatspace run …` entry points everywhere.

- `debug`: every task and the reduce in this process, one after another (pdb works).
- `local`: each task as a `chatspace run task` subprocess, at most K at a time, then the
  reduce; a progress bar follows the committed parts.
- `slurm`: arrays and an afterok reduce job through submitit (`chatspace.runs.slurm`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from tqdm import tqdm

from chatspace.errors import BadInput, RunFailed
from chatspace.runs.commands import task_command
from chatspace.runs.lease import TaskBusy, describe, holder
from chatspace.runs.record import Run
from chatspace.runs.reduce import reduce_run, task_problem, verify_run
from chatspace.runs.status import run_status
from chatspace.runs.task import run_task
from chatspace.runs.watch import progress_key, progress_line
from chatspace.specs import SlurmConfig

log = logging.getLogger(__name__)


class DebugExecutor:
    name = "debug"

    def execute(self, run: Run, tasks: Sequence[int]) -> None:
        for task in tasks:
            run_task(run, task)
        reduce_run(run)


def visible_gpus() -> list[str]:
    """This machine's GPUs as CUDA_VISIBLE_DEVICES entries (that variable when set, else
    `nvidia-smi -L`); no torch import."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [d.strip() for d in given.split(",") if d.strip() and d.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU")]


class LocalExecutor:
    """Tasks as local processes, at most `parallelism` at once (default: one per GPU, else
    one per core); with GPUs each running task gets its own (CUDA_VISIBLE_DEVICES)."""

    name = "local"

    def __init__(self, parallelism: int | None = None, progress: bool = True):
        self.gpus = visible_gpus()
        self.parallelism = max(1, parallelism or len(self.gpus) or os.cpu_count() or 1)
        self.progress = progress

    def _start(self, run: Run, task: int, threads: int, workers: int,
               gpu: str | None) -> subprocess.Popen:
        run.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads),
               "CHATSPACE_TASKS_AT_ONCE": str(workers)}
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        cmd = [sys.executable, "-m", "chatspace", *task_command(run, task)[1:]]
        with open(run.log_dir / f"local-{task:05d}.log", "ab") as out:
            # its own process group: whatever the task starts (a vLLM engine) goes with it
            return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    stdin=subprocess.DEVNULL, start_new_session=True)

    def execute(self, run: Run, tasks: Sequence[int]) -> None:
        queue = list(tasks)
        workers = min(self.parallelism, max(len(queue), 1))
        threads = max(1, (os.cpu_count() or 1) // workers)
        running: dict[int, subprocess.Popen] = {}
        waiting: list[int] = []  # tasks another process was running: rerun if left undone
        held: dict[int, str] = {}  # task -> its GPU
        free = list(self.gpus)
        failed: list[int] = []
        # a bar on a terminal; in a log, one line each time the run moves
        bar = tqdm(total=run.rows, unit="rows", desc=run.run_id, file=sys.stderr,
                   disable=not (self.progress and sys.stderr.isatty()))
        seen = None
        try:
            with _stopped_by_sigterm():
                while queue or running or waiting:
                    while queue and len(running) < workers:
                        task = queue.pop(0)
                        if free:
                            held[task] = free.pop(0)
                        running[task] = self._start(run, task, threads, workers, held.get(task))
                    time.sleep(0.5)
                    for task, proc in list(running.items()):
                        if proc.poll() is None:
                            continue
                        del running[task]
                        _kill_group(proc, signal.SIGKILL)  # what the task left behind
                        if task in held:
                            free.append(held.pop(task))
                        if proc.returncode == TaskBusy.exit_code:
                            log.info("task %d is running in another process: waiting", task)
                            waiting.append(task)
                        elif proc.returncode != 0:
                            failed.append(task)
                            log.error("task %d exited with %d", task, proc.returncode)
                    for task in [t for t in waiting if holder(run, t) is None]:
                        waiting.remove(task)
                        if run.completion(task) is None:
                            queue.append(task)
                    status = run_status(run)
                    bar.update(status["rows_done"] - bar.n)
                    if self.progress and bar.disable and progress_key(status) != seen:
                        seen = progress_key(status)
                        log.info("%s", progress_line(status))
        finally:
            _stop_all(running.values())
            bar.close()
        if failed:
            raise RunFailed(f"run {run.run_id}: {len(failed)} task(s) failed:\n  "
                            + "\n  ".join(task_problem(run, t) for t in sorted(failed)))
        reduce_run(run)


class Stopped(RunFailed):
    """The submitting process was asked to stop (SIGTERM); its tasks were stopped first."""


@contextlib.contextmanager
def _stopped_by_sigterm() -> Iterator[None]:
    """Turn SIGTERM into `Stopped` for the block, so that the executor stops its tasks and
    waits for them instead of orphaning them (SIGINT raises KeyboardInterrupt already)."""
    def stop(signum: int, frame: object) -> None:
        raise Stopped("stopped by SIGTERM: its tasks were stopped; `chatspace resume RUN` "
                      "continues from their committed parts")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _kill_group(proc: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


def _stop_all(procs: Iterable[subprocess.Popen], grace: float = 10.0) -> None:
    """SIGTERM each task's process group, wait up to `grace` seconds, then SIGKILL them."""
    procs = list(procs)
    for proc in procs:
        _kill_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(deadline - time.monotonic(), 0.1))
        _kill_group(proc, signal.SIGKILL)
        proc.wait()


def check_not_running(run: Run, tasks: Sequence[int]) -> None:
    """BadInput naming the tasks another live process is running (their leases are held)."""
    busy = [(t, owner) for t in tasks if (owner := holder(run, t)) is not None]
    if busy:
        raise BadInput(f"run {run.run_id} is being run elsewhere: "
                       + "; ".join(f"task {t} by {describe(o)}" for t, o in busy[:3])
                       + (f" (and {len(busy) - 3} more)" if len(busy) > 3 else "")
                       + ": wait for it to end, or stop it first")


def launch(run: Run, executor: str, *, slurm: SlurmConfig, max_array: int = 1001,
           parallelism: int | None = None, wait: bool = False,
           progress: bool = True) -> dict[str, Any]:
    """Run (local, debug) or submit (slurm) every task of `run` that is not done, then its
    reduce; record the submission in the run record and return it. A finished run whose
    manifest verifies is left as it is (nothing run, nothing rewritten)."""
    pending = [t for t in range(run.num_tasks) if run.completion(t) is None]
    check_not_running(run, pending)
    if not pending and run.manifest_path.exists() and not verify_run(run):
        log.info("run %s is complete and its manifest verifies: nothing to do", run.run_id)
        return {"executor": executor, "tasks": [], "arrays": [], "nothing_to_do": True}
    if executor == "slurm":
        from chatspace.runs.slurm import SlurmExecutor

        record = SlurmExecutor(slurm, max_array).execute(run, pending)
        if wait:
            from chatspace.runs.watch import follow

            follow(run, progress)
        return record
    record = {"executor": executor, "tasks": pending,
              "submitted_at": datetime.now(UTC).isoformat(timespec="microseconds")}
    run.save_submission(record)
    runner = DebugExecutor() if executor == "debug" else LocalExecutor(parallelism, progress)
    runner.execute(run, pending)
    return record

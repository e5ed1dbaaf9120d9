"""Executors decide where a run's tasks and its reduce run, behind one interface
(`Executor.submit(run, tasks) -> Submission`); the work itself is the same `run_task` /
`chatspace run …` entry points everywhere, so task code does not know where it runs.

- `debug`: every task and the reduce in this process, one after another (pdb works).
- `local`: each task as a `chatspace run task` subprocess, at most K at a time, then the
  reduce; a progress bar follows the committed parts.
- `slurm`: arrays and an afterok reduce job through submitit (`chatspace.runs.slurm`).

The interface is `chatspace.runs.executor`; this module holds the executors that run here and
the entry point that picks one (`launch`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from abc import abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime

from tqdm import tqdm

from chatspace.errors import BadInput, RunFailed
from chatspace.runs.commands import task_command
from chatspace.runs.executor import Executor, tasks_at_once
from chatspace.runs.formats import Submission
from chatspace.runs.lease import TaskBusy, describe, holder
from chatspace.runs.record import Run
from chatspace.runs.reduce import reduce_run, task_problem, verify_run
from chatspace.runs.task import committed_parts, run_task, task_threads
from chatspace.specs import SlurmConfig

log = logging.getLogger(__name__)


class RunsHere(Executor):
    """An executor that runs the tasks from this process (in it, or as its children), then
    the reduce: `submit` returns when the run is done."""

    def submit(self, run: Run, tasks: Sequence[int]) -> Submission:
        submission = Submission(
            executor=self.name, tasks=tuple(tasks),
            tasks_at_once=tasks_at_once(self.parallelism(run), len(tasks)),
            submitted_at=datetime.now(UTC).isoformat(timespec="microseconds"))
        run.save_submission(submission.to_dict())
        self.execute(run, tasks)
        return submission

    @abstractmethod
    def execute(self, run: Run, tasks: Sequence[int]) -> None:
        """Run the tasks, then the reduce."""


class DebugExecutor(RunsHere):
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


class LocalExecutor(RunsHere):
    """Tasks as local processes, at most `parallelism` at once (default: one per GPU, else as
    many as the cores hold at the run's threads per task, `task_threads`); with GPUs each
    running task gets its own (CUDA_VISIBLE_DEVICES)."""

    name = "local"

    def __init__(self, parallelism: int | None = None, progress: bool = True):
        self.gpus = visible_gpus()
        self.given = parallelism
        self.progress = progress

    def parallelism(self, run: Run) -> int:
        cores = len(os.sched_getaffinity(0))
        return max(1, self.given or len(self.gpus) or cores // task_threads(run))

    def _start(self, run: Run, task: int, gpu: str | None) -> subprocess.Popen:
        run.log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        cmd = [sys.executable, "-m", "chatspace", *task_command(run, task)[1:]]
        with open(run.log_dir / f"local-{task:05d}.log", "ab") as out:
            # its own process group: whatever the task starts (a vLLM engine) goes with it
            return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    stdin=subprocess.DEVNULL, start_new_session=True)

    def _say_note(self, run: Run, running: dict[int, subprocess.Popen],
                  said: str | None) -> str | None:
        """Log the kind's status line (a serving run's endpoint) when it changes; return it."""
        states = ["running" if t in running else "done" if run.completion_path(t).exists()
                  else "missing" for t in range(run.num_tasks)]
        note = run.kind.status_note(run, states) if self.progress else None
        if note is not None and note.line != said:
            log.info("run %s: %s", run.run_id, note.line)
            return note.line
        return said

    def execute(self, run: Run, tasks: Sequence[int]) -> None:
        queue = list(tasks)
        workers = min(self.parallelism(run), max(len(queue), 1))
        running: dict[int, subprocess.Popen] = {}
        waiting: list[int] = []  # tasks another process was running: rerun if left undone
        held: dict[int, str] = {}  # task -> its GPU
        free = list(self.gpus)
        failed: list[int] = []
        # a bar on a terminal; in a log, one line each time the run moves
        bar = tqdm(total=run.rows, unit="rows", desc=run.run_id, file=sys.stderr,
                   disable=not (self.progress and sys.stderr.isatty()))
        seen: tuple[int, int] | None = None
        said: str | None = None
        try:
            with _stopped_by_sigterm():
                while queue or running or waiting:
                    while queue and len(running) < workers:
                        task = queue.pop(0)
                        if free:
                            held[task] = free.pop(0)
                        running[task] = self._start(run, task, held.get(task))
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
                    done = rows_done(run, tasks)
                    bar.update(done - bar.n)
                    if self.progress and bar.disable and (done, len(running)) != seen:
                        seen = (done, len(running))
                        log.info("run %s: %d/%d rows; %d task(s) running, %d failed",
                                 run.run_id, done, run.rows, len(running), len(failed))
                    said = self._say_note(run, running, said)
        except (Stopped, KeyboardInterrupt):
            _stop_all(running.values())
            running.clear()
            if any(run.completion(t, check_hash=False) is None for t in tasks):
                raise
            # stopped once every task was done (a serving task ends when it is stopped)
            log.info("run %s: stopped, every task done", run.run_id)
        finally:
            _stop_all(running.values())
            bar.close()
        if failed:
            raise RunFailed(f"run {run.run_id}: {len(failed)} task(s) failed:\n  "
                            + "\n  ".join(task_problem(run, t) for t in sorted(failed)))
        reduce_run(run)


def rows_done(run: Run, tasks: Sequence[int]) -> int:
    """Rows of `run` done so far, from its files alone: the slice of every task that has a
    completion record (or is not among `tasks`, the ones being run: done before), and the
    committed parts of the others."""
    done, running = 0, set(tasks)
    for task in range(run.num_tasks):
        start, stop = run.task_bounds(task)
        if task not in running or run.completion_path(task).exists():
            done += stop - start
        else:
            done += sum(part.rows_in for part in committed_parts(run, task))
    return done


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


def make_executor(name: str, *, slurm: SlurmConfig, max_array: int = 1001,
                  parallelism: int | None = None, progress: bool = True) -> Executor:
    if name == "slurm":
        from chatspace.runs.slurm import SlurmExecutor

        return SlurmExecutor(slurm, max_array)
    return DebugExecutor() if name == "debug" else LocalExecutor(parallelism, progress)


def launch(run: Run, executor: str, *, slurm: SlurmConfig, max_array: int = 1001,
           parallelism: int | None = None, wait: bool = False,
           progress: bool = True, check_hash: bool = False) -> Submission | None:
    """Run (local, debug) or submit (slurm) every task of `run` that is not done, then its
    reduce, and return the submission as recorded. A finished run whose manifest checks out is
    left as it is: nothing run, nothing rewritten (None). Done is told by each output's size
    (cheap on a login node), or also by its sha256 with `check_hash` (`resume`); each file is
    read at most once."""
    pending = [t for t in range(run.num_tasks) if run.completion(t, check_hash) is None]
    check_not_running(run, pending)
    if not pending and run.manifest_path.exists() and \
            not verify_run(run, check_hash, tasks_hashed=check_hash):
        log.info("run %s is complete and its manifest verifies: nothing to do", run.run_id)
        return None
    runner = make_executor(executor, slurm=slurm, max_array=max_array,
                           parallelism=parallelism, progress=progress)
    submission = runner.submit(run, pending)
    if wait and executor == "slurm":
        from chatspace.runs.watch import follow

        follow(run, progress)
    return submission

"""One task of any kind: process slice i of a planned run, part by part.

The kind yields each part's tables; a writer thread commits them (Parquet files, then a
sidecar JSON written last) while the job works on the next part. A task that is killed and run
again skips its committed parts. At the end each output's parts are joined into one file
atomically and a completion record lists every output with bytes and sha256, which makes the
task a no-op on rerun. Nothing here knows which executor runs it, nor what the job computes.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import socket
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq

from chatspace.runs.attempts import recording
from chatspace.runs.files import atomic_path, write_parquet
from chatspace.runs.formats import Completion, PartSidecar, PartTime
from chatspace.runs.kind import Part, PartOutput
from chatspace.runs.lease import holding
from chatspace.runs.record import Run, read_typed, read_typed_record, record_files, write_record
from chatspace.runs.stages import DONE, Stage, get, put
from chatspace.runs.timing import StageTimer

log = logging.getLogger(__name__)

try:
    _MALLOC_TRIM = getattr(ctypes.CDLL("libc.so.6"), "malloc_trim", None)
except OSError:  # not glibc
    _MALLOC_TRIM = None


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS after each part (glibc), so that a task's RSS
    stays flat however many parts its slice has, instead of growing with fragmentation."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def part_bounds(start: int, stop: int, part_rows: int) -> list[Part]:
    """Fixed parts of one slice: the unit a task commits and resumes from."""
    return [Part(n, s, min(s + part_rows, stop))
            for n, s in enumerate(range(start, stop, part_rows))]


def sidecar_path(run: Run, task: int, part: int) -> Path:
    return PartSidecar.path_in(run.root, run_id=run.run_id, task=task, part=part)


def part_file(run: Run, task: int, part: int, output: str) -> Path:
    return run.parts_dir(task) / f"part-{part:05d}.{output}.parquet"


def committed_parts(run: Run, task: int) -> list[PartSidecar]:
    """Sidecars of the parts a task has committed so far (for resuming and for progress); a
    torn sidecar is a part not committed (logged), which the task runs again."""
    return [r for p in record_files(run.parts_dir(task), "part-")
            if (r := read_typed_record(p, PartSidecar)) is not None]


class TaskRunner:
    def __init__(self, run: Run, task: int):
        self.run, self.task, self.kind = run, task, run.kind
        self.timer = StageTimer()

    def _commit(self, out: PartOutput) -> None:
        for name, table in out.tables.items():
            write_parquet(part_file(self.run, self.task, out.part.number, name), [table],
                          table.schema, self.kind.write_options(name))
        for name, content in out.files.items():
            with atomic_path(self.run.parts_dir(self.task) /
                             f"part-{out.part.number:05d}.{name}") as tmp:
                tmp.write_bytes(content)
        write_record(sidecar_path(self.run, self.task, out.part.number), PartSidecar(
            part=out.part.number, rows_in=out.part.stop - out.part.start,
            rows={n: t.num_rows for n, t in out.tables.items()}, stats=out.stats,
            files=tuple(sorted(out.files)),
            committed_at=datetime.now(UTC).isoformat(timespec="microseconds")))
        release_free_memory()
        log.info("task %d: part %d committed (%d rows)", self.task, out.part.number,
                 out.part.stop - out.part.start)

    def _run_parts(self, pending: list[Part]) -> None:
        stop = threading.Event()
        made: queue.Queue = queue.Queue(maxsize=2)

        def write_all() -> None:
            while True:
                with self.timer.measure("write", "idle"):
                    item = get(made, stop)
                if item is DONE:
                    return
                with self.timer.measure("write"):
                    self._commit(item)

        writer = Stage("writer", write_all, stop)
        writer.start()
        outputs = self.kind.run_parts(self.run, self.task, pending, self.timer)
        try:
            for out in outputs:
                put(made, out, stop)
                if stop.is_set():  # the writer failed
                    break
        finally:
            outputs.close()
            # The writer commits every part the job made, also when the job then failed:
            # those parts are what a rerun resumes from. (It stops early only on its own error.)
            put(made, DONE, stop)
            writer.join()
        if writer.error is not None:
            raise writer.error

    def execute(self) -> Completion:
        self._remove_stale_temporaries()
        log.info("task %d of run %s starting on %s (python %s, CUDA_VISIBLE_DEVICES=%s)",
                 self.task, self.run.run_id, socket.gethostname(), sys.prefix,
                 os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))
        start, stop = self.run.task_bounds(self.task)
        parts = part_bounds(start, stop, self.run.spec.run.part_rows)
        done = {sc.part for sc in committed_parts(self.run, self.task)}
        pending = [p for p in parts if p.number not in done]
        if len(pending) < len(parts):
            log.info("task %d: resuming, %d of %d parts already committed", self.task,
                     len(parts) - len(pending), len(parts))
        if pending:
            self._run_parts(pending)
        return self._finish(parts)

    def _remove_stale_temporaries(self) -> None:
        """Temp files of an attempt that was killed mid-write (SIGKILL skips their cleanup)."""
        stale = [tmp for path in self.run.output_paths(self.task).values()
                 for tmp in path.parent.glob(f".tmp-*-{path.name}")]
        stale += self.run.parts_dir(self.task).glob(".tmp-*")
        for path in stale:
            log.info("task %d: removing %s left by an interrupted attempt", self.task, path)
            path.unlink(missing_ok=True)

    def _finish(self, parts: list[Part]) -> Completion:
        sidecars = [read_typed(sidecar_path(self.run, self.task, p.number), PartSidecar)
                    for p in parts]
        entries = []
        for name, path in self.run.output_paths(self.task).items():
            files = [part_file(self.run, self.task, p.number, name) for p in parts]
            schema = pq.read_schema(files[0])
            with self.timer.measure("assemble"):
                write_parquet(path, (pq.read_table(f, schema=schema) for f in files), schema,
                              self.kind.write_options(name))
            rows = sum(sc.rows[name] for sc in sidecars)
            entries.append(self.run.entry(path, name=name, rows=rows))
        for sidecar in sidecars:  # part files move as they are (a rerun finds them moved)
            for name in sidecar.files:
                dest = self.run.part_file_path(self.task, sidecar.part, name)
                source = self.run.parts_dir(self.task) / f"part-{sidecar.part:05d}.{name}"
                if source.exists():
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(source, dest)
                entries.append(self.run.entry(dest, name=name, part=sidecar.part))
        record = Completion(
            task=self.task, rows=entries[0].rows, rows_in=sum(sc.rows_in for sc in sidecars),
            outputs=tuple(entries), timings=self.timer.summary(), threads=task_threads(self.run),
            parts=tuple(PartTime(sc.part, sc.rows_in, sc.committed_at) for sc in sidecars),
            details=self.kind.task_stats(self.run, self.task, [sc.stats for sc in sidecars]))
        write_record(self.run.completion_path(self.task), record)
        remove_parts(self.run.parts_dir(self.task))
        log.info("task %d done: %d rows -> %s", self.task, record.rows,
                 ", ".join(e.path for e in entries))
        return record


def remove_parts(folder: Path) -> None:
    """Remove a completed task's parts folder: only the names a task writes there (parts,
    sidecars, temp files), each unlinked (a link goes, never what it points to); the folder
    itself only once empty, so that nothing chatspace did not write is deleted."""
    for name in os.listdir(folder):
        if name.startswith(("part-", ".tmp-")):
            (folder / name).unlink()
    try:
        folder.rmdir()
    except OSError as exc:
        log.warning("kept %s: %s (chatspace removes only the files it wrote there)", folder,
                    exc.strerror)


def task_threads(run: Run) -> int:
    """The CPU threads every task of `run` computes with, whatever executes it: the CPUs the
    spec gives a task (``slurm.cpus_per_task``, SLURM's default of 1 when unset). Float sums
    depend on the thread count, so one rule everywhere keeps the outputs byte-identical
    across executors."""
    return run.spec.slurm.cpus_per_task or 1


@contextlib.contextmanager
def cpu_threads(count: int) -> Iterator[None]:
    """Run the block with `count` CPU threads: OMP_NUM_THREADS for what it imports or starts
    (torch, a vLLM engine), and torch's pool if torch is loaded; both restored after (the
    debug executor runs tasks in the caller's process)."""
    saved = os.environ.get("OMP_NUM_THREADS")
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    os.environ["OMP_NUM_THREADS"] = str(count)
    if torch is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(before or len(os.sched_getaffinity(0)))


def run_task(run: Run, task: int) -> Completion:
    """The task entry point shared by every executor and the sbatch templates: it holds the
    task's lease (TaskBusy while another process runs the task), computes with the run's
    thread count (`task_threads`), and each call that has work to do is recorded as an
    attempt of the task."""
    run.check_folders(task)
    with holding(run, task):
        done = run.completion(task)
        if done is not None:
            log.info("task %d already complete (%d rows); nothing to do", task, done.rows)
            return done
        with recording(run, task), cpu_threads(task_threads(run)):
            return TaskRunner(run, task).execute()

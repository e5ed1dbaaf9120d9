"""One embed task: embed slice i of a planned run and write its shard.

Three stages overlap on bounded queues: a loader thread (read rows, extract text, tokenize,
bucket), the encoder on the calling thread (the model), and a writer thread (one Parquet part
per fixed part of the slice, committed by a sidecar JSON). A task that is killed and run again
skips its committed parts; at the end the parts are joined into the shard atomically and a
completion record makes the task a no-op on rerun. Nothing here knows which executor runs it.
"""

from __future__ import annotations

import ctypes
import logging
import queue
import shutil
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from chatspace.bucketing import Batch, make_batches
from chatspace.dataset import RowReader
from chatspace.metrics import StageTimer
from chatspace.model import Encoder, ModelRef
from chatspace.runrecord import Run, read_json, sha256_file, write_json
from chatspace.sampling import part_bounds
from chatspace.texts import extract
from chatspace.writer import build_table, shard_schema, write_parquet

log = logging.getLogger(__name__)

_DONE = object()
try:
    _MALLOC_TRIM = getattr(ctypes.CDLL("libc.so.6"), "malloc_trim", None)
except OSError:  # not glibc
    _MALLOC_TRIM = None


@dataclass
class PartWork:
    """One part on its way through the stages."""

    number: int
    ids: list[str]
    texts: list[str]
    metadata: list[dict[str, Any]]
    token_ids: list[list[int]]
    batches: list[Batch]
    skipped: list[dict[str, Any]]
    embeddings: np.ndarray | None = None


def part_paths(parts_dir: Path, number: int) -> tuple[Path, Path]:
    return parts_dir / f"part-{number:05d}.parquet", parts_dir / f"part-{number:05d}.json"


def committed_parts(parts_dir: Path) -> list[dict[str, Any]]:
    """Sidecars of the parts a task has committed so far (for resuming and for progress)."""
    return [read_json(p) for p in sorted(parts_dir.glob("part-*.json"))]


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS after each part (glibc), so that a task's RSS
    stays flat however many parts its slice has, instead of growing with fragmentation."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class _Stage(threading.Thread):
    """A pipeline thread that records its exception and stops the other stages."""

    def __init__(self, name: str, body: Callable[[], None], stop: threading.Event):
        super().__init__(name=name, daemon=True)
        self.body, self.stop, self.error = body, stop, None

    def run(self) -> None:
        try:
            self.body()
        except BaseException as exc:  # re-raised on the task's thread
            self.error = exc
            self.stop.set()


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.2)
            return
        except queue.Full:
            continue


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    while not stop.is_set():
        try:
            return q.get(timeout=0.2)
        except queue.Empty:
            continue
    return _DONE


class EmbedTask:
    def __init__(self, run: Run, task: int):
        self.run, self.task = run, task
        self.spec = run.spec
        self.parts_dir = run.parts_dir(task)
        self.timer = StageTimer()
        self.warm: set[tuple[int, int]] = set()  # compiled batch shapes already run
        plan = run.plan
        self.constants = {
            "source": run.source.origin, "dataset": run.source.dataset,
            "split": self.spec.dataset.split, "model": plan["model"]["label"],
            "created_at": plan["created_at"], "run_id": run.run_id,
        }

    def _load(self, number: int, start: int, stop: int, reader: RowReader,
              encoder: Encoder) -> PartWork:
        cfg = self.spec.dataset
        indices = self.run.sample[start:stop]
        field = cfg.text_field or cfg.messages_field
        wanted = [field, cfg.id_field] if cfg.id_field else [field]
        columns, default_ids = reader.read(indices, wanted)
        values = columns[field]
        ids = [str(v) for v in columns[cfg.id_field]] if cfg.id_field else default_ids
        work = PartWork(number, [], [], [], [], [], [])
        for row, row_id, value in zip(indices.tolist(), ids, values, strict=True):
            text, reason = extract(value, cfg)
            if text is None:
                work.skipped.append({"row": row, "id": row_id, "reason": reason})
                continue
            meta = {"row": row, "field": field}
            if cfg.messages_field:
                meta["extract"] = cfg.extract
            work.ids.append(row_id)
            work.texts.append(text)
            work.metadata.append(meta)
        work.token_ids, truncated = encoder.tokenize(work.texts)
        for meta, tokens, cut in zip(work.metadata, work.token_ids, truncated, strict=True):
            meta.update(tokens=len(tokens), truncated=cut, max_seq_length=encoder.max_seq_length)
        lengths = [len(t) for t in work.token_ids]
        work.batches = make_batches(lengths, self.spec.model, encoder.max_seq_length)
        return work

    def _warm_up(self, work: PartWork, encoder: Encoder) -> None:
        """Compiled: run each new batch shape once, so compilation is timed on its own."""
        for shape in sorted({(b.rows_to, b.pad_to) for b in work.batches} - self.warm):
            with self.timer.measure("compile_warmup"):
                encoder.warm_up(*shape)
            self.warm.add(shape)

    def _encode(self, work: PartWork, encoder: Encoder) -> tuple[int, int]:
        work.embeddings = np.empty((len(work.ids), encoder.dim), dtype=np.float32)
        real = padded = 0
        for batch in work.batches:
            rows = [work.token_ids[i] for i in batch.rows]
            work.embeddings[batch.rows] = encoder.encode_batch(rows, batch.pad_to,
                                                               batch.rows_to)
            real += sum(len(r) for r in rows)
            padded += batch.pad_to * batch.rows_to
        return real, padded

    def _write(self, work: PartWork, tokens: tuple[int, int], dim: int) -> None:
        table = build_table(ids=work.ids, texts=work.texts, metadata=work.metadata,
                            embeddings=work.embeddings, constants=self.constants)
        data_path, sidecar = part_paths(self.parts_dir, work.number)
        write_parquet(data_path, [table], shard_schema(dim))
        write_json(sidecar, {"part": work.number, "rows": table.num_rows,
                             "skipped": work.skipped, "tokens": tokens[0],
                             "padded_tokens": tokens[1]})

    def _run_parts(self, pending: list[tuple[int, int, int]]) -> int:
        with self.timer.measure("model_load"):
            encoder = Encoder(ModelRef(**self.run.plan["model"]), self.spec.model)
        reader = RowReader(self.run.source)
        stop = threading.Event()
        loaded: queue.Queue = queue.Queue(maxsize=2)
        encoded: queue.Queue = queue.Queue(maxsize=2)

        def load_all() -> None:
            for number, start, end in pending:
                with self.timer.measure("load"):
                    work = self._load(number, start, end, reader, encoder)
                with self.timer.measure("load", "idle"):
                    _put(loaded, work, stop)
            _put(loaded, _DONE, stop)

        def write_all() -> None:
            while True:
                with self.timer.measure("write", "idle"):
                    item = _get(encoded, stop)
                if item is _DONE:
                    return
                with self.timer.measure("write"):
                    self._write(*item, encoder.dim)
                    release_free_memory()
                log.info("task %d: part %d committed (%d rows)", self.task, item[0].number,
                         len(item[0].ids))

        stages = [_Stage("loader", load_all, stop), _Stage("writer", write_all, stop)]
        for stage in stages:
            stage.start()
        try:
            while True:
                with self.timer.measure("encode", "idle"):
                    work = _get(loaded, stop)
                if work is _DONE:
                    break
                if self.spec.model.compile:
                    self._warm_up(work, encoder)
                with self.timer.measure("encode"):
                    tokens = self._encode(work, encoder)
                _put(encoded, (work, tokens), stop)
            _put(encoded, _DONE, stop)
            stages[1].join()
        finally:
            stop.set()
            for stage in stages:
                stage.join()
        for stage in stages:
            if stage.error is not None:
                raise stage.error
        return encoder.dim

    def execute(self) -> dict[str, Any]:
        done = self.run.completion(self.task)
        if done is not None:
            log.info("task %d already complete (%d rows); nothing to do", self.task, done["rows"])
            return done
        self._remove_stale_temporaries()
        start, stop = self.run.task_bounds(self.task)
        parts = list(enumerate(part_bounds(start, stop, self.spec.run.part_rows)))
        pending = [(n, s, e) for n, (s, e) in parts
                   if not all(p.exists() for p in part_paths(self.parts_dir, n))]
        if len(pending) < len(parts):
            log.info("task %d: resuming, %d of %d parts already committed", self.task,
                     len(parts) - len(pending), len(parts))
        dim = self._run_parts(pending) if pending else None
        return self._finish([n for n, _ in parts], dim)

    def _remove_stale_temporaries(self) -> None:
        """Temp files of an attempt that was killed mid-write (SIGKILL skips their cleanup)."""
        shard = self.run.shard_path(self.task)
        stale = list(shard.parent.glob(f".tmp-*-{shard.name}"))
        stale += self.parts_dir.glob(".tmp-*")
        for path in stale:
            log.info("task %d: removing %s left by an interrupted attempt", self.task, path)
            path.unlink(missing_ok=True)

    def _finish(self, numbers: list[int], dim: int | None) -> dict[str, Any]:
        data = [part_paths(self.parts_dir, n)[0] for n in numbers]
        sidecars = [read_json(part_paths(self.parts_dir, n)[1]) for n in numbers]
        schema = shard_schema(dim) if dim else pq.read_schema(data[0])
        shard = self.run.shard_path(self.task)
        with self.timer.measure("assemble"):
            write_parquet(shard, (pq.read_table(p, schema=schema) for p in data), schema)
        norms = pq.read_table(shard, columns=["norm"]).column("norm")
        bounds = pc.min_max(norms).as_py() if len(norms) else {"min": None, "max": None}
        skipped = [s for sc in sidecars for s in sc["skipped"]]
        record = {
            "task": self.task, "path": str(shard), "rows": sum(sc["rows"] for sc in sidecars),
            "bytes": shard.stat().st_size, "sha256": sha256_file(shard),
            "min_norm": bounds["min"], "max_norm": bounds["max"],
            "skipped": dict(Counter(s["reason"] for s in skipped)), "skipped_rows": skipped,
            "tokens": sum(sc["tokens"] for sc in sidecars),
            "padded_tokens": sum(sc["padded_tokens"] for sc in sidecars),
            "timings": self.timer.summary(),
        }
        write_json(self.run.completion_path(self.task), record)
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        log.info("task %d done: %d rows, %d skipped -> %s", self.task, record["rows"],
                 len(skipped), shard)
        return record


def run_embed_task(run: Run, task: int) -> dict[str, Any]:
    """Entry point shared by every executor and the sbatch templates."""
    return EmbedTask(run, task).execute()

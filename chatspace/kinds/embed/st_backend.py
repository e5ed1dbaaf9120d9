"""The sentence-transformers backend: embed parts of a task with a local model.

Two stages overlap on a bounded queue: a loader thread (read rows, extract text, tokenize,
bucket by token length) and the encoder on the calling thread (the model). Each finished part
is yielded to the run machinery, which commits it while the next part is encoded.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from chatspace.data.sources import RowReader, SourceInfo
from chatspace.kinds.embed.bucketing import Batch, make_batches
from chatspace.kinds.embed.rows import PartRows, read_part_rows
from chatspace.kinds.embed.schema import build_table
from chatspace.kinds.embed.st_model import Encoder, ModelRef
from chatspace.runs.kind import Part, PartOutput
from chatspace.runs.record import Run
from chatspace.runs.stages import DONE, Stage, get, put
from chatspace.runs.timing import StageTimer


@dataclass
class PartWork:
    """One part on its way through the stages."""

    part: Part
    rows: PartRows
    token_ids: list[list[int]]
    batches: list[Batch]


class STParts:
    def __init__(self, run: Run, source: SourceInfo, sample: np.ndarray, constants: dict,
                 timer: StageTimer):
        self.run, self.spec, self.timer = run, run.spec, timer
        self.source, self.sample, self.constants = source, sample, constants
        self.warm: set[tuple[int, int]] = set()  # compiled batch shapes already run

    def _load(self, part: Part, reader: RowReader, encoder: Encoder) -> PartWork:
        rows = read_part_rows(reader, self.sample[part.start:part.stop], self.spec.dataset)
        if not rows.texts:  # every row of the part was skipped (empty texts)
            return PartWork(part, rows, [], [])
        token_ids, truncated = encoder.tokenize(rows.texts)
        for meta, tokens, cut in zip(rows.metadata, token_ids, truncated, strict=True):
            meta.update(tokens=len(tokens), truncated=cut, max_seq_length=encoder.max_seq_length)
        batches = make_batches([len(t) for t in token_ids], self.spec.model,
                               encoder.max_seq_length)
        return PartWork(part, rows, token_ids, batches)

    def _warm_up(self, work: PartWork, encoder: Encoder) -> None:
        """Compiled: run each new batch shape once, so compilation is timed on its own."""
        for shape in sorted({(b.rows_to, b.pad_to) for b in work.batches} - self.warm):
            with self.timer.measure("compile_warmup"):
                encoder.warm_up(*shape)
            self.warm.add(shape)

    def _encode(self, work: PartWork, encoder: Encoder) -> PartOutput:
        embeddings = np.empty((len(work.rows.ids), encoder.dim), dtype=np.float32)
        real = padded = 0
        for batch in work.batches:
            rows = [work.token_ids[i] for i in batch.rows]
            embeddings[batch.rows] = encoder.encode_batch(rows, batch.pad_to, batch.rows_to)
            real += sum(len(r) for r in rows)
            padded += batch.pad_to * batch.rows_to
        table = build_table(ids=work.rows.ids, texts=work.rows.texts,
                            metadata=work.rows.metadata, embeddings=embeddings,
                            constants=self.constants)
        stats = {"skipped_rows": work.rows.skipped, "tokens": real, "padded_tokens": padded,
                 "embedding_dim": encoder.dim}
        return PartOutput(work.part, {"shard": table}, stats)

    def __call__(self, parts: list[Part]) -> Iterator[PartOutput]:
        with self.timer.measure("model_load"):
            plan_model = self.run.plan.details["model"]
            encoder = Encoder(ModelRef(plan_model["label"], plan_model["path"]),
                              self.spec.model)
        reader = RowReader(self.source)
        stop = threading.Event()
        loaded: queue.Queue = queue.Queue(maxsize=2)

        def load_all() -> None:
            for part in parts:
                with self.timer.measure("read_and_tokenize"):
                    work = self._load(part, reader, encoder)
                with self.timer.measure("read_and_tokenize", "idle"):
                    put(loaded, work, stop)
            put(loaded, DONE, stop)

        loader = Stage("loader", load_all, stop)
        loader.start()
        try:
            while True:
                with self.timer.measure("encode", "idle"):
                    work = get(loaded, stop)
                if work is DONE:
                    break
                if self.spec.model.compile:
                    self._warm_up(work, encoder)
                with self.timer.measure("encode"):
                    out = self._encode(work, encoder)
                yield out
        finally:
            stop.set()
            loader.join()
        if loader.error is not None:
            raise loader.error

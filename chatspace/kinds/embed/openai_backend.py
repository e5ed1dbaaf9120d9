"""The OpenAI backend: embed parts of a task with the embeddings API.

Each part's rows become inputs (tiktoken counts; long inputs truncated or chunked), inputs are
packed into requests, and every request of the part is in flight together, bounded by
`max_in_flight` and the task's share of the rate limits. Vectors are placed by the response's
`index`; a chunked row's vector is the token-weighted mean of its chunks, re-normalised. A row
the API rejects is skipped with reason ``rejected``. Parts are committed by the run machinery,
so a rerun never requests a committed part again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import numpy as np

from chatspace.data.sources import RowReader, SourceInfo
from chatspace.errors import RunFailed
from chatspace.kinds.embed.openai_client import EmbedSender
from chatspace.kinds.embed.openai_plan import Inputs, part_requests
from chatspace.kinds.embed.schema import build_table
from chatspace.kinds.openai_api import SendStats, async_client, sharing_tasks
from chatspace.runs.kind import Part, PartOutput
from chatspace.runs.record import Run
from chatspace.runs.timing import StageTimer


class OpenAIParts:
    def __init__(self, run: Run, source: SourceInfo, sample: np.ndarray, constants: dict,
                 timer: StageTimer):
        self.run, self.spec, self.timer = run, run.spec, timer
        self.source, self.sample, self.constants = source, sample, constants
        self.model = run.plan.details["model"]
        self.reader = RowReader(source)  # keeps the last block read: parts are consecutive

    async def _embed(self, sender: EmbedSender, part: Part) -> PartOutput:
        with self.timer.measure("read_and_tokenize"):
            rows, inputs, requests = part_requests(self.reader,
                                                   self.sample[part.start:part.stop], self.spec)
        before = SendStats(**vars(sender.stats))
        with self.timer.measure("encode"):
            replies = await asyncio.gather(*(
                sender.embed([inputs.values[i] for i in req], [inputs.tokens[i] for i in req])
                for req in requests))
        vectors: list[np.ndarray | None] = [v for reply in replies for v in reply]
        embeddings, rejected = self._rows(inputs, vectors, len(rows.texts))
        for meta, extra in zip(rows.metadata, inputs.row_meta, strict=True):
            meta.update(extra)
        for position in sorted(rejected, reverse=True):
            rows.skip(position, "rejected")
        keep = [i for i in range(len(embeddings)) if i not in rejected]
        table = build_table(ids=rows.ids, texts=rows.texts, metadata=rows.metadata,
                            embeddings=embeddings[keep], constants=self.constants)
        price = self.model["price_per_million"] or 0.0
        tokens = sender.stats.tokens - before.tokens
        stats = {"skipped_rows": rows.skipped, "embedding_dim": embeddings.shape[1],
                 "tokens": tokens, "requests": sender.stats.requests - before.requests,
                 "retries": sender.stats.retries - before.retries,
                 "cost_usd": tokens * price / 1e6}
        return PartOutput(part, {"shard": table}, stats)

    def _rows(self, inputs: Inputs, vectors: list[np.ndarray | None],
              rows: int) -> tuple[np.ndarray, set[int]]:
        """One vector per row (the API's own, or for a chunked row the token-weighted mean of
        its chunks, re-normalised) and the positions of rows with a rejected input."""
        dims = {v.size for v in vectors if v is not None}
        if len(dims) > 1:
            raise RunFailed(f"the API returned embeddings of different sizes: {sorted(dims)}")
        dim = dims.pop() if dims else (self.model["dimensions"] or 1)
        out = np.zeros((rows, dim), dtype=np.float32)
        sums: dict[int, np.ndarray] = {}  # chunked rows: token-weighted sum of their chunks
        rejected: set[int] = set()
        for vector, row, tokens in zip(vectors, inputs.row_of, inputs.tokens, strict=True):
            if vector is None:
                rejected.add(row)
            elif "chunks" in inputs.row_meta[row]:
                sums[row] = sums.get(row, 0.0) + vector.astype(np.float64) * tokens
            else:
                out[row] = vector
        for row, total in sums.items():
            if row not in rejected:
                out[row] = total / max(np.linalg.norm(total), 1e-12)
        return out, rejected

    def __call__(self, parts: list[Part]) -> Iterator[PartOutput]:
        with asyncio.Runner() as loop:
            client = async_client(self.model)
            sender = loop.run(self._sender(client))
            try:
                for part in parts:
                    yield loop.run(self._embed(sender, part))
            finally:
                loop.run(client.close())

    async def _sender(self, client: Any) -> EmbedSender:
        return EmbedSender(client, self.model, self.spec.openai, sharing_tasks(self.run))

"""Sending embedding requests to the OpenAI API (`chatspace.kinds.openai_api` does the sending):
base64 vectors placed by their ``index`` and checked, and a 400 bisected down to the one
rejected input."""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

import numpy as np

from chatspace.kinds.embed.spec import OpenAIConfig
from chatspace.kinds.openai_api import Malformed, Rejected, Sender

log = logging.getLogger(__name__)


class EmbedSender(Sender):
    """Sends one task's embedding requests; `embed` returns float32 vectors per input, or None
    for an input the API rejected."""

    def __init__(self, client: Any, model: dict[str, Any], cfg: OpenAIConfig, tasks_at_once: int):
        super().__init__(model["label"], cfg, tasks_at_once)
        self.client, self.model = client, model

    async def embed(self, values: list[Any], tokens: list[int]) -> list[np.ndarray | None]:
        """Embed one request's inputs; a rejected request is bisected to the rejected input."""
        try:
            return await self.send(lambda: self._call(values), sum(tokens),
                                   f"{len(values)} inputs")
        except Rejected as exc:
            if len(values) == 1:
                log.warning("input rejected by the API (skipped): %s", exc)
                return [None]
        half = len(values) // 2
        first, second = await asyncio.gather(self.embed(values[:half], tokens[:half]),
                                             self.embed(values[half:], tokens[half:]))
        return first + second

    async def _call(self, values: list[Any]) -> tuple[list[np.ndarray], Any]:
        extra = {"dimensions": self.model["dimensions"]} if self.model["dimensions"] else {}
        raw = await self.client.embeddings.with_raw_response.create(
            model=self.model["label"], input=values, encoding_format="base64", **extra)
        body = raw.parse()
        vectors: list[np.ndarray | None] = [None] * len(values)
        if len(body.data) != len(values):
            raise Malformed(f"{len(body.data)} embeddings for {len(values)} inputs")
        for item in body.data:
            if not 0 <= item.index < len(values) or vectors[item.index] is not None:
                raise Malformed(f"bad or repeated index {item.index}")
            vector = (np.frombuffer(base64.b64decode(item.embedding), dtype="<f4")
                      if isinstance(item.embedding, str)
                      else np.asarray(item.embedding, dtype=np.float32))
            if not np.isfinite(vector).all() or vector.size == 0:
                raise Malformed("non-finite or empty embedding")
            vectors[item.index] = vector
        if len({v.size for v in vectors}) != 1:
            raise Malformed("embeddings of different dimensions")
        self.stats.tokens += int(getattr(body.usage, "prompt_tokens", 0) or 0)
        return vectors, raw.headers

"""The OpenAI backend's planning side: the API model a run uses, its prices, how rows become
inputs (truncated or chunked at 8,191 tokens) and inputs become requests, and the dry-run
estimate of tokens, requests, cost and time. Requests are packed the same way by the estimate
and by the tasks, so the estimate counts exactly the requests a run sends."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from chatspace.data.sources import RowReader, SourceInfo
from chatspace.errors import BadInput
from chatspace.kinds.embed.rows import PartRows, read_part_rows
from chatspace.kinds.embed.spec import EmbedSpec
from chatspace.kinds.openai_api import (
    BATCH_DISCOUNT,
    PRICES,
    api_key,
    check_access,
    timeout_seconds,
)
from chatspace.kinds.tokens import token_ids
from chatspace.runs.kind import WorkPlan
from chatspace.runs.plan import slice_bounds
from chatspace.runs.task import part_bounds

log = logging.getLogger(__name__)

DEFAULT_MODEL = "text-embedding-3-small"
MAX_INPUT_TOKENS = 8191
NATIVE_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072,
                     "text-embedding-ada-002": 1536}
ENCODING = "cl100k_base"  # the tokenizer of every model above


def api_model(spec: EmbedSpec) -> dict[str, Any]:
    """The plan's model section for an OpenAI run (no secrets)."""
    name = spec.model.name or os.environ.get("OPENAI_EMBED_MODEL") or DEFAULT_MODEL
    dims = spec.openai.dimensions
    if dims is not None and not name.startswith("text-embedding-3"):
        raise BadInput(f"openai.dimensions (--dimensions) is only for text-embedding-3-* "
                       f"models, not {name}")
    if dims is not None and name in NATIVE_DIMENSIONS and not 1 <= dims <= NATIVE_DIMENSIONS[name]:
        raise BadInput(f"openai.dimensions (--dimensions) must be 1 to "
                       f"{NATIVE_DIMENSIONS[name]} for {name}, got {dims}")
    timeout = timeout_seconds(spec.openai.timeout)
    price = spec.openai.price_per_million
    return {"backend": "openai", "label": name, "base_url": os.environ.get("OPENAI_BASE_URL"),
            "timeout": timeout, "dimensions": dims, "encoding": ENCODING,
            "price_per_million": price if price is not None else PRICES.get(name, (None,))[0]}


@dataclass
class Inputs:
    """A part's rows as API inputs: a row is one input (text, or its first 8,191 token ids
    when truncated) or, with long_inputs=chunk, several token-id chunks."""

    values: list[str | list[int]] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # per input
    row_of: list[int] = field(default_factory=list)  # input -> position of its row
    row_meta: list[dict[str, Any]] = field(default_factory=list)  # per row


def make_inputs(texts: list[str], long_inputs: str) -> Inputs:
    out = Inputs()
    for position, ids in enumerate(token_ids(texts, ENCODING)):
        meta: dict[str, Any] = {"tokens": len(ids), "truncated": False}
        if len(ids) <= MAX_INPUT_TOKENS:
            pieces: list[str | list[int]] = [texts[position]]
        elif long_inputs == "chunk":
            pieces = [ids[i:i + MAX_INPUT_TOKENS] for i in range(0, len(ids), MAX_INPUT_TOKENS)]
            meta["chunks"] = len(pieces)
        else:
            pieces = [ids[:MAX_INPUT_TOKENS]]
            meta.update(truncated=True, tokens_embedded=MAX_INPUT_TOKENS)
        for piece in pieces:
            out.values.append(piece)
            out.tokens.append(len(piece) if isinstance(piece, list) else len(ids))
            out.row_of.append(position)
        out.row_meta.append(meta)
    return out


def pack_requests(tokens: list[int], max_inputs: int, max_tokens: int) -> list[list[int]]:
    """Consecutive inputs grouped into requests of at most `max_inputs` inputs and
    `max_tokens` tokens."""
    requests: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i, count in enumerate(tokens):
        if current and (len(current) >= max_inputs or total + count > max_tokens):
            requests.append(current)
            current, total = [], 0
        current.append(i)
        total += count
    if current:
        requests.append(current)
    return requests


def part_requests(reader: RowReader, indices: np.ndarray,
                  spec: EmbedSpec) -> tuple[PartRows, Inputs, list[list[int]]]:
    """A part's rows, their API inputs, and the requests (input positions) that send them:
    the one place both the estimate and the tasks pack requests."""
    rows = read_part_rows(reader, indices, spec.dataset)
    inputs = make_inputs(rows.texts, spec.openai.long_inputs)
    return rows, inputs, pack_requests(inputs.tokens, spec.openai.max_inputs_per_request,
                                       spec.openai.max_tokens_per_request)


def estimate_run(spec: EmbedSpec, plan: WorkPlan, execute: bool) -> list[str]:
    """Read every sampled row, count its tokens exactly and pack the requests each part will
    send; BadInput if executing without an API key, or with one the API rejects."""
    cfg, model = spec.openai, plan.details["model"]
    if execute:
        key = api_key()
        if not key:
            raise BadInput("OPENAI_API_KEY is not set (environment or ./.env): needed with "
                           "--execute")
        check_access(model, key)
    reader = RowReader(SourceInfo.from_dict(plan.details["source"]))
    sample: np.ndarray = plan.arrays["sample"]
    rows = tokens = requests = truncated = chunked = skipped = 0
    for start, stop in slice_bounds(plan.rows, spec.run.array):
        for part in part_bounds(start, stop, spec.run.part_rows):
            part_rows, inputs, packed = part_requests(reader, sample[part.start:part.stop], spec)
            rows += len(part_rows.texts)
            skipped += len(part_rows.skipped)
            tokens += sum(inputs.tokens)
            truncated += sum(m["truncated"] for m in inputs.row_meta)
            chunked += sum("chunks" in m for m in inputs.row_meta)
            requests += len(packed)
    price = model["price_per_million"]
    cost = (f"${tokens * price / 1e6:,.4f} standard, "
            f"${tokens * price * BATCH_DISCOUNT / 1e6:,.4f} with the Batch API"
            if price is not None else "unknown (no price for this model: set "
                                      "openai.price_per_million)")
    minutes = max(tokens / cfg.tokens_per_minute, requests / cfg.requests_per_minute)
    return [
        f"model {model['label']} ({model['encoding']}), {spec.run.array} task(s)",
        f"rows: {rows:,} to embed, {skipped:,} skipped (empty or not text)",
        f"tokens: {tokens:,} in {requests:,} requests; {truncated:,} rows truncated at "
        f"{MAX_INPUT_TOKENS:,} tokens, {chunked:,} embedded in chunks",
        f"cost: {cost}",
        f"time at {cfg.requests_per_minute:,} requests/min and {cfg.tokens_per_minute:,} "
        f"tokens/min: {minutes:,.1f} min",
    ]

"""The judge's model as the plan records it (no secrets), the exact input tokens of each
rendered request (tiktoken, the judge model's encoding), and the dry-run estimate of an
OpenAI judge run: rows, tokens in and out, cost at standard and Batch prices, time at the
rate limits. Nothing is sent and nothing written without ``--execute``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from chatspace.errors import BadInput
from chatspace.kinds.judge.rubric import Rubric
from chatspace.kinds.judge.spec import JudgeSpec
from chatspace.kinds.openai_api import (
    BATCH_DISCOUNT,
    PRICES,
    api_key,
    check_access,
    timeout_seconds,
)
from chatspace.kinds.tokens import encoding

# the per-message and per-reply overhead of chat formatting, in tokens (gpt-4o and 4.1 families)
TOKENS_PER_MESSAGE, TOKENS_PER_REPLY = 3, 3
O200K_FAMILIES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4")


def judge_model(spec: JudgeSpec, root: Path) -> dict[str, Any]:
    """The plan's model section: the API model with its encoding and prices, or the local
    model's directory."""
    judge = spec.judge
    if judge.backend == "local":
        from chatspace.models import find_model

        try:
            model = find_model(judge.model, root)
        except BadInput as exc:
            raise BadInput(f"judge.model (--judge-model): {exc}") from None
        return {"backend": "local", "label": model.label, "path": model.path,
                "runtime": judge.runtime, "dtype": judge.dtype}
    known = PRICES.get(judge.model, (None, None))
    return {"backend": "openai", "label": judge.model,
            "base_url": os.environ.get("OPENAI_BASE_URL"),
            "timeout": timeout_seconds(judge.timeout),
            "encoding": "o200k_base" if judge.model.startswith(O200K_FAMILIES) else "cl100k_base",
            "input_price": judge.input_price if judge.input_price is not None else known[0],
            "output_price": judge.output_price if judge.output_price is not None else known[1]}


def input_tokens(messages: list[dict[str, str]], name: str) -> int:
    """What the API counts as the prompt of these chat messages."""
    texts = [m["content"] for m in messages]
    counted = encoding(name).encode_batch(texts, disallowed_special=())
    return sum(len(ids) + TOKENS_PER_MESSAGE for ids in counted) + TOKENS_PER_REPLY


def output_tokens(rubric: Rubric, name: str) -> int:
    """The tokens of the longest well-formed answer, within max_tokens."""
    answer = encoding(name).encode(rubric.longest_answer(), disallowed_special=())
    return min(rubric.max_tokens, len(answer))


def estimate_lines(spec: JudgeSpec, details: dict[str, Any], execute: bool) -> list[str]:
    """What an OpenAI judge run costs; BadInput when executing without an API key, or with one
    the API rejects."""
    model, judge = details["model"], spec.judge
    if execute:
        key = api_key()
        if not key:
            raise BadInput("OPENAI_API_KEY is not set (environment or ./.env): needed with "
                           "--execute")
        check_access(model, key, "judge.model (--judge-model)")
    rows, tokens_in = details["rows"], details["input_tokens"]
    tokens_out, bound = details["output_tokens"] * rows, details["max_tokens"] * rows
    prices = (model["input_price"], model["output_price"])
    if None in prices:
        cost = ("unknown (no price for this model: set judge.input_price and "
                "judge.output_price)")
    else:
        usd = (tokens_in * prices[0] + tokens_out * prices[1]) / 1e6
        most = (tokens_in * prices[0] + bound * prices[1]) / 1e6
        cost = (f"${usd:,.4f} standard (at most ${most:,.4f}), ${usd * BATCH_DISCOUNT:,.4f} "
                "with the Batch API")
    minutes = max((tokens_in + bound) / judge.tokens_per_minute,
                  rows / judge.requests_per_minute)
    return [
        f"judge {model['label']} ({model['encoding']}), {spec.run.array} task(s)",
        f"rows: {rows:,} generations to judge, one request each",
        f"tokens: {tokens_in:,} in (exact), {tokens_out:,} out estimated from the answer "
        f"format (at most {bound:,} at max_tokens {details['max_tokens']}); a reply that "
        "breaks the format is asked once more",
        f"cost: {cost}",
        f"time at {judge.requests_per_minute:,} requests/min and {judge.tokens_per_minute:,} "
        f"tokens/min: {minutes:,.1f} min",
    ]

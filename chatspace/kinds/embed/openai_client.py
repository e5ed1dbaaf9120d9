"""Sending embedding requests to the OpenAI API: a bounded number in flight, token buckets on
requests/min and tokens/min (corrected from the ``x-ratelimit-*`` headers), retries with
jittered, capped backoff that honour ``Retry-After`` / ``retry-after-ms``, an immediate stop on
401/403/404 and ``insufficient_quota``, and a 400 bisected down to the one rejected input.

The openai client's own retries are off (``max_retries=0``): its policy differs between
versions (it retries ``insufficient_quota`` and raises at once past a long Retry-After).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from chatspace.errors import RunFailed
from chatspace.kinds.embed.spec import OpenAIConfig

log = logging.getLogger(__name__)

BACKOFF_BASE = 0.5  # seconds; doubled each attempt, jittered
BACKOFF_CAP = 60.0
BURST_SECONDS = 1.0  # bucket capacity: this many seconds of the rate


class Rejected(Exception):
    """A 400 for a request: some input in it is not acceptable."""


class Malformed(Exception):
    """A 200 whose body cannot be used (bad JSON, wrong count, indices or dimension)."""


class TokenBucket:
    """`rate` units per second, at most `rate * BURST_SECONDS` banked; a request larger than
    the bucket waits for a full bucket and leaves it in debt."""

    def __init__(self, per_minute: float):
        self.rate = per_minute / 60.0
        self.level = self.capacity
        self.stamp = time.monotonic()

    @property
    def capacity(self) -> float:
        return max(self.rate * BURST_SECONDS, 1.0)

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    async def take(self, amount: float) -> None:
        while True:
            self._refill()
            need = min(amount, self.capacity)
            if self.level >= need:
                self.level -= amount
                return
            await asyncio.sleep((need - self.level) / self.rate)

    def drain(self, seconds: float) -> None:
        """The server says the budget is spent: wait `seconds` before the next request."""
        self._refill()
        self.level = min(self.level, -seconds * self.rate)

    def limit_to(self, per_minute: float) -> None:
        if per_minute / 60.0 < self.rate:
            log.info("rate limit lowered to %.0f/min from the server's headers", per_minute)
            self.rate = per_minute / 60.0


def _duration(text: str | None) -> float | None:
    """``x-ratelimit-reset-*`` values such as ``1s``, ``6m0s``, ``20ms`` in seconds."""
    if not text:
        return None
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"([\d.]+)(ms|h|m|s)", text)
    return sum(float(v) * units[u] for v, u in parts) if parts else None


def api_message(exc: Exception) -> str:
    """The first line of what the API said in an error reply (at most 200 characters)."""
    return getattr(exc, "message", str(exc)).splitlines()[0][:200]


def retry_after(headers: Any) -> float | None:
    """The server's requested wait, from retry-after-ms or retry-after (seconds)."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            continue  # an HTTP date: fall back to backoff
    return None


@dataclass
class SendStats:
    requests: int = 0
    retries: int = 0
    tokens: int = 0  # usage.prompt_tokens the API reported (what is billed)
    errors: dict[str, int] = field(default_factory=dict)


class Sender:
    """Sends requests for one task; `embed` returns float32 vectors per input, or None for an
    input the API rejected."""

    def __init__(self, client: Any, model: dict[str, Any], cfg: OpenAIConfig, tasks_at_once: int):
        self.client, self.model, self.tasks = client, model, tasks_at_once
        self.slots = asyncio.Semaphore(cfg.max_in_flight)
        self.limits = (cfg.requests_per_minute, cfg.tokens_per_minute)
        self.request_bucket = TokenBucket(cfg.requests_per_minute / tasks_at_once)
        self.token_bucket = TokenBucket(cfg.tokens_per_minute / tasks_at_once)
        self.max_attempts = cfg.max_attempts
        self.stats = SendStats()

    async def embed(self, values: list[Any], tokens: list[int]) -> list[np.ndarray | None]:
        """Embed one request's inputs; a rejected request is bisected to the rejected input."""
        try:
            return await self._request(values, sum(tokens))
        except Rejected as exc:
            if len(values) == 1:
                log.warning("input rejected by the API (skipped): %s", exc)
                return [None]
        half = len(values) // 2
        first, second = await asyncio.gather(self.embed(values[:half], tokens[:half]),
                                             self.embed(values[half:], tokens[half:]))
        return first + second

    async def _request(self, values: list[Any], tokens: int) -> list[np.ndarray]:
        for attempt in range(1, self.max_attempts + 1):
            async with self.slots:
                await self.request_bucket.take(1)
                await self.token_bucket.take(tokens)
                self.stats.requests += 1
                try:
                    return await self._call(values)
                except Exception as exc:  # noqa: BLE001 - classified below
                    wait, reason = self._classify(exc)
            self.stats.errors[reason] = self.stats.errors.get(reason, 0) + 1
            if attempt == self.max_attempts:
                raise RunFailed(f"OpenAI request of {len(values)} inputs failed after "
                                f"{attempt} attempts; last error: {reason}")
            backoff = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1))
            delay = wait if wait is not None else backoff * random.uniform(0.5, 1.0)
            self.stats.retries += 1
            log.warning("OpenAI request failed (%s); retry %d in %.2f s", reason, attempt, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _classify(self, exc: Exception) -> tuple[float | None, str]:
        """(server-requested wait, reason) for a retryable error; raise for a fatal one."""
        import openai

        if isinstance(exc, openai.APIStatusError):
            status, code = exc.status_code, getattr(exc, "code", None)
            message = api_message(exc)
            if status == 429 and code == "insufficient_quota":
                raise RunFailed(f"OpenAI: insufficient quota (429 insufficient_quota): "
                                f"{message}; committed parts are kept") from None
            if status in (401, 403):  # checked when planned: revoked or changed since
                raise RunFailed(f"OpenAI rejected the API key ({status}): {message}; "
                                "committed parts are kept") from None
            if status == 404:
                raise RunFailed(f"OpenAI: model {self.model['label']!r} or endpoint not found "
                                f"(404): {message}; committed parts are kept") from None
            if status in (408, 409, 429) or status >= 500:
                return retry_after(exc.response.headers), f"HTTP {status}"
            raise Rejected(f"HTTP {status}: {message}") from None
        if isinstance(exc, openai.APITimeoutError):
            return None, "timeout"
        if isinstance(exc, openai.APIConnectionError):
            return None, "connection error"
        if isinstance(exc, Malformed | ValueError):  # JSONDecodeError is a ValueError
            return None, f"malformed response ({exc.__class__.__name__})"
        raise exc

    async def _call(self, values: list[Any]) -> list[np.ndarray]:
        extra = {"dimensions": self.model["dimensions"]} if self.model["dimensions"] else {}
        raw = await self.client.embeddings.with_raw_response.create(
            model=self.model["label"], input=values, encoding_format="base64", **extra)
        self._correct_rates(raw.headers)
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
        return vectors

    def _correct_rates(self, headers: Any) -> None:
        """Follow the server's view of the limits: a lower limit than configured lowers this
        task's share of it; a spent budget pauses until it resets."""
        for bucket, unit, configured in ((self.request_bucket, "requests", self.limits[0]),
                                         (self.token_bucket, "tokens", self.limits[1])):
            limit = headers.get(f"x-ratelimit-limit-{unit}")
            if limit and limit.isdigit() and int(limit) < configured:
                bucket.limit_to(int(limit) / self.tasks)
            remaining = headers.get(f"x-ratelimit-remaining-{unit}")
            reset = _duration(headers.get(f"x-ratelimit-reset-{unit}"))
            if remaining == "0" and reset:
                bucket.drain(reset)

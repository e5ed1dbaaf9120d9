"""Sending requests to the OpenAI API, or any endpoint that speaks it, for every kind that does
(embeddings, judgments): the API key, the one price table, a bounded number of requests in
flight, token buckets on requests/min and tokens/min (corrected from the ``x-ratelimit-*``
headers), retries with jittered, capped backoff that honour ``Retry-After`` /
``retry-after-ms``, and an immediate stop on 401/403/404 and ``insufficient_quota``.

The openai client's own retries are off (``max_retries=0``): its policy differs between
versions (it retries ``insufficient_quota`` and raises at once past a long Retry-After).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from chatspace.errors import BadInput, RunFailed
from chatspace.runs.executor import tasks_at_once
from chatspace.runs.record import Run

log = logging.getLogger(__name__)

T = TypeVar("T")

# USD per 1M tokens, (input, output), at standard prices; the Batch API costs half of both.
# Spec keys override them (embed: openai.price_per_million; judge: judge.input_price and
# judge.output_price). Embedding models bill input only.
PRICES: dict[str, tuple[float, float]] = {
    "text-embedding-3-small": (0.02, 0.0), "text-embedding-3-large": (0.13, 0.0),
    "text-embedding-ada-002": (0.10, 0.0),
    "gpt-4.1": (2.00, 8.00), "gpt-4.1-mini": (0.40, 1.60), "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o": (2.50, 10.00), "gpt-4o-mini": (0.15, 0.60),
}
BATCH_DISCOUNT = 0.5
DEFAULT_TIMEOUT = 60.0


def timeout_seconds(given: float | None) -> float:
    """Seconds per request: the spec's, else $OPENAI_TIMEOUT, else 60."""
    try:
        return given or float(os.environ.get("OPENAI_TIMEOUT") or DEFAULT_TIMEOUT)
    except ValueError:
        raise BadInput(f"OPENAI_TIMEOUT {os.environ['OPENAI_TIMEOUT']!r} is not a number of "
                       "seconds") from None


def api_key() -> str | None:
    """OPENAI_API_KEY from the environment, else from ./.env (never copied anywhere)."""
    key = os.environ.get("OPENAI_API_KEY")
    if key:
        return key
    dotenv = Path(".env")
    if dotenv.is_file():
        for line in dotenv.read_text().splitlines():
            name, sep, value = line.strip().removeprefix("export ").partition("=")
            if sep and name.strip() == "OPENAI_API_KEY":
                return value.strip().strip("'\"") or None
    return None


BACKOFF_BASE = 0.5  # seconds; doubled each attempt, jittered
BACKOFF_CAP = 60.0
BURST_SECONDS = 1.0  # bucket capacity: this many seconds of the rate


def async_client(model: dict[str, Any]) -> Any:
    """The task's client for a plan's model section (its base URL and timeout), with the key
    from the environment; the client's own retries off."""
    import openai

    key = api_key()
    if not key:
        raise RunFailed("OPENAI_API_KEY is not set in the task's environment or ./.env")
    return openai.AsyncOpenAI(api_key=key, base_url=model["base_url"],
                              timeout=model["timeout"], max_retries=0)


def sharing_tasks(run: Run) -> int:
    """How many tasks of this run share the rate limits: as its latest submission records,
    else (tasks started by hand with the templates) the array throttle or the array size."""
    submitted = run.submissions()
    if submitted and submitted[-1].tasks_at_once:
        return submitted[-1].tasks_at_once
    return tasks_at_once(run.spec.slurm.array_parallelism, run.num_tasks)


def check_access(model: dict[str, Any], key: str, what: str = "model.name") -> None:
    """Before anything is written, one free request (``GET /models/{model}``): BadInput when
    the API rejects the key or does not serve the model. Any other failure (a server error,
    no route from this node) is logged and left to the tasks, which retry."""
    import openai

    client = openai.OpenAI(api_key=key, base_url=model["base_url"], timeout=model["timeout"],
                           max_retries=1)
    try:
        client.models.retrieve(model["label"])
    except openai.APIStatusError as exc:
        message = api_message(exc)
        if exc.status_code in (401, 403):
            raise BadInput(f"OpenAI rejected the API key ({exc.status_code}): "
                           f"{message}") from None
        if exc.status_code == 404:
            raise BadInput(f"{what}: OpenAI does not serve {model['label']!r} (404): "
                           f"{message}") from None
        log.warning("could not check the API key before submitting (HTTP %d): the tasks will "
                    "retry", exc.status_code)
    except openai.APIError as exc:
        log.warning("could not check the API key before submitting (%s): the tasks will "
                    "retry", type(exc).__name__)


class Rejected(Exception):
    """A 400 for a request: some input in it is not acceptable."""


class Malformed(Exception):
    """A 200 whose body cannot be used (bad JSON, wrong count, indices or dimension)."""


class Limits(Protocol):
    """A spec section's request limits (the whole run's: each task takes its share)."""

    requests_per_minute: int
    tokens_per_minute: int
    max_in_flight: int
    max_attempts: int


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

    def refund(self, amount: float) -> None:
        """Give back what a request took that the server failed (not one it refused for its
        rate limit: that budget is spent)."""
        self._refill()
        self.level = min(self.capacity, self.level + amount)

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
    output_tokens: int = 0  # usage.completion_tokens (chat)


class Sender:
    """Sends one task's requests within its share of the run's limits (`tasks_at_once` tasks
    share them), retrying what can be retried."""

    def __init__(self, label: str, limits: Limits, tasks_at_once: int):
        self.label, self.tasks = label, tasks_at_once
        self.slots = asyncio.Semaphore(limits.max_in_flight)
        self.limits = (limits.requests_per_minute, limits.tokens_per_minute)
        self.request_bucket = TokenBucket(limits.requests_per_minute / tasks_at_once)
        self.token_bucket = TokenBucket(limits.tokens_per_minute / tasks_at_once)
        self.max_attempts = limits.max_attempts
        self.stats = SendStats()

    async def send(self, call: Callable[[], Awaitable[tuple[T, Any]]], tokens: int,
                   what: str) -> T:
        """`call()`'s result once it succeeds: it sends one request of `tokens` tokens and
        returns (result, response headers); Rejected (a 400) and fatal errors pass through,
        the rest are retried up to the attempt limit."""
        for attempt in range(1, self.max_attempts + 1):
            async with self.slots:
                await self.request_bucket.take(1)
                await self.token_bucket.take(tokens)
                self.stats.requests += 1
                try:
                    result, headers = await call()
                    self._correct_rates(headers)
                    return result
                except Exception as exc:  # noqa: BLE001 - classified below
                    wait, reason = self._classify(exc)
            if reason != "HTTP 429":  # a fault, not the server's limit: its share is free
                self.request_bucket.refund(1)
                self.token_bucket.refund(tokens)
            self.stats.errors[reason] = self.stats.errors.get(reason, 0) + 1
            if attempt == self.max_attempts:
                raise RunFailed(f"OpenAI request of {what} failed after {attempt} attempts; "
                                f"last error: {reason}")
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
                raise RunFailed(f"OpenAI: model {self.label!r} or endpoint not found "
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

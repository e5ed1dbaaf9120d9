"""A local HTTP server that plays OpenAI's ``/v1/embeddings`` and ``/v1/chat/completions`` (and
``GET /v1/models/{id}``, logged apart in `checks`) for tests and benchmarks.

Chat replies are a deterministic judge (`judge_answer`): a score from the last user message's
hash, as JSON when structured output is asked; some messages get a reply without a number
(once, or always) or a content-filter stop, by their hash too.

It enforces the API's input limits (≤ 2,048 inputs, ≤ 300k tokens per request, ≤ 8,191 tokens
per input, no empty input), answers with deterministic vectors derived from each input
(`vector_for`), reports ``usage`` and ``x-ratelimit-*`` headers, can enforce a tokens/min limit
(a one-second token bucket, answering 429 with ``retry-after-ms``), logs every request, and
injects scripted faults (``revoked``: the key is rejected from then on). Only 127.0.0.1 is used.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from chatspace.kinds.tokens import encoding

FAULTS = ("429", "500", "503", "slow", "drop", "truncated", "shuffle", "count")
MODELS = ("text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002",
          "gpt-4.1-mini", "gpt-4o-mini")
REMINDER = "Reply with only"  # how the judge's second ask starts (the rubric's reminder)


def judge_answer(messages: list[dict[str, str]], high: int = 3,
                 field: str | None = None) -> tuple[str, str]:
    """The stand-in judge's (reply, finish_reason) to chat `messages`: by the first user
    message's hash h, a score h % (high + 1); h % 10 == 7: no number at the first ask (a
    number once reminded); h % 10 == 8: never a number; h % 10 == 9: a content-filter stop."""
    first = next(m["content"] for m in messages if m["role"] == "user")
    h = int.from_bytes(hashlib.sha256(first.encode()).digest()[:8], "little")
    reminded = messages[-1]["content"].startswith(REMINDER)
    if h % 10 == 9:
        return "", "content_filter"
    if h % 10 == 8 or (h % 10 == 7 and not reminded):
        return "I would rather not give a number.", "stop"
    score = h % (high + 1)
    return (json.dumps({field: score}) if field else f"Score: {score}"), "stop"
POISON = "POISON-ROW"  # an input containing this gets a 400, like a policy rejection


def vector_for(value: str | list[int], dim: int) -> np.ndarray:
    """The server's embedding of one input: a unit float32 vector seeded by its content."""
    key = value if isinstance(value, str) else "tokens:" + json.dumps(value)
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dim)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


class FakeOpenAI:
    def __init__(self, *, key: str = "sk-test-0123456789", dim: int = 64,
                 latency: float = 0.0, jitter: float = 0.0,
                 tokens_per_minute: int | None = None,
                 fault: Callable[[int], str | None] | None = None, slow_seconds: float = 3.0):
        self.key, self.dim, self.latency, self.jitter = key, dim, latency, jitter
        self.tokens_per_minute, self.fault, self.slow_seconds = (tokens_per_minute, fault,
                                                                 slow_seconds)
        self.log: list[dict[str, Any]] = []
        self.checks: list[tuple[str, int]] = []  # (path, status) of each GET /v1/models/…
        self.revoked = False
        self.lock = threading.Lock()
        self.count = 0
        self.bucket = (tokens_per_minute or 0) / 60.0  # one second's worth
        self.stamp = time.monotonic()
        self.encoding = encoding("cl100k_base")
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                server.handle(self)

            def do_GET(self) -> None:  # noqa: N802
                server.model_info(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def env(self) -> dict[str, str]:
        return {"OPENAI_BASE_URL": self.url, "OPENAI_API_KEY": self.key}

    def ok_requests(self) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.log if e["status"] == 200 and e["fault"] is None]

    # -- request handling ------------------------------------------------------------------
    def _send(self, h: BaseHTTPRequestHandler, status: int, body: Any,
              headers: dict[str, str] | None = None, cut: bool = False) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data) // 2 if cut else len(data)))
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.end_headers()
        try:
            h.wfile.write(data[: len(data) // 2] if cut else data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
            h.close_connection = True

    def _error(self, h: BaseHTTPRequestHandler, status: int, message: str, code: str | None,
               headers: dict[str, str] | None = None) -> None:
        self._send(h, status, {"error": {"message": message, "type": "invalid_request_error",
                                         "param": None, "code": code}}, headers)

    def _take_tokens(self, tokens: int) -> float:
        """Seconds to wait before `tokens` fit the tokens/min bucket (0: taken now)."""
        if not self.tokens_per_minute:
            return 0.0
        rate = self.tokens_per_minute / 60.0
        with self.lock:
            now = time.monotonic()
            self.bucket = min(rate, self.bucket + (now - self.stamp) * rate)
            self.stamp = now
            if self.bucket >= min(tokens, rate):
                self.bucket -= tokens
                return 0.0
            return (min(tokens, rate) - self.bucket) / rate

    def model_info(self, h: BaseHTTPRequestHandler) -> None:
        """``GET /v1/models/{id}``: 401 for a wrong (or revoked) key, 404 for a model it does
        not serve."""
        name = h.path.rstrip("/").removeprefix("/v1/models/")
        status = (401 if self.revoked or h.headers.get("Authorization") != f"Bearer {self.key}"
                  else 200 if name in MODELS else 404)
        with self.lock:
            self.checks.append((h.path, status))
        if status == 401:
            return self._error(h, 401, "Incorrect API key provided.", "invalid_api_key")
        if status == 404:
            return self._error(h, 404, f"The model '{name}' does not exist", "model_not_found")
        return self._send(h, 200, {"id": name, "object": "model", "created": 0,
                                   "owned_by": "system"})

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length", 0)))
        with self.lock:
            self.count += 1
            number = self.count
        entry: dict[str, Any] = {"n": number, "time": time.time(), "status": None,
                                 "fault": None, "inputs": [], "tokens": 0,
                                 "headers": {k.lower(): v for k, v in h.headers.items()}}
        with self.lock:
            self.log.append(entry)  # filled in as the request is answered
        self._answer(h, body, entry, number)

    def _answer(self, h: BaseHTTPRequestHandler, raw: bytes, entry: dict[str, Any],
                number: int) -> None:
        route = h.path.rstrip("/")
        if route not in ("/v1/embeddings", "/v1/chat/completions"):
            entry["status"] = 404
            return self._error(h, 404, f"no route {h.path}", "unknown_url")
        fault = self.fault(number) if self.fault else None
        if fault == "revoked":
            self.revoked = True
        if self.revoked or h.headers.get("Authorization") != f"Bearer {self.key}":
            entry["status"] = 401
            return self._error(h, 401, "Incorrect API key provided.", "invalid_api_key")
        request = json.loads(raw)
        if route == "/v1/chat/completions":
            return self._chat(h, request, entry, fault)
        inputs = request["input"] if isinstance(request["input"], list) else [request["input"]]
        if inputs and isinstance(inputs[0], int):
            inputs = [inputs]
        entry["inputs"] = inputs
        tokens = [len(self.encoding.encode(v, disallowed_special=())) if isinstance(v, str)
                  else len(v) for v in inputs]
        entry["tokens"] = sum(tokens)
        problem = (f"{len(inputs)} inputs: at most 2048" if len(inputs) > 2048 else
                   f"{sum(tokens)} tokens: at most 300000 per request"
                   if sum(tokens) > 300_000 else
                   "an input is empty" if any(v in ("", []) for v in inputs) else
                   "an input exceeds 8191 tokens" if max(tokens, default=0) > 8191 else
                   "the input was rejected" if any(isinstance(v, str) and POISON in v
                                                   for v in inputs) else None)
        if problem:
            entry["status"] = 400
            return self._error(h, 400, problem, None)
        if self._faulted(h, entry, fault):
            return None
        wait = self._take_tokens(sum(tokens))
        if wait > 0:
            entry["status"], entry["fault"] = 429, "rate-limited"
            return self._error(h, 429, "Rate limit reached for tokens per min.",
                               "rate_limit_exceeded", {"retry-after-ms": f"{wait * 1000:.0f}"})
        time.sleep(self.latency + random.uniform(-self.jitter, self.jitter) if self.latency
                   else 0)
        if fault == "slow":
            time.sleep(self.slow_seconds)
        dim = request.get("dimensions") or self.dim
        data = []
        for index, value in enumerate(inputs):
            vector = vector_for(value, dim)
            embedding = (base64.b64encode(vector.tobytes()).decode()
                         if request.get("encoding_format") == "base64" else vector.tolist())
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        if fault == "shuffle":
            random.Random(number).shuffle(data)
        if fault == "count":
            data = data[:-1]
        entry["status"] = 200
        limit = str(self.tokens_per_minute or 1_000_000)
        refill_ms = (1000 * max(0.0, 1 - self.bucket * 60 / self.tokens_per_minute)
                     if self.tokens_per_minute else 0.0)
        headers = {"x-ratelimit-limit-requests": "10000", "x-ratelimit-remaining-requests": "9999",
                   "x-ratelimit-reset-requests": "6ms", "x-ratelimit-limit-tokens": limit,
                   "x-ratelimit-remaining-tokens": str(max(0, int(self.bucket))),
                   "x-ratelimit-reset-tokens": f"{refill_ms:.0f}ms"}
        self._send(h, 200, {"object": "list", "data": data, "model": request["model"],
                            "usage": {"prompt_tokens": sum(tokens),
                                      "total_tokens": sum(tokens)}},
                   headers, cut=fault == "truncated")
        return None

    def _faulted(self, h: BaseHTTPRequestHandler, entry: dict[str, Any],
                 fault: str | None) -> bool:
        """Answer with the injected fault, if it is one that replaces the answer."""
        entry["fault"] = fault if fault in FAULTS or fault in ("quota",) else None
        if fault == "quota":
            entry["status"] = 429
            self._error(h, 429, "You exceeded your current quota.", "insufficient_quota")
        elif fault == "429":
            entry["status"] = 429
            self._error(h, 429, "Rate limit reached.", "rate_limit_exceeded",
                        {"retry-after": "0.2"})
        elif fault in ("500", "503"):
            entry["status"] = int(fault)
            self._error(h, int(fault), "The server had an error.", None)
        elif fault == "drop":
            entry["status"] = 0
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
        else:
            return False
        return True

    def _chat(self, h: BaseHTTPRequestHandler, request: dict[str, Any], entry: dict[str, Any],
              fault: str | None) -> None:
        """``/v1/chat/completions``: the deterministic judge (`judge_answer`), with usage."""
        messages = request["messages"]
        entry["messages"] = messages
        tokens = sum(len(self.encoding.encode(m["content"], disallowed_special=())) + 3
                     for m in messages) + 3
        entry["tokens"] = tokens
        if self._faulted(h, entry, fault):
            return
        wait = self._take_tokens(tokens)
        if wait > 0:
            entry["status"], entry["fault"] = 429, "rate-limited"
            return self._error(h, 429, "Rate limit reached for tokens per min.",
                               "rate_limit_exceeded", {"retry-after-ms": f"{wait * 1000:.0f}"})
        if self.latency:
            time.sleep(self.latency + random.uniform(-self.jitter, self.jitter))
        entry["response_format"] = request.get("response_format")
        schema = (request.get("response_format") or {}).get("json_schema", {}).get("schema")
        field = schema["required"][0] if schema else None
        high = max(schema["properties"][field].get("enum", [3])) if schema else 3
        reply, finish = judge_answer(messages, high, field)
        entry["status"] = 200
        out = len(self.encoding.encode(reply))
        self._send(h, 200, {
            "id": f"chatcmpl-{entry['n']}", "object": "chat.completion", "created": 0,
            "model": request["model"],
            "choices": [{"index": 0, "finish_reason": finish,
                         "message": {"role": "assistant", "content": reply or None}}],
            "usage": {"prompt_tokens": tokens, "completion_tokens": out,
                      "total_tokens": tokens + out}}, cut=fault == "truncated")

"""The ASGI middleware `chatspace serve` adds to vLLM's OpenAI-compatible server (vLLM's
``--middleware``): it reads chatspace's request fields (`fields`) off ``/v1/chat/completions``
and ``/v1/completions`` requests, hands vLLM the request with the hooks in ``vllm_xargs`` and
the spec's fingerprint in ``cache_salt``, and adds what the hooks gathered to the response as
``chatspace``; and it answers chatspace's own routes:

- ``GET /v1/steering``: the default spec, registered vectors, counters;
- ``POST /v1/steering/vectors`` ``{"name", "vector"}``: register a vector;
- ``PUT /v1/steering/default`` ``{"steering": [...] | null}``: the default spec;
- ``GET /v1/captures/{id}``: a capture as one safetensors file, released once fetched.

Everything else, and every request whose bearer token vLLM would refuse, goes to vLLM as it
came (vLLM answers 401). A request without chatspace fields, on a server without a default
spec, reaches vLLM untouched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import uuid
from dataclasses import replace
from typing import Any

from chatspace.serve.fields import DEFAULT, FIELDS, Extras, FieldError, steering_of
from chatspace.serve.state import ServeState, Settings, describe
from chatspace.steering import shm
from chatspace.steering.wire import EXTRA_KEY, CollectAsk, Hooks

log = logging.getLogger(__name__)

GENERATE = ("/v1/chat/completions", "/v1/completions")
CAPTURE = re.compile(r"^/v1/captures/([0-9a-f]{32})$")
BODY_LIMIT = 64 << 20


class SteeringMiddleware:
    def __init__(self, app):
        self.app = app
        self.state: ServeState | None = None
        self.settings = Settings.from_env()

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "").removeprefix(scope.get("root_path", ""))
        ours = path.startswith(("/v1/steering", "/v1/captures/"))
        if scope["type"] != "http" or not (ours or (scope["method"] == "POST" and
                                                   path in GENERATE)):
            return await self.app(scope, receive, send)
        if not _authorized(scope):
            return await self.app(scope, receive, send)  # vLLM answers (401), or it is open
        if self.state is None:
            self.state = ServeState(scope["app"].state.engine_client, self.settings)
        body = await _read(receive)
        if body is None:
            return await _respond(send, 413, _error("body", f"the request is over "
                                                            f"{BODY_LIMIT >> 20} MB"))
        if ours:
            status, answer = await self._route(scope["method"], path, body)
            return await _respond(send, status, answer)
        await self._generate(scope, body, receive, send)

    async def _route(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        state = self.state
        if match := CAPTURE.match(path):
            if method != "GET":
                return 405, _error("method", f"{method} {path}: only GET")
            data = state.take(match.group(1))
            if data is None:
                return 404, _error("id", f"capture {match.group(1)} is not held: fetched "
                                         "already, expired, or never made")
            return 200, data
        routes = {("GET", "/v1/steering"), ("POST", "/v1/steering/vectors"),
                  ("PUT", "/v1/steering/default")}
        if (method, path) not in routes:
            return 404, _error("path", f"{method} {path}: no such chatspace route")
        if method == "GET":
            await state.prepare(None)
            return 200, {**state.describe(),
                         "worker": {**state.worker, **await state.rpc("chatspace_stats")}}
        try:
            request = json.loads(body)
            if not isinstance(request, dict):
                raise FieldError("body", "must be a JSON object")
            if path.endswith("/vectors"):
                vector = state.register(request.get("name"), request.get("vector"))
                return 200, {"name": request["name"], "size": vector.shape[0]}
            if "steering" not in request:
                raise FieldError("steering", "is required (a list of points, or null)")
            points = request["steering"]
            previous = describe(state.default)
            state.default = None if points is None else steering_of(points, state.shape,
                                                                    state.lookup)
            return 200, {**state.describe(), "previous": previous}
        except json.JSONDecodeError as exc:
            return 400, _error("body", f"body: not JSON ({exc})")
        except ValueError as exc:
            return 400, _error(getattr(exc, "field", "body"), str(exc))

    async def _generate(self, scope, body: bytes, receive, send) -> None:
        state = self.state
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        if isinstance(request, dict) and EXTRA_KEY in (request.get("vllm_xargs") or {}):
            return await _respond(send, 400, _error(  # hooks come from checked fields only
                f"vllm_xargs.{EXTRA_KEY}", f"vllm_xargs.{EXTRA_KEY}: is chatspace's own: ask "
                f"with {', '.join(FIELDS)}"))
        if not isinstance(request, dict) or not (set(request) & set(FIELDS)
                                                 or state.default is not None):
            state.counters.requests += 1
            return await self.app(scope, _replay(body, receive), send)
        try:
            extras = Extras.parse(request, state.shape, state.lookup)
        except FieldError as exc:
            return await _respond(send, 400, _error(exc.field, str(exc)))
        spec = state.default if extras.steering is DEFAULT else extras.steering
        state.counters.requests += 1
        if spec is None and not extras.collects:
            return await self.app(scope, _replay(json.dumps(request).encode(), receive), send)
        fingerprint = await state.prepare(spec)
        key = uuid.uuid4().hex
        hooks = Hooks(key, fingerprint, extras.capture_layers, extras.metrics_k)
        request["vllm_xargs"] = {**(request.get("vllm_xargs") or {}),
                                 EXTRA_KEY: json.dumps(hooks.to_wire())}
        if extras.capture is not None and extras.capture.needs_prompt_rows():
            request["cache_salt"] = uuid.uuid4().hex  # its prompt rows must be computed
        elif fingerprint is not None:
            request["cache_salt"] = "-".join(filter(None, (request.get("cache_salt"),
                                                           fingerprint)))
        wanted_ids = request.get("return_token_ids")
        if extras.metrics_k:
            request["return_token_ids"] = True
        # a whole response waits for its collection (the hooks' count, captures, metrics),
        # which it then carries; a stream's is collected once it ended
        response = _Response(send, buffer=not request.get("stream"))
        done = False
        try:
            await self.app(scope, _replay(json.dumps(request).encode(), receive),
                           response.send)
            if response.status == 200:
                done = True
                await self._finish(hooks, extras, response, request, wanted_ids)
        finally:
            if not done:
                await state.drop(key)

    async def _finish(self, hooks: Hooks, extras: Extras, response: _Response,
                      request: dict[str, Any], wanted_ids: Any) -> None:
        state = self.state
        answer = json.loads(response.body) if response.buffer else None
        usage = (answer or {}).get("usage") or {}
        prompt_len = usage.get("prompt_tokens", 0)
        options = extras.capture
        result = await state.collect(CollectAsk(
            key=hooks.key, total=prompt_len + usage.get("completion_tokens", 0) - 1,
            prompt_len=prompt_len, rows=options.rows if options else "all",
            pool=options.pool if options else "none", dtype=options.dtype if options else None,
            cap=shm.cap_bytes(), ttl=shm.ttl_seconds()))
        if result.steered:
            state.counters.steered += 1
            state.counters.layer_calls += result.steered
        if result.error is None and hooks.spec is not None and not result.steered:
            result = replace(result, error="steering was requested but no decoder-layer hook "
                                           "fired: the model does not run through the hooks")
        if answer is None:
            if result.error:
                log.error("streamed request %s: %s", hooks.key, result.error)
            return
        if result.error:
            status = 503 if "CHATSPACE_MAX_SHM_GB" in result.error else 500
            field = "capture" if extras.capture_layers else "steering"
            return await response.flush(status, _error(field, result.error))
        added: dict[str, Any] = {"steered": result.steered}
        if result.segment is not None:
            added["capture"] = {"id": state.hold(result.segment, result.entries),
                                "layers": list(extras.capture_layers), "rows": options.rows,
                                "pool": options.pool}
        if extras.metrics_k:
            added["metrics"] = _metrics(state, answer, request, result)
            if not wanted_ids:  # asked for the metrics' sake: the answer as the client asked
                answer.pop("prompt_token_ids", None)
                for choice in answer["choices"]:
                    choice.pop("token_ids", None)
                    choice.pop("prompt_token_ids", None)
        answer["chatspace"] = added
        await response.flush(200, answer)


def _metrics(state: ServeState, answer: dict[str, Any], request: dict[str, Any],
             result) -> dict[str, Any]:
    from chatspace.kinds.steer.metrics import generation_metrics

    choice = answer["choices"][0]
    thinking = (request.get("chat_template_kwargs") or {}).get(
        "enable_thinking", state.think_end_id is not None)
    return generation_metrics(choice.get("token_ids") or [], result.entropy,
                              result.top_k_mass, state.think_end_id, bool(thinking))


class _Response:
    """The inner app's response: passed on as it comes, or (`buffer`) held until `flush`."""

    def __init__(self, send, buffer: bool):
        self._send, self.buffer = send, buffer
        self.status, self.headers, self.body = 0, [], b""

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status, self.headers = message["status"], message.get("headers", [])
            self.buffer = self.buffer and self.status == 200
        if not self.buffer:
            return await self._send(message)
        if message["type"] == "http.response.body":
            self.body += message.get("body", b"")

    async def flush(self, status: int, answer: Any) -> None:
        await _respond(self._send, status, answer)


def _error(field: str, message: str) -> dict[str, Any]:
    """An error in the OpenAI API's shape, its message one line."""
    return {"error": {"message": " ".join(message.split()), "type": "BadRequestError",
                      "param": field, "code": None}}


async def _respond(send, status: int, answer: Any) -> None:
    if isinstance(answer, bytes):
        body, kind = answer, b"application/octet-stream"
    else:
        body, kind = json.dumps(answer).encode(), b"application/json"
    if isinstance(answer, dict) and "error" in answer:
        answer["error"]["code"] = status
        body = json.dumps(answer).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", kind),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _read(receive) -> bytes | None:
    """The request's body; None when it is over BODY_LIMIT."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > BODY_LIMIT:
            return None
        if not message.get("more_body"):
            return body


def _replay(body: bytes, receive):
    """A `receive` that gives the inner app `body` once, then the client's own messages (its
    disconnect, which ends a stream)."""
    sent = False

    async def replayed() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _authorized(scope) -> bool:
    """Whether vLLM's own key check would let the request through (no key: every request)."""
    from vllm import envs

    args = scope["app"].state.args
    tokens = [t for t in (args.api_key or [envs.VLLM_API_KEY]) if t]
    if not tokens:
        return True
    headers = dict(scope.get("headers") or [])
    scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    digest = hashlib.sha256(token.encode()).digest()
    matched = False
    for known in tokens:
        matched |= secrets.compare_digest(digest, hashlib.sha256(known.encode()).digest())
    return scheme.lower() == "bearer" and matched


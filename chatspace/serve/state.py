"""What a `chatspace serve` server holds besides vLLM's own state: the served model's shape,
the default steering spec, vectors registered by name, captures not yet fetched, and counters
of what the hooks did; and its one path to the worker extension (the engine client's
`collective_rpc`, as `VLLMBackend` uses it).

The server reads its settings from ``CHATSPACE_SERVE`` (JSON: ``model``, ``root``,
``default``, the path of a saved default spec or null), set by `chatspace serve`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from chatspace.serve.fields import Shape
from chatspace.steering import shm
from chatspace.steering.spec import AddSpec, LayerSteeringSpec, SteeringSpec, load_vector
from chatspace.steering.wire import CollectAsk, Collected

log = logging.getLogger(__name__)

SETTINGS = "CHATSPACE_SERVE"
NAME_LIMIT = 200


@dataclass(frozen=True)
class Settings:
    model: str
    root: str
    default: str | None = None

    @classmethod
    def from_env(cls) -> Settings:
        if SETTINGS not in os.environ:
            raise RuntimeError(f"{SETTINGS} is not set: start the server with chatspace serve")
        return cls(**json.loads(os.environ[SETTINGS]))


@dataclass
class Held:
    """A capture waiting to be fetched: its shared-memory segment and layout."""

    segment: str
    entries: list[dict[str, Any]]
    created: float = field(default_factory=time.monotonic)


@dataclass
class Counters:
    requests: int = 0  # generation requests served
    steered: int = 0  # of them, steered (their hooks fired)
    layer_calls: int = 0  # decoder-layer calls that steered them, summed

    def to_dict(self) -> dict[str, int]:
        return dict(vars(self))


class ServeState:
    def __init__(self, engine, settings: Settings):
        from chatspace.models import model_shape

        self.engine = engine
        self.root = Path(settings.root)
        shape = model_shape(settings.model, settings.model)
        self.shape = Shape(shape.hidden_size, shape.num_layers)
        self.think_end_id = _think_end_id(shape.tokenizer)  # the tokenizer model_shape loaded
        self.default = SteeringSpec.load(settings.default) if settings.default else None
        self.vectors: dict[str, torch.Tensor] = {}
        self.captures: dict[str, Held] = {}
        self.counters = Counters()
        self._registered: set[str] = set()
        self.worker: dict[str, Any] | None = None  # the extension's WorkerInfo, once installed
        self._lock = asyncio.Lock()

    async def rpc(self, method: str, *args: object) -> Any:
        return (await self.engine.collective_rpc(method, args=args))[0]

    async def prepare(self, spec: SteeringSpec | None) -> str | None:
        """Hooks installed, and `spec` known to the worker; its fingerprint."""
        async with self._lock:
            if self.worker is None:
                self.worker = await self.rpc("chatspace_install")
            if spec is None:
                return None
            fingerprint = spec.fingerprint()
            if fingerprint not in self._registered:
                await self.rpc("chatspace_register", fingerprint, spec.to_wire())
                self._registered.add(fingerprint)
            return fingerprint

    async def collect(self, ask: CollectAsk) -> Collected:
        return Collected.from_wire((await self.rpc("chatspace_collect", [ask.to_wire()]))[0])

    async def drop(self, key: str) -> None:
        await self.rpc("chatspace_drop", [key])

    def lookup(self, name: str, key: str | None) -> torch.Tensor:
        """A vector by reference: a registered name, else a vectors run under the root."""
        if name in self.vectors:
            if key is not None:
                raise ValueError(f"registered vector {name!r} has no keys (give no vector_key)")
            return self.vectors[name]
        from chatspace.errors import BadInput
        from chatspace.kinds.vector_refs import vectors_file

        if Path(name).name != name or name.startswith("."):
            raise ValueError(f"{name[:80]!r} is neither a registered vector nor a vectors run "
                             "id (a request never names a file)")
        try:
            return load_vector(vectors_file(name, self.root), key)
        except BadInput as exc:
            raise ValueError(f"{name[:80]!r} is not a registered vector ({self.names()}), "
                             f"and {exc}") from None

    def names(self) -> str:
        return ", ".join(sorted(self.vectors)) or "none registered"

    def register(self, name: Any, values: Any) -> torch.Tensor:
        """Name -> vector; ValueError naming what is wrong."""
        if not isinstance(name, str) or not name or len(name) > NAME_LIMIT or \
                not name.isprintable():
            raise ValueError(f"name: must be a printable string of 1..{NAME_LIMIT} characters")
        if not isinstance(values, list) or not values or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise ValueError("vector: must be a non-empty list of numbers")
        vector = torch.tensor(values, dtype=torch.float32)
        probe = SteeringSpec({0: LayerSteeringSpec((AddSpec(vector),))})
        try:
            probe.check(self.shape.hidden_size, self.shape.num_layers)
        except ValueError as exc:
            raise ValueError(str(exc).removeprefix("layers[0].ops[0].")) from None
        self.vectors[name] = vector
        return vector

    def hold(self, segment: str, entries: list[dict[str, Any]]) -> str:
        self.expire()
        capture_id = uuid.uuid4().hex
        self.captures[capture_id] = Held(segment, entries)
        return capture_id

    def expire(self) -> None:
        """Forget captures older than the TTL (the worker removes their segments)."""
        ttl = shm.ttl_seconds()
        for capture_id, held in list(self.captures.items()):
            if time.monotonic() - held.created > ttl:
                del self.captures[capture_id]
                shm.release(held.segment)

    def take(self, capture_id: str) -> bytes | None:
        """A held capture as one safetensors file (keys ``{id}/layer{L}``, as a steer run's
        capture files), released; None when there is none of that id (fetched, expired or
        never made)."""
        from safetensors.torch import save

        self.expire()
        held = self.captures.pop(capture_id, None)
        if held is None:
            return None
        try:
            tensors = shm.open_segment(held.segment, held.entries)
            data = save({f"{capture_id}/layer{layer}": t.contiguous()
                         for layer, t in tensors.items()}, metadata={"capture_id": capture_id})
        except RuntimeError:  # the worker expired it first
            return None
        finally:
            shm.release(held.segment)
        return data

    def describe(self) -> dict[str, Any]:
        return {"default": describe(self.default), "vectors": sorted(self.vectors),
                "captures_held": len(self.captures), "counters": self.counters.to_dict()}


def describe(spec: SteeringSpec | None) -> list[dict[str, Any]] | None:
    """A spec as the API shows it: each op's layer, name, numbers and vector norm."""
    if spec is None:
        return None
    out = []
    for index in sorted(spec.layers):
        for op in spec.layers[index].ops:
            numbers = {k: getattr(op, k) for k in ("scale", "min", "max") if hasattr(op, k)}
            out.append({"layer": index, "op": op.op, **numbers,
                        "norm": float(op.vector.double().norm())})
    return out


def _think_end_id(tokenizer) -> int | None:
    token = tokenizer.convert_tokens_to_ids("</think>")
    return token if isinstance(token, int) and token != tokenizer.unk_token_id else None

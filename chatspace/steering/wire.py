"""What the client (`vllm_backend`) and the worker extension (`vllm_worker`) tell each other
through vLLM: the worker's answer to being installed (`WorkerInfo`), a request's hooks in its
``SamplingParams.extra_args`` (`Hooks`), and once it finished, what to collect (`CollectAsk`)
and what came back (`Collected`).

Plain dicts cross the process boundary (vLLM serialises extra_args and `collective_rpc`
arguments and replies itself, and refuses arbitrary classes unless told to allow pickling);
each side builds and reads them through these types, so a field renamed on one side is a
`TypeError` on the other, not a silent None.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Self

EXTRA_KEY = "chatspace"  # the key of a request's hooks in SamplingParams.extra_args


@dataclass(frozen=True)
class Wire:
    def to_wire(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Self:
        return cls(**data)


@dataclass(frozen=True)
class WorkerInfo(Wire):
    """The worker the hooks were installed in."""

    architecture: str
    pid: int
    num_layers: int
    runner: str  # the model runner's class
    compiled: bool
    captures: bool  # the rank that keeps capture rows (rank 0)


@dataclass(frozen=True)
class Hooks(Wire):
    """One request's hooks: its key (vLLM renames request ids), steering fingerprint, capture
    layers, token-metrics k and probe-set fingerprint."""

    key: str
    spec: str | None = None
    layers: tuple[int, ...] = ()
    metrics_k: int | None = None
    probes: str | None = None

    @classmethod
    def from_wire(cls, data: dict[str, Any] | str) -> Self:
        """From the dict `VLLMBackend` puts in extra_args, or the JSON text `chatspace serve`
        puts in a request's ``vllm_xargs`` (whose values vLLM allows only as scalars)."""
        if isinstance(data, str):
            data = json.loads(data)
        return cls(**{**data, "layers": tuple(data.get("layers") or ())})


@dataclass(frozen=True)
class CollectAsk(Wire):
    """A finished request's collection: its rows (`total`, of which `prompt_len` are the
    prompt's), the capture options, and the shared-memory cap and TTL."""

    key: str
    total: int
    prompt_len: int
    rows: str
    pool: str
    dtype: str | None
    cap: int
    ttl: float


@dataclass(frozen=True)
class Collected(Wire):
    """What came back: how many layer calls steered the request, its token metrics, the
    segment holding its captures and that segment's layout, or the error that stopped it."""

    steered: int = 0
    entropy: list[float] | None = None
    top_k_mass: list[float] | None = None
    segment: str | None = None
    entries: list[dict[str, Any]] | None = None
    probes: list[tuple[str, int, list[float]]] | None = None  # (name, layer, values)
    error: str | None = None

"""What a steered generation returns, whatever the backend: the sampling settings, one output
per prompt, and one capture per request (hidden states per layer)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Sampling:
    """Generation settings (vLLM's names). temperature 0 is greedy."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    logprobs: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"sampling.max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Capture:
    """Hidden states of one request: per captured layer ``[prompt_len + generated_len - 1,
    hidden]`` (prefill rows, then one per decode step; the last sampled token is never run
    through the model), the post-layer residual stream after any steering at that layer.
    Usable as ``async with capture:``; `close` releases it."""

    layers: dict[int, torch.Tensor] = field(default_factory=dict)
    prompt_len: int = 0

    def __getitem__(self, layer: int) -> torch.Tensor:
        return self.layers[layer]

    async def close(self) -> None:
        self.layers = {}

    async def __aenter__(self) -> Capture:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


@dataclass
class Generation:
    """One prompt's generation."""

    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" (end of sequence) or "length" (max_tokens)
    logprobs: list[float] | None = None
    capture: Capture | None = None

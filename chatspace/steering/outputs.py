"""What a steered generation returns, whatever the backend: the sampling settings, one output
per prompt, and one capture per request (hidden states per layer)."""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass

import torch

from chatspace.steering import shm
from chatspace.steering.choices import POOLS, ROWS


@dataclass(frozen=True)
class Sampling:
    """Generation settings (vLLM's names). temperature 0 is greedy."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    logprobs: bool = False
    ignore_eos: bool = False  # always generate max_tokens (benchmarks)
    # per generated token: entropy and top-k probability mass of the model's distribution
    # (raw logits, before temperature) with this k; None: not computed
    top_k_mass_k: int | None = None
    # vLLM backend: this many most likely tokens' logprobs per step in `Generation.raw`
    top_logprobs: int = 0

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"sampling.max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.top_logprobs < 0:
            raise ValueError(f"sampling.top_logprobs must be >= 0, got {self.top_logprobs}")
        if self.top_k_mass_k is not None and self.top_k_mass_k < 1:
            raise ValueError(f"sampling.top_k_mass_k must be >= 1, got {self.top_k_mass_k}")


@dataclass(frozen=True)
class CaptureOptions:
    """Which hidden-state rows a capture keeps: ``all`` (``prompt_len + generated_len - 1``
    rows: prefill, then one per decode step), ``prompt`` (the first ``prompt_len``),
    ``response`` (the generated tokens run through the model, ``generated_len - 1``) or
    ``last`` (the final row); pooled (``mean`` gives one row, NaN when no row was kept) or
    not; in the model's dtype (None) or another."""

    rows: str = "all"
    pool: str = "none"
    dtype: str | None = None

    def __post_init__(self) -> None:
        if self.rows not in ROWS:
            raise ValueError(f"capture.rows must be one of {', '.join(ROWS)}, got {self.rows!r}")
        if self.pool not in POOLS:
            raise ValueError(f"capture.pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        if self.dtype is not None and not isinstance(getattr(torch, self.dtype, None),
                                                     torch.dtype):
            raise ValueError(f"capture.dtype {self.dtype!r} is not a torch dtype")

    def select(self, states: torch.Tensor, prompt_len: int) -> torch.Tensor:
        """The kept rows of one layer's ``[prompt_len + generated_len - 1, hidden]`` states."""
        kept = self.needed(states.shape[0], prompt_len)
        states = states[kept.start:kept.stop]
        if self.pool == "mean":
            states = states.to(torch.float32).mean(0, keepdim=True).to(states.dtype)
        return states.to(getattr(torch, self.dtype)) if self.dtype else states

    def needs_prompt_rows(self) -> bool:
        """Whether the kept rows include prompt rows before the last (which vLLM always
        computes): only then must a request skip the prefix cache, whose hits run no forward
        pass for the cached prompt rows."""
        return self.rows in ("all", "prompt")

    def needed(self, total: int, prompt_len: int) -> range:
        """The positions of ``[0, total)`` that `select` keeps (before pooling)."""
        return {"all": range(total), "prompt": range(min(prompt_len, total)),
                "response": range(min(prompt_len, total), total),
                "last": range(max(total - 1, 0), total)}[self.rows]

    def kept_rows(self, total: int, prompt_len: int) -> int:
        return 1 if self.pool == "mean" else len(self.needed(total, prompt_len))


class Capture:
    """Hidden states of one request: per captured layer the rows `CaptureOptions` keeps of
    ``[prompt_len + generated_len - 1, hidden]`` (prefill rows, then one per decode step; the
    last sampled token is never run through the model), the post-layer residual stream after
    any steering at that layer.

    A handle: the tensors may live in a shared-memory segment (vLLM backend), mapped on first
    read. Release it with ``async with capture:``, ``await capture.close()`` or by dropping it
    (the finalizer releases it, with a `ResourceWarning` if it was never read); tensors
    already read stay valid after release."""

    def __init__(self, layers: dict[int, torch.Tensor] | None = None, *, prompt_len: int,
                 segment: str | None = None, entries: list[dict] | None = None):
        self.prompt_len = prompt_len
        self._layers = layers
        self._segment = segment
        self._entries = entries or []
        self._read = layers is not None
        if segment is not None:
            self._finalizer = weakref.finalize(self, _release_unread, segment, self.__dict__)

    @property
    def layers(self) -> dict[int, torch.Tensor]:
        if self._layers is None:
            self._layers = shm.open_segment(self._segment, self._entries)
            self._read = True
        return self._layers

    def __getitem__(self, layer: int) -> torch.Tensor:
        return self.layers[layer]

    async def close(self) -> None:
        if self._segment is not None:
            self._finalizer.detach()
            shm.release(self._segment)
            self._segment = None

    async def __aenter__(self) -> Capture:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _release_unread(segment: str, state: dict) -> None:
    if not state.get("_read"):
        warnings.warn(f"capture {segment} was never read or closed; released by the finalizer "
                      "(use `async with capture:` or `await capture.close()`)",
                      ResourceWarning, stacklevel=2)
    shm.release(segment)


def token_metrics(logits: torch.Tensor, k: int) -> tuple[list[float], list[float]]:
    """Entropy (nats) and top-k probability mass of each row's distribution ``softmax(logits)``,
    in float32: the one implementation both backends use."""
    logprobs = torch.log_softmax(logits.to(torch.float32), dim=-1)
    probs = logprobs.exp()
    entropy = -(probs * logprobs).sum(-1)
    mass = probs.topk(min(k, probs.shape[-1]), dim=-1).values.sum(-1)
    return entropy.tolist(), mass.tolist()


@dataclass
class Generation:
    """One prompt's generation."""

    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    # "stop" (end of sequence), "length" (max_tokens) or "stopped" (the streamer halted it)
    finish_reason: str
    logprobs: list[float] | None = None
    capture: Capture | None = None
    entropy: list[float] | None = None  # per generated token (Sampling.top_k_mass_k)
    top_k_mass: list[float] | None = None
    # probe name -> layer -> value per row run through the model (`probes.Probe`)
    probes: dict[str, dict[int, list[float]]] | None = None
    raw: object = None  # the backend's own result (vLLM: the final RequestOutput; HF: None)

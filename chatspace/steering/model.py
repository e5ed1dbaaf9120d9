"""`SteerModel`: one interface for steered generation with hidden-state capture.

    model = SteerModel("path/to/model", backend="hf")
    outputs = await model.generate(prompts, Sampling(max_tokens=32), steering_spec=spec,
                                   capture_layers=[4, 8])

Prompts are strings (tokenized as they are) or chat messages (rendered with the tokenizer's
chat template, `enable_thinking` passed through). `steering_spec` is None, one spec for every
prompt, or one per prompt; every spec and capture layer is checked against the model before
anything runs (ValueError naming the field). Backends: ``hf`` (transformers hooks, the
reference). The vLLM backend is not built yet.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from chatspace.steering.outputs import Generation, Sampling
from chatspace.steering.spec import SteeringSpec

Prompt = str | list[dict[str, str]]
BACKENDS = ("hf",)


class SteerModel:
    def __init__(self, model: str | Path, backend: str = "hf", dtype: str = "float32",
                 device: str = "cpu"):
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r} is not available (available: "
                             f"{', '.join(BACKENDS)})")
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise ValueError(f"dtype {dtype!r} is not a torch dtype")
        from chatspace.steering.hf_backend import HFBackend

        self.backend = HFBackend(model, torch_dtype, device)
        self.tokenizer = self.backend.tokenizer
        self.num_layers = len(self.backend.layers)
        self.hidden_size = self.backend.hidden_size
        self._lock = asyncio.Lock()

    def render(self, prompt: Prompt, enable_thinking: bool | None = None) -> list[int]:
        """Token ids of a prompt: a string as it is, chat messages through the chat template."""
        if isinstance(prompt, str):
            return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        extra: dict[str, Any] = {}
        if enable_thinking is not None:
            extra["enable_thinking"] = enable_thinking
        text = self.tokenizer.apply_chat_template(prompt, tokenize=False,
                                                  add_generation_prompt=True, **extra)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _specs(self, steering_spec: SteeringSpec | Sequence[SteeringSpec | None] | None,
               count: int) -> list[SteeringSpec | None]:
        if steering_spec is None or isinstance(steering_spec, SteeringSpec):
            specs = [steering_spec] * count
        else:
            specs = list(steering_spec)
            if len(specs) != count:
                raise ValueError(f"steering_spec: {len(specs)} specs for {count} prompts")
        for number, spec in enumerate(specs):
            if spec is None:
                continue
            try:
                spec.check(self.hidden_size, self.num_layers)
            except ValueError as exc:
                where = "steering_spec" if len(set(map(id, specs))) == 1 else \
                    f"steering_spec[{number}]"
                raise ValueError(f"{where}.{exc}") from None
        return specs

    def _capture_layers(self, layers: Sequence[int] | None) -> list[int] | None:
        if layers is None:
            return None
        for layer in layers:
            if not isinstance(layer, int) or not 0 <= layer < self.num_layers:
                raise ValueError(f"capture_layers: layer {layer!r} out of range (the model "
                                 f"has {self.num_layers} decoder layers)")
        return sorted(set(layers))

    async def generate(self, prompts: Sequence[Prompt], sampling: Sampling | None = None,
                       steering_spec: SteeringSpec | Sequence[SteeringSpec | None] | None = None,
                       capture_layers: Sequence[int] | None = None,
                       enable_thinking: bool | None = None) -> list[Generation]:
        sampling = sampling or Sampling()
        specs = self._specs(steering_spec, len(prompts))
        layers = self._capture_layers(capture_layers)
        token_ids = [self.render(p, enable_thinking) for p in prompts]
        async with self._lock:  # one forward pass at a time on this model
            return await asyncio.to_thread(self.backend.generate, token_ids, sampling, specs,
                                           layers)

    def generate_sync(self, prompts: Sequence[Prompt], sampling: Sampling | None = None,
                      **kwargs: Any) -> list[Generation]:
        """`generate` for scripts without an event loop."""
        return asyncio.run(self.generate(prompts, sampling, **kwargs))

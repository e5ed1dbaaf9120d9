"""The HF transformers backend, the reference every other backend must agree with: forward
hooks on the decoder layers apply each request's steering ops and copy the post-layer hidden
states, while a plain KV-cached loop generates one request at a time.

The hooks count their calls: if steering or capture was requested and no hook fired (a model
whose layers do not go through the hooked modules), generation fails loudly instead of
returning unsteered text.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from chatspace.steering.outputs import (
    Capture,
    CaptureOptions,
    Generation,
    Sampling,
    token_metrics,
)
from chatspace.steering.spec import SteeringSpec, apply_ops

log = logging.getLogger(__name__)

SUPPORTED = {"Qwen2ForCausalLM", "Qwen3ForCausalLM", "LlamaForCausalLM", "MistralForCausalLM"}


def check_architecture(names: Sequence[str]) -> None:
    """ValueError naming an architecture whose decoder layers the hooks do not know."""
    if not set(names) & SUPPORTED:
        raise ValueError(f"model architecture {', '.join(names)} is not supported "
                         f"(supported: {', '.join(sorted(SUPPORTED))})")


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    check_architecture(getattr(model.config, "architectures", None) or [type(model).__name__])
    return model.model.layers


class HFBackend:
    """One HF causal LM with steering and capture hooks on its decoder layers."""

    def __init__(self, model: str | Path, dtype: torch.dtype = torch.float32,
                 device: str = "cpu"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model))
        self.model = AutoModelForCausalLM.from_pretrained(str(model), dtype=dtype).to(device)
        self.model.eval()
        self.layers = decoder_layers(self.model)
        self.hidden_size = self.model.config.hidden_size
        self.num_layers = len(self.layers)
        self.device = device
        self._spec: SteeringSpec | None = None
        self._capture: dict[int, list[torch.Tensor]] | None = None
        self.hook_calls = 0
        self._lock = asyncio.Lock()
        for index, layer in enumerate(self.layers):
            layer.register_forward_hook(self._hook(index))

    def _hook(self, index: int):
        def hook(module, args, output):
            self.hook_calls += 1
            hidden = output[0] if isinstance(output, tuple) else output
            spec = self._spec
            if spec is not None and index in spec.layers:
                hidden = apply_ops(hidden, spec.layers[index].ops)
            if self._capture is not None and index in self._capture:
                self._capture[index].append(hidden[0].detach().clone())
            if isinstance(output, tuple):
                return (hidden, *output[1:])
            return hidden
        return hook

    async def generate(self, token_ids: Sequence[Sequence[int]], samplings: Sequence[Sampling],
                       specs: Sequence[SteeringSpec | None],
                       capture_layers: Sequence[int] | None,
                       options: CaptureOptions, streamer=None) -> list[Generation]:
        async with self._lock:  # one forward pass at a time on this model
            return await asyncio.to_thread(self._generate_all, token_ids, samplings, specs,
                                           capture_layers, options, streamer)

    def _generate_all(self, token_ids, samplings, specs, capture_layers, options, streamer):
        return [self._generate_one(list(ids), sampling, spec, capture_layers, options,
                                   streamer)
                for ids, sampling, spec in zip(token_ids, samplings, specs, strict=True)]

    @torch.no_grad()
    def _generate_one(self, prompt: list[int], sampling: Sampling, spec: SteeringSpec | None,
                      capture_layers: Sequence[int] | None, options: CaptureOptions,
                      streamer=None) -> Generation:
        generator = torch.Generator(device=self.device)
        if sampling.seed is not None:
            generator.manual_seed(sampling.seed)
        self._spec = spec
        self._capture = {i: [] for i in capture_layers} if capture_layers else None
        calls_before = self.hook_calls
        out_ids: list[int] = []
        logprobs: list[float] = []
        entropy: list[float] = []
        mass: list[float] = []
        finish = "length"
        try:
            inputs = torch.tensor([prompt], device=self.device)
            past = None
            for step in range(sampling.max_tokens):
                result = self.model(input_ids=inputs, past_key_values=past, use_cache=True)
                past = result.past_key_values
                logits = result.logits[0, -1].to(torch.float32)
                if sampling.top_k_mass_k:
                    (e,), (m,) = token_metrics(logits[None], sampling.top_k_mass_k)
                    entropy.append(e)
                    mass.append(m)
                token = _sample(logits, sampling, generator)
                logprobs.append(float(torch.log_softmax(logits, -1)[token]))
                out_ids.append(token)
                halted = streamer is not None and streamer([token]) is False
                if token == self.tokenizer.eos_token_id and not sampling.ignore_eos:
                    finish = "stop"
                    break
                if halted:
                    finish = "stopped"
                    break
                if step + 1 < sampling.max_tokens:
                    inputs = torch.tensor([[token]], device=self.device)
            if (spec is not None or self._capture is not None) and \
                    self.hook_calls == calls_before:
                raise RuntimeError("steering or capture was requested but no decoder-layer "
                                   "hook fired: the model does not run through the hooks")
            capture = None
            if self._capture is not None:
                capture = Capture({i: options.select(torch.cat(rows), len(prompt))
                                   for i, rows in self._capture.items()},
                                  prompt_len=len(prompt))
        finally:
            self._spec, self._capture = None, None
        return Generation(prompt_token_ids=prompt, token_ids=out_ids,
                          text=self.tokenizer.decode(out_ids, skip_special_tokens=False),
                          finish_reason=finish,
                          logprobs=logprobs if sampling.logprobs else None, capture=capture,
                          entropy=entropy if sampling.top_k_mass_k else None,
                          top_k_mass=mass if sampling.top_k_mass_k else None)


def _sample(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    if sampling.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / sampling.temperature, -1)
    if sampling.top_p < 1:
        ordered, order = probs.sort(descending=True)
        keep = ordered.cumsum(-1) - ordered < sampling.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], ordered[keep])
    return int(torch.multinomial(probs, 1, generator=generator))

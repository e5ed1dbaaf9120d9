"""The HF transformers backend, the reference every other backend must agree with: forward
hooks on the decoder layers apply each row's steering ops and copy the post-layer hidden
states, while a KV-cached loop generates a batch of prompts together (left-padded, with an
attention mask and per-row positions, so each row computes what it would alone).

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

from chatspace.steering.devices import pick_device
from chatspace.steering.outputs import (
    Capture,
    CaptureOptions,
    Generation,
    Sampling,
    token_metrics,
)
from chatspace.steering.probes import Probe, values_of
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


def default_batch_size(device: str) -> int:
    """Prompts generated together: 256 on a GPU, 32 on the CPU."""
    return 32 if device == "cpu" else 256


class HFBackend:
    """One HF causal LM with steering and capture hooks on its decoder layers; prompts are
    generated `batch_size` at a time (left padding, attention mask, per-row positions), each
    row with its own steering spec, sampling and seed."""

    def __init__(self, model: str | Path, dtype: torch.dtype = torch.float32,
                 device: str | None = None, batch_size: int | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = pick_device(device)
        self.batch_size = batch_size or default_batch_size(self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model))
        self.model = AutoModelForCausalLM.from_pretrained(str(model), dtype=dtype)
        self.model.to(self.device).eval()
        self.layers = decoder_layers(self.model)
        self.hidden_size = self.model.config.hidden_size
        self.num_layers = len(self.layers)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id or 0
        self._rows: list[tuple[SteeringSpec, list[int]]] = []  # spec -> its rows in the batch
        self._steps: dict[int, list[torch.Tensor]] | None = None  # layer -> [B, T, H] per step
        self.hook_calls = 0
        self._lock = asyncio.Lock()
        for index, layer in enumerate(self.layers):
            layer.register_forward_hook(self._hook(index))

    def _hook(self, index: int):
        def hook(module, args, output):
            self.hook_calls += 1
            hidden = output[0] if isinstance(output, tuple) else output
            steered = [(spec, rows) for spec, rows in self._rows if index in spec.layers]
            if steered:
                hidden = hidden.clone()  # the layer's output is never changed in place
                for spec, rows in steered:
                    hidden[rows] = apply_ops(hidden[rows], spec.layers[index].ops)
            if self._steps is not None and index in self._steps:
                self._steps[index].append(hidden.detach().clone())
            if isinstance(output, tuple):
                return (hidden, *output[1:])
            return hidden
        return hook

    async def generate(self, token_ids: Sequence[Sequence[int]], samplings: Sequence[Sampling],
                       specs: Sequence[SteeringSpec | None],
                       capture_layers: Sequence[int] | None,
                       options: CaptureOptions, streamer=None,
                       probes: Sequence[Sequence[Probe] | None] | None = None
                       ) -> list[Generation]:
        """`probes`: each prompt's (or None), read from its whole post-layer states."""
        if any(sampling.top_logprobs for sampling in samplings):
            raise ValueError("sampling.top_logprobs: vLLM's (the hf backend gives the sampled "
                             "token's logprob, sampling.logprobs)")
        async with self._lock:  # one forward pass at a time on this model
            return await asyncio.to_thread(self._generate_all, token_ids, samplings, specs,
                                           capture_layers, options, streamer,
                                           probes or [None] * len(token_ids))

    def _generate_all(self, token_ids, samplings, specs, capture_layers, options, streamer,
                      probes):
        out: list[Generation] = []
        for start in range(0, len(token_ids), self.batch_size):
            batch = slice(start, start + self.batch_size)
            out += self._generate_batch([list(t) for t in token_ids[batch]], samplings[batch],
                                        specs[batch], capture_layers, options, streamer,
                                        probes[batch])
        return out

    def _set_rows(self, specs: Sequence[SteeringSpec | None]) -> None:
        groups: dict[int, tuple[SteeringSpec, list[int]]] = {}
        for row, spec in enumerate(specs):
            if spec is not None:
                groups.setdefault(id(spec), (spec, []))[1].append(row)
        self._rows = list(groups.values())

    @torch.no_grad()
    def _generate_batch(self, prompts: list[list[int]], samplings: Sequence[Sampling],
                        specs: Sequence[SteeringSpec | None],
                        capture_layers: Sequence[int] | None, options: CaptureOptions,
                        streamer=None, probes=()) -> list[Generation]:
        rows, width = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((rows, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((rows, width), dtype=torch.long)
        for row, prompt in enumerate(prompts):  # left padding: every row ends at `width`
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1
        generators = [torch.Generator(device=self.device) for _ in prompts]
        for generator, sampling in zip(generators, samplings, strict=True):
            if sampling.seed is not None:
                generator.manual_seed(sampling.seed)
        gens = [_RowOutput() for _ in prompts]
        self._set_rows(specs)
        read = {*(capture_layers or ()), *(layer for row in probes if row for probe in row
                                           for layer in probe.layers)}
        self._steps = {i: [] for i in sorted(read)} if read else None
        calls_before = self.hook_calls
        try:
            mask = mask.to(self.device)
            inputs = ids.to(self.device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            past = None
            live = list(range(rows))
            while live:
                result = self.model(input_ids=inputs, attention_mask=mask,
                                    position_ids=positions, past_key_values=past,
                                    use_cache=True)
                past = result.past_key_values
                logits = result.logits[:, -1].to(torch.float32)
                for row in live:
                    gens[row].step(self, logits[row], samplings[row], generators[row])
                if streamer is not None and gens[0].token_ids and \
                        streamer([gens[0].token_ids[-1]]) is False and gens[0].finish is None:
                    gens[0].finish = "stopped"
                live = [r for r in live if gens[r].finish is None]
                if not live:
                    break
                last = torch.tensor([[g.token_ids[-1]] for g in gens], device=self.device)
                inputs, positions = last, positions[:, -1:] + 1
                mask = torch.cat([mask, torch.ones((rows, 1), dtype=mask.dtype,
                                                   device=self.device)], dim=1)
            if (self._rows or self._steps is not None) and self.hook_calls == calls_before:
                raise RuntimeError("steering or capture was requested but no decoder-layer "
                                   "hook fired: the model does not run through the hooks")
            return [self._generation(prompts[r], gens[r], samplings[r], r, width, options,
                                     capture_layers or (), probes[r]) for r in range(rows)]
        finally:
            self._rows, self._steps = [], None

    def _generation(self, prompt: list[int], out: _RowOutput, sampling: Sampling, row: int,
                    width: int, options: CaptureOptions, capture_layers: Sequence[int],
                    probes: Sequence[Probe] | None) -> Generation:
        states = {}  # the prompt's rows, then one per fed generated token
        for layer, steps in (self._steps or {}).items():
            rows = [steps[0][row, width - len(prompt):]]
            rows += [step[row] for step in steps[1:len(out.token_ids)]]
            states[layer] = torch.cat(rows)
        capture = Capture({layer: options.select(states[layer], len(prompt))
                           for layer in capture_layers},
                          prompt_len=len(prompt)) if capture_layers else None
        return Generation(prompt_token_ids=prompt, token_ids=out.token_ids,
                          text=self.tokenizer.decode(out.token_ids, skip_special_tokens=False),
                          finish_reason=out.finish or "length",
                          logprobs=out.logprobs if sampling.logprobs else None, capture=capture,
                          entropy=out.entropy if sampling.top_k_mass_k else None,
                          top_k_mass=out.mass if sampling.top_k_mass_k else None,
                          probes=values_of(states, probes) if probes else None)


class _RowOutput:
    """One row's generation so far; `finish` is set when the row is done."""

    def __init__(self) -> None:
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []
        self.entropy: list[float] = []
        self.mass: list[float] = []
        self.finish: str | None = None

    def step(self, backend: HFBackend, logits: torch.Tensor, sampling: Sampling,
             generator: torch.Generator) -> None:
        if sampling.top_k_mass_k:
            (e,), (m,) = token_metrics(logits[None], sampling.top_k_mass_k)
            self.entropy.append(e)
            self.mass.append(m)
        token = _sample(logits, sampling, generator)
        self.logprobs.append(float(torch.log_softmax(logits, -1)[token]))
        self.token_ids.append(token)
        if token == backend.tokenizer.eos_token_id and not sampling.ignore_eos:
            self.finish = "stop"
        elif len(self.token_ids) >= sampling.max_tokens:
            self.finish = "length"


def _sample(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    if sampling.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / sampling.temperature, -1)
    if sampling.top_p < 1:
        ordered, order = probs.sort(descending=True)
        keep = ordered.cumsum(-1) - ordered < sampling.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], ordered[keep])
    return int(torch.multinomial(probs, 1, generator=generator))

"""`SteerModel`: one interface for steered generation with hidden-state capture.

    model = SteerModel("path/to/model", backend="hf")
    outputs = await model.generate(prompts, Sampling(max_tokens=32), steering_spec=spec,
                                   capture_layers=[4, 8])

Prompts are token ids, strings (tokenized as they are) or chat messages (rendered with the
tokenizer's chat template, `enable_thinking` passed through). `steering_spec` is None, one spec
for every prompt, or one per prompt; every spec and capture layer is checked against the model
before anything runs (ValueError naming the field). Backends: ``vllm`` (an async engine with hooks
in its worker; captures come back through shared memory) and ``hf`` (transformers hooks, the
reference the vLLM backend is tested against).

A vLLM engine serves one event loop: use `generate` from one loop, or `generate_sync` / `run`
(the model's own loop) from scripts, not both. Scripts that build a vLLM model need the
``if __name__ == "__main__":`` guard (its engine starts a process with spawn).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from chatspace.steering.choices import BACKENDS
from chatspace.steering.outputs import CaptureOptions, Generation, Sampling
from chatspace.steering.probes import Probe, check_probes
from chatspace.steering.spec import SteeringSpec
from chatspace.steering.templates import chat_text

Prompt = str | list[dict[str, str]] | list[int]
# Called with each step's new token ids while one prompt generates; returning False stops the
# generation there (finish_reason "stopped").
Streamer = Callable[[list[int]], bool | None]
T = TypeVar("T")


class SteerModel:
    def __init__(self, model: str | Path, backend: str = "vllm", dtype: str = "float32",
                 device: str | None = None, batch_size: int | None = None,
                 compile: bool | None = None, **engine: Any):
        """`engine`: vLLM engine arguments (max_model_len, max_num_seqs,
        max_num_batched_tokens, enable_prefix_caching, seed, …). `compile` is vLLM's: its
        compiled model (and CUDA graphs), default on CUDA, or eager mode, default on the CPU.
        `device` (default: CUDA, then MPS, then CPU) and `batch_size` (prompts generated
        together; default 256 on a GPU, 32 on the CPU) are the HF backend's."""
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r} is not available (available: "
                             f"{', '.join(BACKENDS)})")
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise ValueError(f"dtype {dtype!r} is not a torch dtype")
        if not Path(model).is_dir():
            raise ValueError(f"model {model}: not a model directory")
        if backend == "vllm":
            from chatspace.steering.vllm_backend import VLLMBackend

            self.backend = VLLMBackend(model, dtype, compile, **engine)
        else:
            if compile:
                raise ValueError("compile: the hf backend runs eagerly (compile is vLLM's)")
            from chatspace.steering.hf_backend import HFBackend

            self.backend = HFBackend(model, torch_dtype, device, batch_size)
        self.backend_name = backend
        self.tokenizer = self.backend.tokenizer
        self.num_layers = self.backend.num_layers
        self.hidden_size = self.backend.hidden_size
        self._loop: asyncio.AbstractEventLoop | None = None

    def render_text(self, messages: list[dict[str, str]], enable_thinking: bool | None = None,
                    assistant_name: str | None = None) -> str:
        """Chat messages through the tokenizer's chat template, ending with the generation
        prompt; `assistant_name` renames the assistant role in that prompt and in earlier
        assistant turns (the persona sweeps' "rename the role"; `templates.chat_text`)."""
        return chat_text(self.tokenizer, messages, enable_thinking, assistant_name)

    def render(self, prompt: Prompt, enable_thinking: bool | None = None,
               assistant_name: str | None = None) -> list[int]:
        """Token ids of a prompt: token ids as they are, a string tokenized as it is, chat
        messages through the chat template."""
        if isinstance(prompt, str):
            return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if prompt and all(isinstance(token, int) for token in prompt):
            return list(prompt)
        text = self.render_text(prompt, enable_thinking, assistant_name)
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

    def _probes(self, probes: Sequence[Probe] | Sequence[Sequence[Probe] | None] | None,
                count: int) -> list[list[Probe] | None]:
        if probes is None:
            return [None] * count
        if all(isinstance(p, Probe) for p in probes):
            rows: list = [list(probes) or None] * count
        else:
            rows = [list(p) if p else None for p in probes]
            if len(rows) != count:
                raise ValueError(f"probes: {len(rows)} probe lists for {count} prompts")
        for number, row in enumerate(rows):
            try:
                check_probes(row or [], self.hidden_size, self.num_layers)
            except ValueError as exc:
                where = "" if rows.count(row) == count else f"[{number}]"
                raise ValueError(f"probes{where}: {exc}") from None
        return rows

    async def generate(self, prompts: Sequence[Prompt],
                       sampling: Sampling | Sequence[Sampling] | None = None,
                       steering_spec: SteeringSpec | Sequence[SteeringSpec | None] | None = None,
                       capture_layers: Sequence[int] | None = None,
                       capture: CaptureOptions | None = None,
                       enable_thinking: bool | None = None,
                       streamer: Streamer | None = None,
                       probes: Sequence[Probe] | Sequence[Sequence[Probe] | None] | None = None
                       ) -> list[Generation]:
        """One `Generation` per prompt, all sent to the backend together; with
        `capture_layers`, each carries a `Capture` handle (rows chosen by `capture`). With
        `streamer` (one prompt only), new tokens are handed over as they are sampled. `probes`
        (one list for every prompt, or one list or None per prompt) are read on every row
        and come back in `Generation.probes`."""
        if streamer is not None and len(prompts) != 1:
            raise ValueError(f"streamer: streams one prompt, got {len(prompts)}")
        samplings = [sampling or Sampling()] * len(prompts) \
            if sampling is None or isinstance(sampling, Sampling) else list(sampling)
        if len(samplings) != len(prompts):
            raise ValueError(f"sampling: {len(samplings)} settings for {len(prompts)} prompts")
        specs = self._specs(steering_spec, len(prompts))
        layers = self._capture_layers(capture_layers)
        rows = self._probes(probes, len(prompts))
        token_ids = [self.render(p, enable_thinking) for p in prompts]
        return await self.backend.generate(token_ids, samplings, specs, layers,
                                           capture or CaptureOptions(), streamer, rows)

    def run(self, awaitable: Awaitable[T]) -> T:
        """Run a coroutine on the model's own event loop (for scripts without one)."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(awaitable)

    def generate_sync(self, prompts: Sequence[Prompt],
                      sampling: Sampling | Sequence[Sampling] | None = None,
                      **kwargs: Any) -> list[Generation]:
        """`generate` for scripts without an event loop."""
        return self.run(self.generate(prompts, sampling, **kwargs))

    def stats(self, reset: bool = False) -> dict:
        """The vLLM worker's hook counters: hook_calls, max_batch (the most requests seen in
        one forward pass since the last reset), pending (requests not yet collected)."""
        return self.run(self.backend.stats(reset))

    def close(self) -> None:
        """Shut the engine down and close the model's own event loop."""
        if self.backend_name == "vllm":
            self.backend.close()
        if self._loop is not None:
            tasks = asyncio.all_tasks(self._loop)  # the engine's output handler
            for task in tasks:
                task.cancel()
            if tasks:
                self._loop.run_until_complete(_settle(tasks))
            self._loop.close()
            self._loop = None
        gc.collect()  # the engine and its loop's leftovers go now, not at interpreter exit

    def __enter__(self) -> SteerModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _settle(tasks: set[asyncio.Task]) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)

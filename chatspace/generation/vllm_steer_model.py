"""The original chatspace's `VLLMSteerModel`, both of its API eras, over
`chatspace.steering.SteerModel`, so that scripts written for it run unchanged.

    model = VLLMSteerModel(VLLMSteeringConfig("Qwen/Qwen3-0.6B", max_model_len=2048))
    spec = VLLMSteerModel.simple_steering(4, vector, scale=2.0)          # per request
    texts = await model.generate(prompts, SamplingParams(max_tokens=64), steering_spec=spec)
    texts, handles = await model.generate(prompts, max_tokens=8, capture_layers=[2, 4])
    hidden = (await handles[0].fetch())[4][0]["hidden"]    # [prompt + generated - 1, hidden]
    replies = await model.chat([{"role": "user", "content": "Hi"}], max_tokens=8)
    await model.set_layer_vector(4, vector)                # the README's steering state

Kept from the original: texts without special tokens (``skip_special_tokens``); keyword
arguments build the `SamplingParams` when none is given, and anything else unknown is an error;
``raw_output=True`` returns vLLM's `RequestOutput`s; ``capture_layers`` is an int or a list
(``[]`` still returns handles); empty prompts, ``max_tokens=0`` and malformed messages are
`ValueError`s; `chat` returns `ChatResponse`s (strings that know their prefill) with message
boundaries on its handles; prompts are tokenized as vLLM does (with the tokenizer's special
tokens), chat prompts through the chat template with the generation prompt.

What differs: the `set_layer_*` steering state applies to requests sent after it (each request
carries its own spec); the README's ops of a layer apply in the order add, cap, ablate;
`bootstrap_layers` is accepted and not needed (every layer can steer); ``enforce_eager=False``
asks for vLLM's compiled model (the original forced eager); captures are ready when `generate`
returns (`fetch` and `fetch_captures_batch` just hand them over) and always travel through
shared memory: ``shm_ttl_seconds`` and ``shm_max_gb`` set its time to live and cap,
``use_shared_memory``, ``shm_threshold_kb`` and ``decode_buffer_size`` have no effect (there is
no byte fallback or decode buffer to size). With tensor parallelism only the first worker
captures, so every layer has one entry. Model names resolve as ``--model`` does (a directory, a
model recorded under the root, the HF cache).
"""

from __future__ import annotations

import atexit
import uuid
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from chatspace.generation import specs
from chatspace.generation.chat import (
    ChatResponse,
    MessageBoundary,
    compute_message_boundaries,
    conversations,
    prefill_of,
    render,
    template_options,
)
from chatspace.generation.sampling import sampling_params, to_sampling
from chatspace.generation.specs import (
    AblationSpec,
    AddSpec,
    LayerSteeringSpec,
    ProjectionCapSpec,
    SteeringOp,
    SteeringSpec,
)
from chatspace.models import find_model
from chatspace.runs.files import default_root
from chatspace.steering.model import SteerModel
from chatspace.steering.outputs import Generation

__all__ = ["AblationSpec", "AddSpec", "CaptureHandle", "ChatResponse", "LayerSteeringSpec",
           "MessageBoundary", "ProjectionCapSpec", "SteeringOp", "SteeringSpec",
           "VLLMSteerModel", "VLLMSteeringConfig", "compute_message_boundaries"]

ORDER = ("add", "cap", "ablate")  # within a layer, as the README's state applied them


@dataclass
class VLLMSteeringConfig:
    model_name: str = "Qwen/Qwen3-32B"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    dtype: str = "auto"
    bootstrap_layers: tuple[int, ...] = ()


class CaptureHandle:
    """One request's captures in the original shape, ``captures[layer][0]["hidden"]``.
    `captures` is the same dict on every access; `fetch` returns it (idempotent)."""

    def __init__(self, generation: Generation, layers: Sequence[int],
                 message_boundaries: tuple[MessageBoundary, ...] | None = None):
        self.request_id = f"capture_{uuid.uuid4().hex}"
        self.layer_indices = tuple(layers)
        self.message_boundaries = message_boundaries
        self._capture = generation.capture
        self._captures: dict[int, list[dict[str, torch.Tensor]]] | None = None

    @property
    def captures(self) -> dict[int, list[dict[str, torch.Tensor]]]:
        if self._captures is None:
            self._captures = {layer: [{"hidden": self._capture[layer]}]
                              for layer in self.layer_indices}
        return self._captures

    async def fetch(self) -> dict[int, list[dict[str, torch.Tensor]]]:
        return self.captures

    def get_message_activations(self, message_idx: int, layer_idx: int, *,
                                include_generated: bool = False) -> torch.Tensor:
        """The rows of one message (a chat capture's `message_boundaries`); the last
        message's with the generated rows when `include_generated`."""
        if self.message_boundaries is None:
            raise RuntimeError("message boundaries exist for captures of chat() only")
        if not 0 <= message_idx < len(self.message_boundaries):
            raise ValueError(f"message_idx {message_idx} out of range "
                             f"[0, {len(self.message_boundaries)})")
        if layer_idx not in self.layer_indices:
            raise ValueError(f"layer_idx {layer_idx} was not captured (captured: "
                             f"{list(self.layer_indices)})")
        hidden = self.captures[layer_idx][0]["hidden"]
        boundary = self.message_boundaries[message_idx]
        last = message_idx == len(self.message_boundaries) - 1
        end = hidden.shape[0] if include_generated and last else boundary.end_token
        return hidden[boundary.start_token:end]

    async def close(self) -> None:
        if self._capture is not None:
            await self._capture.close()

    async def __aenter__(self) -> CaptureHandle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class VLLMSteerModel:
    simple_steering = staticmethod(specs.simple_steering)
    simple_projection_cap = staticmethod(specs.simple_projection_cap)
    simple_ablation = staticmethod(specs.simple_ablation)

    def __init__(self, cfg: VLLMSteeringConfig, bootstrap_layers: Sequence[int] | None = None,
                 *, enforce_eager: bool = True, shm_ttl_seconds: float | None = None,
                 shm_max_gb: float | None = None, decode_buffer_size: int | None = None,
                 use_shared_memory: bool = True, shm_threshold_kb: float | None = None,
                 **vllm_kwargs: Any):
        """`vllm_kwargs` go to vLLM's engine arguments (an unknown one is vLLM's TypeError);
        the original's shared-memory and buffer arguments are chatspace's (module docstring)."""
        for name, value in (("shm_ttl_seconds", shm_ttl_seconds), ("shm_max_gb", shm_max_gb),
                            ("decode_buffer_size", decode_buffer_size),
                            ("shm_threshold_kb", shm_threshold_kb)):
            if value is not None and not (isinstance(value, int | float) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        self.cfg = cfg
        path = find_model(cfg.model_name, default_root()).path
        engine = dict(vllm_kwargs)
        if cfg.max_model_len is not None:
            engine.setdefault("max_model_len", cfg.max_model_len)
        if torch.cuda.is_available():
            engine.setdefault("gpu_memory_utilization", cfg.gpu_memory_utilization)
        dtype = ("bfloat16" if torch.cuda.is_available() else "float32") \
            if cfg.dtype == "auto" else cfg.dtype
        self._model = SteerModel(path, "vllm", dtype=dtype, compile=not enforce_eager,
                                 tensor_parallel_size=cfg.tensor_parallel_size, **engine)
        backend = self._model.backend
        backend.shm_ttl = shm_ttl_seconds
        backend.shm_cap = None if shm_max_gb is None else int(shm_max_gb * 2**30)
        self.model_name = cfg.model_name
        self.hidden_size, self.layer_count = self._model.hidden_size, self._model.num_layers
        self.tokenizer = self._model.tokenizer
        self._ops: dict[int, dict[str, Any]] = {}
        self._target: int | None = None
        atexit.register(_close_at_exit, weakref.ref(self._model))  # before module teardown

    # the README's steering state
    def _set(self, layer: int, op_name: str, op: Any) -> None:
        self._ops.setdefault(layer, {})[op_name] = op
        self.export_steering_spec().check(self.hidden_size, self.layer_count)

    def _clear(self, layer: int, op_name: str) -> None:
        self._ops.get(layer, {}).pop(op_name, None)

    async def set_layer_vector(self, layer_idx: int, vector: torch.Tensor,
                               scale: float = 1.0) -> None:
        self._set(layer_idx, "add", AddSpec(vector, scale))

    def set_target_layer(self, layer_idx: int) -> None:
        self._target = layer_idx

    async def set_vector(self, vector: torch.Tensor) -> None:
        if self._target is None:
            raise ValueError("set_vector: call set_target_layer(layer) first")
        await self.set_layer_vector(self._target, vector)

    async def clear_layer_vector(self, layer_idx: int) -> None:
        self._clear(layer_idx, "add")

    async def set_layer_projection_cap(self, layer_idx: int, vector: torch.Tensor,
                                       min: float | None = None,
                                       max: float | None = None) -> None:
        self._set(layer_idx, "cap", ProjectionCapSpec(vector, min, max))

    async def clear_layer_projection_cap(self, layer_idx: int) -> None:
        self._clear(layer_idx, "cap")

    async def set_layer_ablation(self, layer_idx: int, vector: torch.Tensor,
                                 scale: float = 0.0) -> None:
        self._set(layer_idx, "ablate", AblationSpec(vector, scale))

    async def clear_layer_ablation(self, layer_idx: int) -> None:
        self._clear(layer_idx, "ablate")

    async def clear_all_vectors(self) -> None:
        self._ops.clear()

    async def apply_steering_spec(self, spec: SteeringSpec) -> None:
        spec.check(self.hidden_size, self.layer_count)
        self._ops = {layer: {op.op: op for op in entry.ops}
                     for layer, entry in spec.layers.items()}

    def export_steering_spec(self) -> SteeringSpec:
        return SteeringSpec({layer: LayerSteeringSpec([ops[k] for k in ORDER if k in ops])
                             for layer, ops in sorted(self._ops.items()) if ops})

    # generation
    async def generate(self, prompts: str | Sequence[str], sampling_params: Any = None, *,
                       capture_layers: int | Sequence[int] | None = None,
                       steering_spec: SteeringSpec | None = None, raw_output: bool = False,
                       use_tqdm: bool = False, capture_hidden_states: bool = False,
                       layers: Sequence[int] | None = None, **kwargs: Any):
        """Texts (or `RequestOutput`s with `raw_output`), and with `capture_layers` (or the
        older ``capture_hidden_states=True, layers=[...]``) ``(results, handles)``. `kwargs`
        build the `SamplingParams` when `sampling_params` is None."""
        batch = [prompts] if isinstance(prompts, str) else list(prompts)
        if not batch:
            raise ValueError("prompts: no prompt given")
        for number, prompt in enumerate(batch):
            if not isinstance(prompt, str) or not prompt:
                raise ValueError(f"prompts[{number}]: a prompt must be a non-empty string, "
                                 f"got {prompt!r}")
        token_ids = [self.tokenizer(prompt)["input_ids"] for prompt in batch]
        return await self._run(batch, token_ids, sampling_params, kwargs,
                               _layers(capture_layers, capture_hidden_states, layers),
                               steering_spec, raw_output, None)

    async def chat(self, messages: list[dict[str, Any]] | list[list[dict[str, Any]]],
                   sampling_params: Any = None, *, use_tqdm: bool = False,
                   chat_options: dict[str, Any] | None = None,
                   capture_layers: int | Sequence[int] | None = None,
                   raw_output: bool = False, steering_spec: SteeringSpec | None = None,
                   capture_hidden_states: bool = False, layers: Sequence[int] | None = None,
                   **sampling_kwargs: Any):
        """`generate` for one conversation or a list of them: `ChatResponse`s (or
        `RequestOutput`s), and with captures ``(results, handles)`` whose handles know each
        message's token span. `chat_options` go to the chat template."""
        batch = conversations(messages)
        options = template_options(chat_options)
        rendered = [render(self.tokenizer, conversation, options) for conversation in batch]
        wanted = _layers(capture_layers, capture_hidden_states, layers)
        bounds = [compute_message_boundaries(c, self.tokenizer, options) for c in batch] \
            if wanted is not None else None
        results = await self._run([text for text, _ in rendered],
                                  [ids for _, ids in rendered], sampling_params,
                                  sampling_kwargs, wanted, steering_spec, raw_output, bounds)
        replies = results[0] if wanted is not None else results
        if not raw_output:
            replies[:] = [ChatResponse(prefill_of(c, options), text)
                          for c, text in zip(batch, replies, strict=True)]
        return results

    async def _run(self, prompts: list[str], token_ids: list[list[int]], params: Any,
                   kwargs: dict[str, Any], wanted: list[int] | None,
                   steering_spec: SteeringSpec | None, raw_output: bool,
                   bounds: list[tuple[MessageBoundary, ...]] | None):
        sampling, skip_special = to_sampling(sampling_params(params, kwargs))
        spec = steering_spec if steering_spec is not None else self.export_steering_spec()
        out = await self._model.generate(token_ids, sampling,
                                         steering_spec=spec if spec.layers else None,
                                         capture_layers=wanted)
        texts = [self.tokenizer.decode(g.token_ids, skip_special_tokens=skip_special)
                 for g in out]
        results: list = [_raw(g, prompt, text) for g, prompt, text in zip(
            out, prompts, texts, strict=True)] if raw_output else texts
        if wanted is None:
            return results
        layers = sorted(set(wanted))
        return results, [CaptureHandle(g, layers, bounds[n] if bounds else None)
                         for n, g in enumerate(out)]

    async def fetch_captures_batch(self, handles: Sequence[CaptureHandle]) -> None:
        """Kept for the original calls: captures arrive with their generations."""
        for handle in handles:
            await handle.fetch()

    def generate_sync(self, *args: Any, **kwargs: Any):
        """Deprecated in the original: `generate` on the model's own event loop."""
        warnings.warn("generate_sync() is deprecated; use `await generate()`",
                      DeprecationWarning, stacklevel=2)
        return self._model.run(self.generate(*args, **kwargs))

    def chat_sync(self, *args: Any, **kwargs: Any):
        """Deprecated in the original: `chat` on the model's own event loop."""
        warnings.warn("chat_sync() is deprecated; use `await chat()`", DeprecationWarning,
                      stacklevel=2)
        return self._model.run(self.chat(*args, **kwargs))

    def close(self) -> None:
        self._model.close()


def _layers(capture_layers: int | Sequence[int] | None, capture_hidden_states: bool,
            layers: Sequence[int] | None) -> list[int] | None:
    """The layers asked for (None: no capture): an int, a list (maybe empty), or the older
    ``capture_hidden_states=True, layers=[...]``."""
    if capture_layers is None and capture_hidden_states:
        capture_layers = list(layers or [])
    if capture_layers is None:
        return None
    return [capture_layers] if isinstance(capture_layers, int) else list(capture_layers)


def _raw(generation: Generation, prompt: str, text: str) -> Any:
    """vLLM's own `RequestOutput` of a generation, with the text the caller asked for."""
    raw = generation.raw
    raw.prompt = prompt
    raw.outputs[0].text = text
    return raw


def _close_at_exit(model: weakref.ref) -> None:
    alive = model()
    if alive is not None:
        alive.close()

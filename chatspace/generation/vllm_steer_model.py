"""A thin compatibility layer: the original `VLLMSteerModel` calls on top of
`chatspace.steering.SteerModel`, so that scripts written for the original chatspace run
unchanged.

    cfg = VLLMSteeringConfig(model_name="Qwen/Qwen3-0.6B", max_model_len=2048)
    model = VLLMSteerModel(cfg, bootstrap_layers=(2, 4, 6))
    await model.set_layer_vector(4, vector)               # steering state, as before
    texts = await model.generate(prompt, SamplingParams(temperature=0.0, max_tokens=64))
    texts, handles = await model.generate(prompts, sampling, capture_layers=[2, 4])
    # also: capture_hidden_states=True, layers=[2, 4]
    await model.fetch_captures_batch(handles)              # a no-op: captures are ready
    hidden = handles[0].captures[4][0]["hidden"]           # [prompt + generated - 1, hidden]
    async with handles[0]: ...                             # releases the shared memory

What differs: the steering state set with `set_layer_*` applies to the requests sent after it
(each request carries its own spec: concurrent requests never see a half-applied update), ops
of a layer apply in the order add, cap, ablate; `bootstrap_layers` is accepted and not needed
(every layer can steer); `enforce_eager=False` asks for vLLM's compiled model. Model names
resolve as `--model` does (a directory, a model recorded under the root, the HF cache).
"""

from __future__ import annotations

import atexit
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from chatspace.models import find_model
from chatspace.runs.record import default_root
from chatspace.steering.model import SteerModel
from chatspace.steering.outputs import Generation, Sampling
from chatspace.steering.spec import (
    AblationSpec,
    AddSpec,
    LayerSteeringSpec,
    ProjectionCapSpec,
    SteeringSpec,
)

ORDER = ("add", "cap", "ablate")  # within a layer, as the original applied them


@dataclass
class VLLMSteeringConfig:
    model_name: str
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    dtype: str = "auto"


class CaptureHandle:
    """One request's captures in the original shape: ``captures[layer][0]["hidden"]`` (one
    entry per tensor-parallel worker in the original; the full tensor here)."""

    def __init__(self, generation: Generation, layers: Sequence[int]):
        self._capture = generation.capture
        self.layer_indices = list(layers)

    @property
    def captures(self) -> dict[int, list[dict[str, torch.Tensor]]]:
        return {layer: [{"hidden": self._capture[layer]}] for layer in self.layer_indices}

    async def close(self) -> None:
        await self._capture.close()

    async def __aenter__(self) -> CaptureHandle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _sampling(params: Any) -> Sampling:
    """vLLM `SamplingParams` (or chatspace's `Sampling`) as chatspace's `Sampling`."""
    if params is None or isinstance(params, Sampling):
        return params or Sampling()
    return Sampling(max_tokens=params.max_tokens or 16, temperature=params.temperature,
                    top_p=params.top_p, seed=params.seed, ignore_eos=params.ignore_eos)


class VLLMSteerModel:
    def __init__(self, cfg: VLLMSteeringConfig, bootstrap_layers: Sequence[int] = (),
                 enforce_eager: bool = True, **engine: Any):
        path = find_model(cfg.model_name, default_root()).path
        if cfg.max_model_len is not None:
            engine["max_model_len"] = cfg.max_model_len
        dtype = "bfloat16" if cfg.dtype == "auto" and torch.cuda.is_available() else \
            "float32" if cfg.dtype == "auto" else cfg.dtype
        self._model = SteerModel(path, "vllm", dtype=dtype, compile=not enforce_eager,
                                 tensor_parallel_size=cfg.tensor_parallel_size, **engine)
        self.model_name = cfg.model_name
        self.hidden_size, self.layer_count = self._model.hidden_size, self._model.num_layers
        self.tokenizer = self._model.tokenizer
        self._ops: dict[int, dict[str, Any]] = {}
        self._target: int | None = None
        atexit.register(_close_at_exit, weakref.ref(self._model))  # before module teardown

    # the steering state
    def _set(self, layer: int, kind: str, op: Any) -> None:
        self._ops.setdefault(layer, {})[kind] = op
        self.export_steering_spec().check(self.hidden_size, self.layer_count)

    def _clear(self, layer: int, kind: str) -> None:
        self._ops.get(layer, {}).pop(kind, None)

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
        return SteeringSpec({layer: LayerSteeringSpec(tuple(ops[k] for k in ORDER if k in ops))
                             for layer, ops in sorted(self._ops.items()) if ops})

    # generation
    async def generate(self, prompts: str | Sequence[str], sampling_params: Any = None, *,
                       capture_layers: Sequence[int] | None = None,
                       capture_hidden_states: bool = False,
                       layers: Sequence[int] | None = None,
                       steering_spec: SteeringSpec | None = None, **_: Any):
        """Texts, or ``(texts, handles)`` when captures are asked for (`capture_layers`, or
        `capture_hidden_states=True` with `layers`)."""
        batch = [prompts] if isinstance(prompts, str) else list(prompts)
        return await self._run(batch, sampling_params, capture_layers, capture_hidden_states,
                               layers, steering_spec)

    async def chat(self, messages: list[dict[str, str]] | list[list[dict[str, str]]],
                   sampling_params: Any = None, *, capture_layers: Sequence[int] | None = None,
                   capture_hidden_states: bool = False, layers: Sequence[int] | None = None,
                   steering_spec: SteeringSpec | None = None, **_: Any):
        """`generate` for one conversation or a list of them (the chat template applied)."""
        batch = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        return await self._run(batch, sampling_params, capture_layers, capture_hidden_states,
                               layers, steering_spec)

    async def _run(self, batch: list, sampling_params: Any, capture_layers, capture_hidden,
                   layers, steering_spec):
        wanted = list(capture_layers or (layers if capture_hidden else None) or []) or None
        spec = steering_spec or self.export_steering_spec()
        out = await self._model.generate(batch, _sampling(sampling_params),
                                         steering_spec=spec if spec.layers else None,
                                         capture_layers=wanted)
        texts = [g.text for g in out]
        if wanted is None:
            return texts
        return texts, [CaptureHandle(g, sorted(set(wanted))) for g in out]

    async def fetch_captures_batch(self, handles: Sequence[CaptureHandle]) -> None:
        """Kept for the original calls: captures arrive with their generations."""

    def close(self) -> None:
        self._model.close()


def _close_at_exit(model: weakref.ref) -> None:
    alive = model()
    if alive is not None:
        alive.close()

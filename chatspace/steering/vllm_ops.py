"""Steering and capture at the decoder-layer boundaries as an operation the compiler keeps.

Python forward hooks do not survive vLLM's compiled model: dynamo traces the decoder once and
vLLM then calls the traced code directly, so a hook added afterwards never runs (and one added
before would be traced into a graph that cannot see per-step state). Instead, every decoder
layer of the supported architectures ends in one registered torch custom op,
``chatspace::after_layer(hidden, residual, layer)``, which steers `hidden` in place:

- it is opaque to dynamo and inductor (a custom op is never traced into), so the compiled
  graph calls it on every forward pass with the layer's real tensors, and its Python body reads
  the per-step request table that the model's pre-hook fills (which runs outside the compiled
  region, as does the logits hook);
- it is in place before vLLM builds and compiles the model: importing this module (the worker
  imports it with the worker extension, before it loads the model) wraps each decoder layer's
  forward as the layer is constructed, so tracing sees the call;
- it writes into `hidden` (``mutates_args``) rather than returning a new tensor, as vLLM's own
  attention op writes into its output: with CUDA graphs the op is a split point
  (`splitting_ops`), run eagerly between the captured pieces, and the next piece reads its
  input at the address it was captured with, so a fresh tensor would be read as stale memory;
  in place, the pieces and the op share `hidden`'s buffer. The captured rows are copied out
  (``hidden + residual`` is a new tensor), never kept as views of a buffer a graph reuses;
- CUDA graphs must be piecewise (``cudagraph_mode = PIECEWISE``): a full graph would replay a
  decode step without calling the op, and steering would silently stop after the prefill.

The same op runs in eager mode (``enforce_eager``), so both modes share one implementation.
With nothing attached (`attach`) it does nothing. Measured on the CPU against plain vLLM
(`bench.steering_overhead`): idle, one-layer steering, a spec per request and capture of
every layer cost within the targets in both modes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Protocol

import torch

OP = "chatspace::after_layer"


class LayerTarget(Protocol):
    def after_layer(self, layer: int, hidden: torch.Tensor, residual: torch.Tensor) -> None:
        """Steer (in place) and capture the rows of `hidden` this step asks for."""


_target: LayerTarget | None = None


def attach(target: LayerTarget | None) -> None:
    """What the op calls from now on (None: nothing)."""
    global _target
    _target = target


@torch.library.custom_op(OP, mutates_args=("hidden",))
def after_layer(hidden: torch.Tensor, residual: torch.Tensor, layer: int) -> None:
    if _target is not None:
        _target.after_layer(layer, hidden, residual)


@after_layer.register_fake
def _(hidden: torch.Tensor, residual: torch.Tensor, layer: int) -> None:
    return None


def _wrap_init(init: Callable) -> Callable:
    signature = inspect.signature(init)

    def __init__(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        if "forward" in self.__dict__:  # a subclass's __init__ already wrapped it
            return
        from vllm.model_executor.models.utils import extract_layer_index

        prefix = signature.bind(self, *args, **kwargs).arguments.get("prefix", "")
        layer, inner = extract_layer_index(prefix), self.forward

        def forward(*args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
            hidden, residual = inner(*args, **kwargs)
            torch.ops.chatspace.after_layer(hidden, residual, layer)
            return hidden, residual

        self.forward = forward
    __init__.chatspace = True
    return __init__


def install() -> None:
    """Wrap the decoder layers of the supported architectures (those of
    `hf_backend.SUPPORTED`; Mistral's layer is Llama's) as they are built. Idempotent."""
    from vllm.model_executor.models import llama, qwen2, qwen3

    for layer_class in (qwen2.Qwen2DecoderLayer, qwen3.Qwen3DecoderLayer,
                        llama.LlamaDecoderLayer):
        if not getattr(layer_class.__init__, "chatspace", False):
            layer_class.__init__ = _wrap_init(layer_class.__init__)


def cuda_compilation() -> dict:
    """vLLM's compilation settings for steering with CUDA graphs: its default piecewise split
    points (attention, the KV cache update) and this op, and piecewise graphs only."""
    from vllm.config import CompilationConfig

    return {"splitting_ops": [*CompilationConfig._attention_ops, "vllm::unified_kv_cache_update",
                              "vllm::unified_mla_kv_cache_update", OP],
            "cudagraph_mode": "PIECEWISE"}

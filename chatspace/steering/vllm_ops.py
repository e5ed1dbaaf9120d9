"""Steering and capture at the decoder-layer boundaries as an operation the compiler keeps.

Python forward hooks do not survive vLLM's compiled model: dynamo traces the decoder once and
vLLM then calls the traced code directly, so a hook added afterwards never runs (and one added
before would be traced into a graph that cannot see per-step state). Instead, every decoder
layer of the supported architectures ends in one registered torch custom op,
``chatspace::after_layer(hidden, residual, layer) -> hidden``:

- it is opaque to dynamo and inductor (a custom op is never traced into), so the compiled
  graph calls it on every forward pass with the layer's real tensors, and its Python body reads
  the per-step request table that the model's pre-hook fills (which runs outside the compiled
  region, as does the logits hook);
- it is in place before vLLM builds and compiles the model: importing this module (the worker
  imports it with the worker extension, before it loads the model) wraps each decoder layer's
  forward as the layer is constructed, so tracing sees the call;
- it is functional (returns a new tensor, mutates nothing), so functionalization and
  inductor's reordering cannot move a capture past a later in-place add-norm;
- for CUDA graphs it is listed in ``compilation_config.splitting_ops`` (`splitting_ops`): vLLM's
  piecewise graphs split around it as they do around attention, and it runs eagerly between the
  captured pieces with the batch's true tensors, whatever batch size a graph was captured for.

The same op runs in eager mode (``enforce_eager``), so both modes share one implementation.
With nothing attached (`attach`) the op copies `hidden` and does nothing else.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Protocol

import torch

OP = "chatspace::after_layer"


class LayerTarget(Protocol):
    def after_layer(self, layer: int, hidden: torch.Tensor,
                    residual: torch.Tensor) -> torch.Tensor | None:
        """The layer's new hidden state (steered), or None to leave it as it is."""


_target: LayerTarget | None = None


def attach(target: LayerTarget | None) -> None:
    """What the op calls from now on (None: nothing)."""
    global _target
    _target = target


@torch.library.custom_op(OP, mutates_args=())
def after_layer(hidden: torch.Tensor, residual: torch.Tensor, layer: int) -> torch.Tensor:
    steered = _target.after_layer(layer, hidden, residual) if _target is not None else None
    return hidden.clone() if steered is None or steered is hidden else steered


@after_layer.register_fake
def _(hidden: torch.Tensor, residual: torch.Tensor, layer: int) -> torch.Tensor:
    return torch.empty_like(hidden)


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
            return torch.ops.chatspace.after_layer(hidden, residual, layer), residual

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


def splitting_ops() -> list[str]:
    """vLLM's default piecewise split points (attention, the KV cache update) and this op."""
    from vllm.config import CompilationConfig

    return [*CompilationConfig._attention_ops, "vllm::unified_kv_cache_update",
            "vllm::unified_mla_kv_cache_update", OP]

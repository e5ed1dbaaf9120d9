"""Steering and capture on HF transformers and vLLM: specs of what to do to a decoder's residual
stream (`spec`), the model that applies them per request and returns captures (`model`), and
its sampling and capture options (`outputs`), and the directions it reads on every token
(`probes`).

Every public name is importable from here; each is loaded on first use (PEP 562), so that
importing a submodule, or this package, costs no torch import until a name needs it.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "AblationSpec": "spec", "AddSpec": "spec", "LayerSteeringSpec": "spec",
    "ProjectionCapSpec": "spec", "SteeringSpec": "spec", "apply_ops": "spec",
    "load_vector": "spec",
    "SteerModel": "model",
    "Capture": "outputs", "CaptureOptions": "outputs", "Generation": "outputs",
    "Sampling": "outputs", "Probe": "probes",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'chatspace.steering' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"chatspace.steering.{_WHERE[name]}"), name)
    globals()[name] = value
    return value

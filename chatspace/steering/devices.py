"""Which torch device a model runs on when none is named: the one choice the embed models and
the steering backends share."""

from __future__ import annotations


def pick_device(requested: str | None = None) -> str:
    """`requested`, else CUDA, then Apple MPS, then the CPU."""
    if requested and requested != "auto":
        return requested
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"

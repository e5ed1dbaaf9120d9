"""The original chatspace steering API (`VLLMSteerModel`), kept for the scripts written
against it; new code uses `chatspace.steering.SteerModel`."""

from chatspace.generation.vllm_steer_model import (
    CaptureHandle,
    VLLMSteeringConfig,
    VLLMSteerModel,
)

__all__ = ["CaptureHandle", "VLLMSteerModel", "VLLMSteeringConfig"]

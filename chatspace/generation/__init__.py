"""The original chatspace steering API (`VLLMSteerModel` and its spec classes), kept for the
scripts written against it; new code uses `chatspace.steering.SteerModel`."""

from chatspace.generation.chat import ChatResponse, MessageBoundary, compute_message_boundaries
from chatspace.generation.specs import (
    AblationSpec,
    AddSpec,
    LayerSteeringSpec,
    ProjectionCapSpec,
    SteeringOp,
    SteeringSpec,
    simple_ablation,
    simple_projection_cap,
    simple_steering,
)
from chatspace.generation.vllm_steer_model import (
    CaptureHandle,
    VLLMSteeringConfig,
    VLLMSteerModel,
)

__all__ = ["AblationSpec", "AddSpec", "CaptureHandle", "ChatResponse", "LayerSteeringSpec",
           "MessageBoundary", "ProjectionCapSpec", "SteeringOp", "SteeringSpec",
           "VLLMSteerModel", "VLLMSteeringConfig", "compute_message_boundaries",
           "simple_ablation", "simple_projection_cap", "simple_steering"]

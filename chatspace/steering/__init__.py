"""Steering and capture: specs of what to do to a decoder's residual stream (this phase's
library; the HF and vLLM backends build on `spec`)."""

from chatspace.steering.spec import (
    AblationSpec,
    AddSpec,
    LayerSteeringSpec,
    ProjectionCapSpec,
    SteeringSpec,
    apply_ops,
    load_vector,
)

__all__ = ["AblationSpec", "AddSpec", "LayerSteeringSpec", "ProjectionCapSpec", "SteeringSpec",
           "apply_ops", "load_vector"]

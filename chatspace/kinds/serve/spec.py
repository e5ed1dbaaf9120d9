"""The serve kind's spec: which model (``[model]``), its default steering (``[steering]``: a
spec file, or one vector with its layer, scale and op) and where it listens (``[server]``),
plus the shared ``[run]`` and ``[slurm]`` tables. One task hosts the server."""

from __future__ import annotations

from typing import Literal

from chatspace.errors import BadInput
from chatspace.specs import JobSpec, Section, option
from chatspace.steering.choices import OpName


class ServeModelConfig(Section):
    name: str = option("", "A local model directory, a model recorded with download-model, "
                           "or a name in the HF cache (or the first argument).",
                       flag="--model")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = option("auto",
                                                                      "The model's dtype.")
    max_model_len: int | None = option(None, "Context length.", ge=1)
    tensor_parallel_size: int = option(1, ge=1)
    compile: bool | None = option(None, "vLLM's compiled model and CUDA graphs, or eager mode "
                                        "(default: compiled on CUDA, eager on the CPU).")

    def check(self) -> None:
        if not self.name:
            raise BadInput("model.name is required (submit serve MODEL, or --model)")


class DefaultSteeringConfig(Section):
    """The steering of every request that names none (a request's `steering: null` is
    unsteered); none by default."""

    spec: str | None = option(None, "A saved steering spec (SteeringSpec.save).",
                              flag="--steer")
    vector: str | None = option(None, "One vector instead: a file (.npy, .pt, .safetensors) "
                                      "or a vectors run (id or dir).")
    vector_key: str | None = option(None, "The vector's name in the file or run (its layer is "
                                          "the default layer).")
    layer: int | None = option(None, "The vector's layer (default: the key's, else the "
                                     "middle one).", ge=0)
    scale: float | None = option(None, "The vector's scale (default 1).", allow_inf_nan=False)
    op: OpName = option("add", "add, cap or ablate.")

    def check(self) -> None:
        if self.spec and self.vector:
            raise BadInput("give steering.spec (--steer) or steering.vector (--vector), not "
                           "both")


class ServerConfig(Section):
    host: str = option("0.0.0.0", "Address to listen on (0.0.0.0: every interface of the "
                                  "node, so that clients on other nodes reach it).",
                       min_length=1)
    port: int = option(0, "Port to listen on (0: one free on the node, recorded).", ge=0,
                       le=65535)


class ServeSpec(JobSpec):
    model: ServeModelConfig
    steering: DefaultSteeringConfig = DefaultSteeringConfig()
    server: ServerConfig = ServerConfig()

    def check(self) -> None:
        if self.run.array != 1:
            raise BadInput(f"run.array (--array) must be 1 for serve: one task hosts the "
                           f"server, got {self.run.array}")

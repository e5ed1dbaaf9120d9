"""The steering library's named choices, without torch: the backends, the operations, and
which hidden-state rows a capture keeps and how they are pooled. Specs and the CLI take their
types from here."""

from __future__ import annotations

from typing import Literal, get_args

Backend = Literal["vllm", "hf"]
OpName = Literal["add", "cap", "ablate"]  # an op as a spec file names it
Rows = Literal["all", "prompt", "response", "last"]
Pool = Literal["none", "mean"]
DType = Literal["float32", "bfloat16", "float16"]

BACKENDS: tuple[str, ...] = get_args(Backend)
OP_NAMES: tuple[str, ...] = get_args(OpName)
ROWS: tuple[str, ...] = get_args(Rows)
POOLS: tuple[str, ...] = get_args(Pool)

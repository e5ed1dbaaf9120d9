"""The steer job's spec: which model (``[model]``), which prompts (``[prompts]``), optional
personas (``[personas]``), how to generate (``[generation]``), the steering points
(``[[steering]]``), what to capture (``[capture]``) and the metrics (``[metrics]``), plus the
shared ``[run]`` and ``[slurm]`` tables. What needs the model or the files (vector sizes, layer
ranges, the prompts themselves) is checked when the run is planned."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from chatspace.data.config import check_split
from chatspace.errors import BadInput
from chatspace.specs import JobSpec

BACKENDS = ("vllm", "hf")
DTYPES = ("float32", "bfloat16", "float16")
OPS = ("add", "cap", "ablate")
STYLES = ("you-are-a", "none")
ROWS = ("all", "prompt", "response", "last")
POOLS = ("none", "mean")


@dataclass(frozen=True)
class SteerModelConfig:
    name: str = ""
    backend: str = "vllm"
    dtype: str = "bfloat16"
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    max_num_seqs: int | None = None
    device: str = "auto"  # hf: auto = CUDA, then MPS, then CPU
    batch_size: int | None = None  # hf: prompts generated together (default 256 GPU, 32 CPU)

    def validate(self) -> None:
        if not self.name:
            raise BadInput("model.name is required (--model DIR_OR_NAME)")
        if self.backend not in BACKENDS:
            raise BadInput(f"model.backend must be one of {', '.join(BACKENDS)}, "
                           f"got {self.backend!r}")
        if self.dtype not in DTYPES:
            raise BadInput(f"model.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.device not in ("auto", "cpu", "mps", "cuda") and \
                not self.device.startswith("cuda:"):
            raise BadInput(f"model.device must be auto, cpu, cuda, cuda:N or mps, "
                           f"got {self.device!r}")
        for name in ("max_model_len", "max_num_seqs", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise BadInput(f"model.{name} must be >= 1, got {value}")
        if self.tensor_parallel_size < 1:
            raise BadInput(f"model.tensor_parallel_size must be >= 1, "
                           f"got {self.tensor_parallel_size}")


@dataclass(frozen=True)
class PromptsConfig:
    """A JSON file (a list of strings, or of chat-message lists), or a dataset column sampled
    like embed rows."""

    file: str | None = None
    dataset: str | None = None
    subset: str | None = None
    split: str | None = None
    text_field: str | None = None
    messages_field: str | None = None
    n: int | None = None
    p: float | None = None
    seed: int = 0

    def validate(self) -> None:
        if (self.file is None) == (self.dataset is None):
            raise BadInput("give exactly one of prompts.file (--prompts FILE) and "
                           "prompts.dataset (--prompts-dataset)")
        if self.dataset is not None:
            if (self.text_field is None) == (self.messages_field is None):
                raise BadInput("prompts from a dataset need exactly one of prompts.text_field "
                               "and prompts.messages_field")
            if (self.n is None) == (self.p is None):
                raise BadInput("prompts from a dataset need exactly one of prompts.n and "
                               "prompts.p")
            check_split(self.subset, self.split)
        if self.seed < 0:
            raise BadInput(f"prompts.seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class PersonasConfig:
    file: str | None = None
    system_prompt_style: str = "you-are-a"
    rename_role: bool | None = None  # default: renamed whenever personas are given

    @property
    def renames_role(self) -> bool:
        """Whether the assistant role is renamed to the persona (the persona runner's
        default whenever there are personas)."""
        return self.file is not None if self.rename_role is None else self.rename_role

    def validate(self) -> None:
        if self.system_prompt_style not in STYLES:
            raise BadInput(f"personas.system_prompt_style must be one of {', '.join(STYLES)}, "
                           f"got {self.system_prompt_style!r}")
        if self.rename_role and self.file is None:
            raise BadInput("personas.rename_role needs personas.file")


@dataclass(frozen=True)
class GenerationConfig:
    # the persona runner's defaults: greedy, and room to finish a thinking section
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 1024
    n_reps: int = 1
    seed: int = 0
    thinking: bool | None = None  # enable_thinking for the chat template; None: its default

    def validate(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise BadInput(f"generation.temperature (--temperature) must be a finite number "
                           f">= 0, got {self.temperature}")
        if self.seed < 0:
            raise BadInput(f"generation.seed (--seed) must be >= 0, got {self.seed}")
        if not 0 < self.top_p <= 1:
            raise BadInput(f"generation.top_p must be in (0, 1], got {self.top_p}")
        for name in ("max_tokens", "n_reps"):
            if getattr(self, name) < 1:
                raise BadInput(f"generation.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class SteeringPoint:
    """One ``[[steering]]`` entry: no op is the baseline; otherwise each layer x scale (add,
    ablate) or each layer (cap, with min/max) is one point of the sweep."""

    name: str = ""
    op: str | None = None
    layers: list[int] = field(default_factory=list)
    vector: str | None = None
    vector_key: str | None = None
    scales: list[float] = field(default_factory=list)
    min: float | None = None
    max: float | None = None

    def validate(self, where: str) -> None:
        if not self.name:
            raise BadInput(f"{where}.name is required")
        if self.op is None:
            if self.vector or self.layers or self.scales:
                raise BadInput(f"{where}: a baseline (no op) takes no vector, layers or scales")
            return
        if self.op not in OPS:
            raise BadInput(f"{where}.op must be one of {', '.join(OPS)}, got {self.op!r}")
        if not self.vector:
            raise BadInput(f"{where}.vector is required for op {self.op}")
        if not self.layers or not all(isinstance(x, int) for x in self.layers):
            raise BadInput(f"{where}.layers must be a non-empty list of layer indices")
        if self.op == "cap":
            if self.min is None and self.max is None:
                raise BadInput(f"{where}: op cap needs min, max or both")
            if self.min is not None and self.max is not None and self.min > self.max:
                raise BadInput(f"{where}: min {self.min} > max {self.max}")
        elif not self.scales:
            raise BadInput(f"{where}.scales is empty: op {self.op} needs at least one scale")
        elif not all(isinstance(x, int | float) for x in self.scales):
            raise BadInput(f"{where}.scales must be numbers, got {self.scales!r}")


@dataclass(frozen=True)
class CaptureConfig:
    layers: list[int] = field(default_factory=list)
    rows: str = "last"
    pool: str = "none"
    dtype: str | None = None

    def validate(self) -> None:
        if self.rows not in ROWS:
            raise BadInput(f"capture.rows must be one of {', '.join(ROWS)}, got {self.rows!r}")
        if self.pool not in POOLS:
            raise BadInput(f"capture.pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise BadInput(f"capture.dtype must be one of {', '.join(DTYPES)}, "
                           f"got {self.dtype!r}")
        if not all(isinstance(x, int) for x in self.layers):
            raise BadInput(f"capture.layers must be layer indices, got {self.layers!r}")


@dataclass(frozen=True)
class MetricsConfig:
    top_k_mass_k: int = 5

    def validate(self) -> None:
        if self.top_k_mass_k < 1:
            raise BadInput(f"metrics.top_k_mass_k must be >= 1, got {self.top_k_mass_k}")


@dataclass(frozen=True, kw_only=True)
class SweepSpec(JobSpec):
    model: SteerModelConfig = SteerModelConfig()
    prompts: PromptsConfig = PromptsConfig()
    personas: PersonasConfig = PersonasConfig()
    generation: GenerationConfig = GenerationConfig()
    steering: list[SteeringPoint] = field(default_factory=list)
    capture: CaptureConfig = CaptureConfig()
    metrics: MetricsConfig = MetricsConfig()

    def validate(self) -> None:
        for section in (self.model, self.prompts, self.personas, self.generation, self.capture,
                        self.metrics):
            section.validate()
        names = set()
        for number, point in enumerate(self.steering):
            point.validate(f"steering[{number}]")
            if point.name in names:
                raise BadInput(f"steering[{number}].name {point.name!r} is used twice")
            names.add(point.name)
        super().validate()

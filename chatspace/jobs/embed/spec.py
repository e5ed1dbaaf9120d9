"""The embed job's spec: which rows (``[dataset]``, ``[sampling]``), which model and backend
(``[model]``), the OpenAI backend's limits (``[openai]``), plus the shared ``[run]`` and
``[slurm]`` tables."""

from __future__ import annotations

from dataclasses import dataclass

from chatspace.data.config import DatasetConfig, SamplingConfig
from chatspace.errors import BadInput
from chatspace.specs import JobSpec

BACKENDS = ("sentence-transformers", "openai")
DTYPES = ("float32", "float16", "bfloat16")
DEVICES = ("auto", "cpu", "cuda")
LONG_INPUTS = ("truncate", "chunk")
# OpenAI's documented limits for /v1/embeddings.
API_MAX_INPUTS = 2048
API_MAX_REQUEST_TOKENS = 300_000


@dataclass(frozen=True)
class ModelConfig:
    name: str | None = None
    backend: str = "sentence-transformers"
    batch_size: int = 64
    tokens_per_batch: int | None = None
    bucket_min_tokens: int = 16
    bucket_max_tokens: int = 512
    compile: bool = False
    dtype: str = "float32"
    device: str = "auto"

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise BadInput(f"model.backend must be one of {', '.join(BACKENDS)}, "
                           f"got {self.backend!r}")
        for name in ("batch_size", "bucket_min_tokens", "bucket_max_tokens"):
            if getattr(self, name) < 1:
                raise BadInput(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.tokens_per_batch is not None and self.tokens_per_batch < 1:
            raise BadInput(f"model.tokens_per_batch must be >= 1, got {self.tokens_per_batch}")
        if self.bucket_min_tokens > self.bucket_max_tokens:
            raise BadInput(f"model.bucket_min_tokens ({self.bucket_min_tokens}) exceeds "
                           f"model.bucket_max_tokens ({self.bucket_max_tokens})")
        if self.dtype not in DTYPES:
            raise BadInput(f"model.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise BadInput(f"model.device must be one of {', '.join(DEVICES)} or cuda:N, "
                           f"got {self.device!r}")


@dataclass(frozen=True)
class OpenAIConfig:
    """How the OpenAI backend sends requests. The rate limits are the whole run's: each task
    takes its share (limit / tasks running at once)."""

    requests_per_minute: int = 3_000
    tokens_per_minute: int = 1_000_000
    max_in_flight: int = 8
    dimensions: int | None = None
    long_inputs: str = "truncate"
    max_inputs_per_request: int = API_MAX_INPUTS
    max_tokens_per_request: int = 270_000
    timeout: float | None = None  # seconds; default $OPENAI_TIMEOUT or 60
    max_attempts: int = 8
    price_per_million: float | None = None  # USD per 1M tokens; default from the price table

    def validate(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute", "max_in_flight",
                     "max_attempts"):
            if getattr(self, name) < 1:
                raise BadInput(f"openai.{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.max_inputs_per_request <= API_MAX_INPUTS:
            raise BadInput(f"openai.max_inputs_per_request must be in 1..{API_MAX_INPUTS}, "
                           f"got {self.max_inputs_per_request}")
        if not 8191 <= self.max_tokens_per_request <= API_MAX_REQUEST_TOKENS:
            raise BadInput(f"openai.max_tokens_per_request must be in 8191.."
                           f"{API_MAX_REQUEST_TOKENS}, got {self.max_tokens_per_request}")
        if self.long_inputs not in LONG_INPUTS:
            raise BadInput(f"openai.long_inputs must be one of {', '.join(LONG_INPUTS)}, "
                           f"got {self.long_inputs!r}")
        if self.dimensions is not None and self.dimensions < 1:
            raise BadInput(f"openai.dimensions must be >= 1, got {self.dimensions}")
        if self.timeout is not None and self.timeout <= 0:
            raise BadInput(f"openai.timeout must be > 0, got {self.timeout}")
        if self.price_per_million is not None and self.price_per_million < 0:
            raise BadInput(f"openai.price_per_million must be >= 0, got {self.price_per_million}")


@dataclass(frozen=True, kw_only=True)
class EmbedSpec(JobSpec):
    dataset: DatasetConfig = DatasetConfig()
    sampling: SamplingConfig = SamplingConfig()
    model: ModelConfig = ModelConfig()
    openai: OpenAIConfig = OpenAIConfig()

    def validate(self) -> None:
        self.dataset.validate()
        self.sampling.validate()
        self.model.validate()
        self.openai.validate()
        if self.openai.dimensions is not None and self.model.backend != "openai":
            raise BadInput("openai.dimensions (--dimensions) needs model.backend openai")
        super().validate()

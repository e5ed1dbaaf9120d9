"""The embed kind's spec: which rows (``[dataset]``, ``[sampling]``), which model and backend
(``[model]``), the OpenAI backend's limits (``[openai]``), plus the shared ``[run]`` and
``[slurm]`` tables."""

from __future__ import annotations

from typing import Literal, get_args

from chatspace.data.config import DatasetConfig, SamplingConfig
from chatspace.errors import BadInput
from chatspace.specs import JobSpec, Section, option

Backend = Literal["sentence-transformers", "openai"]
BACKENDS: tuple[str, ...] = get_args(Backend)
# OpenAI's documented limits for /v1/embeddings.
API_MAX_INPUTS = 2048
API_MAX_REQUEST_TOKENS = 300_000


class ModelConfig(Section):
    name: str | None = option(
        None, "sentence-transformers: a local model dir or cached hub name (default: bundled "
              "all-MiniLM-L6-v2); openai: the API model (default $OPENAI_EMBED_MODEL or "
              "text-embedding-3-small).", flag="--model")
    backend: Backend = option("sentence-transformers",
                              "sentence-transformers (GPU or CPU) or openai (the embeddings "
                              "API; dry run unless --execute).")
    batch_size: int = option(64, "Rows per batch.", ge=1)
    tokens_per_batch: int | None = option(None, "Size batches by tokens instead of rows.",
                                          ge=1)
    bucket_min_tokens: int = option(16, ge=1)
    bucket_max_tokens: int = option(512, ge=1)
    compile: bool = option(False, "torch.compile the model (warm-up per bucket).",
                           flag="--compile-model/--no-compile-model")
    dtype: Literal["float32", "float16", "bfloat16"] = option("float32")
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")

    def check(self) -> None:
        if self.bucket_min_tokens > self.bucket_max_tokens:
            raise BadInput(f"model.bucket_min_tokens ({self.bucket_min_tokens}) exceeds "
                           f"model.bucket_max_tokens ({self.bucket_max_tokens})")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise BadInput(f"model.device (--device) must be auto, cpu, cuda or cuda:N, "
                           f"got {self.device!r}")


class OpenAIConfig(Section):
    """How the OpenAI backend sends requests. The rate limits are the whole run's: each task
    takes its share (limit / tasks running at once)."""

    requests_per_minute: int = option(3_000, "openai: the whole run's request rate limit.",
                                      ge=1)
    tokens_per_minute: int = option(1_000_000, "openai: the whole run's token rate limit.",
                                    ge=1)
    max_in_flight: int = option(8, "openai: concurrent requests per task.", ge=1)
    dimensions: int | None = option(None, "openai: output dimensions (text-embedding-3-* "
                                          "only).", ge=1)
    long_inputs: Literal["truncate", "chunk"] = option(
        "truncate", "openai: inputs over 8,191 tokens are truncated or embedded in chunks and "
                    "averaged.")
    max_inputs_per_request: int = option(API_MAX_INPUTS, "openai: inputs packed into one "
                                                         "request.", ge=1, le=API_MAX_INPUTS)
    max_tokens_per_request: int = option(270_000, "openai: tokens packed into one request.",
                                         ge=8191, le=API_MAX_REQUEST_TOKENS)
    timeout: float | None = option(None, "openai: seconds per request (default "
                                         "$OPENAI_TIMEOUT or 60).", flag="--openai-timeout",
                                   gt=0)
    max_attempts: int = option(8, "openai: tries per request before the task fails.", ge=1)
    price_per_million: float | None = option(None, "openai: USD per 1M tokens (default: the "
                                                   "price table).", ge=0)


class EmbedSpec(JobSpec):
    dataset: DatasetConfig
    sampling: SamplingConfig = SamplingConfig()
    model: ModelConfig = ModelConfig()
    openai: OpenAIConfig = OpenAIConfig()

    def check(self) -> None:
        if self.openai.dimensions is not None and self.model.backend != "openai":
            raise BadInput("openai.dimensions (--dimensions) needs model.backend openai")

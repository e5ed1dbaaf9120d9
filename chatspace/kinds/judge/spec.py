"""The judge kind's spec: which steer generations to judge (``[source]``: finished steer runs,
optionally filtered by a SQL predicate over their results), the rubric (``[rubric]``: a TOML
file of messages and answer format), and the judge (``[judge]``: a model behind the OpenAI API
or run locally, with the request limits of the run), plus the shared ``[run]`` and
``[slurm]`` tables."""

from __future__ import annotations

from typing import Literal

from chatspace.errors import BadInput
from chatspace.specs import JobSpec, Section, option
from chatspace.steering.choices import Backend, DType


class JudgeSourceConfig(Section):
    runs: list[str] = option([], "A finished steer run whose generations to judge (id or "
                                 "directory); repeatable.", flag="--from-run|--from")
    where: str | None = option(None, "A SQL predicate over the runs' results columns (DuckDB): "
                                     "only the generations it keeps are judged, e.g. "
                                     "\"point = 'baseline'\".")

    def check(self) -> None:
        if not self.runs:
            raise BadInput("source.runs is required: the steer runs to judge (--from RUN, "
                           "repeatable)")
        if self.where is not None and (not self.where.strip() or ";" in self.where):
            raise BadInput(f"source.where (--where) {self.where!r} must be one SQL expression "
                           "(no ';')")


class RubricConfig(Section):
    file: str = option("", "The rubric: a TOML file of the judge's messages and answer format "
                           "(jobs/rubrics/ has examples).", flag="--rubric")

    def check(self) -> None:
        if not self.file:
            raise BadInput("rubric.file is required (--rubric FILE.toml)")


class JudgeConfig(Section):
    """The judge model and how requests go to it. The rate limits are the whole run's: each
    task takes its share (limit / tasks running at once)."""

    model: str = option("gpt-4.1-mini", "openai: the API's model name; local: a model "
                                         "directory, a recorded model or a cached name.",
                        flag="--judge-model")
    backend: Literal["openai", "local"] = option(
        "openai", "openai: chat completions at OPENAI_BASE_URL (the OpenAI API, a compatible "
                  "endpoint, a chatspace serve run); local: the model on the task's node.",
        flag="--judge-backend")
    runtime: Backend = option("hf", "local: vllm or hf, greedy.", flag="--judge-runtime")
    dtype: DType = option("bfloat16", "local: the model's dtype.", flag="--judge-dtype")
    requests_per_minute: int = option(500, "openai: the whole run's request rate limit.", ge=1)
    tokens_per_minute: int = option(200_000, "openai: the whole run's token rate limit.", ge=1)
    max_in_flight: int = option(8, "openai: concurrent requests per task.", ge=1)
    max_attempts: int = option(8, "openai: tries per request before the task fails.", ge=1)
    timeout: float | None = option(None, "openai: seconds per request (default "
                                         "$OPENAI_TIMEOUT or 60).", flag="--judge-timeout",
                                   gt=0)
    input_price: float | None = option(None, "openai: USD per 1M input tokens (default: the "
                                             "price table).", ge=0)
    output_price: float | None = option(None, "openai: USD per 1M output tokens (default: the "
                                              "price table).", ge=0)

    def check(self) -> None:
        if not self.model:
            raise BadInput("judge.model (--judge-model) must not be empty")


class JudgeSpec(JobSpec):
    source: JudgeSourceConfig
    rubric: RubricConfig
    judge: JudgeConfig = JudgeConfig()

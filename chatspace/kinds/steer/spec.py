"""The steer kind's spec: which model (``[model]``), which prompts (``[prompts]``), optional
personas (``[personas]``), how to generate (``[generation]``), the steering points
(``[[steering]]``), what to capture (``[capture]``) and the metrics (``[metrics]``), plus the
shared ``[run]`` and ``[slurm]`` tables. What needs the model or the files (vector sizes, layer
ranges, the prompts themselves) is checked when the run is planned."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator

from chatspace.data.config import check_split
from chatspace.errors import BadInput
from chatspace.specs import Fraction, JobSpec, LayerList, Section, option
from chatspace.steering.choices import Backend, DType, OpName, Pool, Rows


class SteerModelConfig(Section):
    name: str = option("", "A local model directory, a model recorded with download-model, "
                           "or a name in the HF cache.", flag="--model")
    backend: Backend = option("vllm", "vllm or hf (transformers).")
    dtype: DType = option("bfloat16", "Model dtype.")
    max_model_len: int | None = option(None, ge=1)
    tensor_parallel_size: int = option(1, ge=1)
    max_num_seqs: int | None = option(None, "vllm: requests in one batch at most.", ge=1)
    compile: bool | None = option(None, "vllm: its compiled model and CUDA graphs, or eager "
                                        "mode (default: compiled on CUDA, eager on the CPU).")
    device: str = option("auto", "hf: auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or "
                                 "mps.")
    batch_size: int | None = option(None, "hf: prompts generated together (default 256 on a "
                                          "GPU, 32 on the CPU).", ge=1)

    def check(self) -> None:
        if not self.name:
            raise BadInput("model.name is required (--model DIR_OR_NAME)")
        if self.device not in ("auto", "cpu", "mps", "cuda") and \
                not self.device.startswith("cuda:"):
            raise BadInput(f"model.device (--device) must be auto, cpu, cuda, cuda:N or mps, "
                           f"got {self.device!r}")


class PromptsConfig(Section):
    """A JSON file (a list of strings, or of chat-message lists), or a dataset column sampled
    like embed rows."""

    flag_prefix = "prompts-"
    file: str | None = option(None, "JSON list of prompts (strings or chat-message lists), or "
                                    "JSONL.", flag="--prompts|--prompts-json")
    dataset: str | None = option(None, "Dataset to sample prompts from.")
    subset: str | None = option(None)
    split: str | None = option(None)
    text_field: str | None = option(None)
    messages_field: str | None = option(None)
    n: int | None = option(None, "Sample exactly N prompts.", ge=1)
    p: Fraction | None = option(None, "Sample a fraction of rows.")
    seed: int = option(0, ge=0)
    template: Literal["chat", "raw"] | None = option(
        None, "chat: each prompt through the tokenizer's chat template (the default when it "
              "has one); raw: the prompt's text as it is, no system prompt (base models).")

    def check(self) -> None:
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


class PersonasConfig(Section):
    file: str | None = option(None, "JSON list of {persona, category, article} (an empty "
                                    "article: none).", flag="--personas|--personae-json")
    system_prompt_style: Literal["you-are-a", "none"] = option(
        "you-are-a", "you-are-a: 'You are a pirate.'; none: no system prompt.")
    rename_role: bool | None = option(None, "Rename the assistant role in the chat template "
                                            "to the persona (default: on whenever personas "
                                            "are given).")

    @property
    def renames_role(self) -> bool:
        """Whether the assistant role is renamed to the persona (the persona runner's
        default whenever there are personas)."""
        return self.file is not None if self.rename_role is None else self.rename_role

    def check(self) -> None:
        if self.rename_role and self.file is None:
            raise BadInput("personas.rename_role needs personas.file")


class GenerationConfig(Section):
    # the persona runner's defaults: greedy, and room to finish a thinking section
    temperature: float = option(0.0, "0 is greedy.", ge=0, allow_inf_nan=False)
    top_p: Fraction = option(1.0)
    max_tokens: int = option(1024, "New tokens per generation.", ge=1)
    n_reps: int = option(1, "Generations per prompt.", ge=1)
    seed: int = option(0, "Seed of every row's sampling.", ge=0)
    thinking: bool | None = option(None, "enable_thinking for the chat template (default: the "
                                         "template's).",
                                   flag="--thinking/--no-thinking|"
                                        "--thinking-mode/--no-thinking-mode")


PERCENTILE = re.compile(r"p(\d+(?:\.\d+)?)")


def _cap_bound(value: Any) -> Any:
    """A cap bound: a number, or ``pNN`` (a percentile a vectors run recorded)."""
    if isinstance(value, str) and not PERCENTILE.fullmatch(value):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{value!r} is neither a number nor a percentile such as "
                             "p25") from None
    return value


CapBound = Annotated[float | str, BeforeValidator(_cap_bound)]


class SteeringPoint(Section):
    """One ``[[steering]]`` entry: no op is the baseline; otherwise each layer x scale (add,
    ablate) or each layer (cap, with min/max) is one point of the sweep, or with ``per_layer =
    false`` each scale is one point applying the op at every listed layer together. Its flags
    describe one entry, which then replaces the spec file's entries."""

    name: str = option("", "Name of the one steering entry the following flags describe.",
                       flag="--point-name")
    op: OpName | None = option(None)
    layers: LayerList = option([], "Layers to steer, e.g. 8,12 or 46-53.")
    per_layer: bool = option(True, "One point per layer (off: one point steering every listed "
                                   "layer together).", flag="--per-layer/--all-layers")
    vector: str | None = option(None, ".npy, .pt or .safetensors vector file, or a vectors run "
                                      "(id or directory).")
    vector_key: str | None = option(None, "Tensor name in the vector file, e.g. "
                                          "contrast/pirate-assistant/L12; {layer} stands for "
                                          "each steered layer (axis/L{layer}).")
    # kept as written (1 stays an int): a spec's hash, and so a planned run's id, depends on it
    scales: list[int | float] = option([], "add/ablate scales, e.g. 1,2,4.")
    min: CapBound | None = option(None, "cap: a number, or pNN: that percentile of the "
                                        "vectors run's projections on vector_key.",
                                  flag="--cap-min")
    max: CapBound | None = option(None, "cap: as min.", flag="--cap-max")

    def check_entry(self, where: str) -> None:
        if not self.name:
            raise BadInput(f"{where}.name is required")
        if self.op is None:
            if self.vector or self.layers or self.scales:
                raise BadInput(f"{where}: a baseline (no op) takes no vector, layers or scales")
            return
        if not self.vector:
            raise BadInput(f"{where}.vector is required for op {self.op}")
        if not self.layers:
            raise BadInput(f"{where}.layers must be a non-empty list of layer indices")
        if self.op == "cap":
            if self.min is None and self.max is None:
                raise BadInput(f"{where}: op cap needs min, max or both")
            if isinstance(self.min, float) and isinstance(self.max, float) and \
                    self.min > self.max:
                raise BadInput(f"{where}: min {self.min} > max {self.max}")
        elif not self.scales:
            raise BadInput(f"{where}.scales is empty: op {self.op} needs at least one scale")


class ProbeConfig(Section):
    """One ``[[probes]]`` entry: a direction read on every token at each of its layers."""

    flag_prefix = "probe-"
    name: str = option("", "Name of the one probe the following flags describe.")
    vector: str = option("", ".npy, .pt or .safetensors vector file, or a vectors run.")
    vector_key: str | None = option(None, "Tensor name in the vector file ({layer}: each "
                                          "probed layer).")
    layers: LayerList = option([], "Layers to read it at, e.g. 8,12 or 46-53.")
    normalize: bool = option(True, "Dot the unit vector (the projection); off: the vector as "
                                   "it is.", flag="--probe-normalize/--probe-dot")

    def check_entry(self, where: str) -> None:
        for name in ("name", "vector", "layers"):
            if not getattr(self, name):
                raise BadInput(f"{where}.{name} is required")
        if "@" in self.name:
            raise BadInput(f"{where}.name {self.name!r}: '@' is kept for per-layer vectors")


class CaptureConfig(Section):
    flag_prefix = "capture-"
    layers: LayerList = option([], "Layers whose hidden states to keep, e.g. 8,12 or 46-53.")
    rows: Rows = option("last")
    pool: Pool = option("none")
    dtype: DType | None = option(None)


class MetricsConfig(Section):
    token_metrics: bool = option(True, "Per generated token: entropy and top-k mass (off: "
                                       "their avg_ columns are null).",
                                 flag="--metrics/--no-metrics")
    top_k_mass_k: int = option(5, ge=1)


class SteerSpec(JobSpec):
    model: SteerModelConfig
    prompts: PromptsConfig
    personas: PersonasConfig = PersonasConfig()
    generation: GenerationConfig = GenerationConfig()
    steering: list[SteeringPoint] = []
    probes: list[ProbeConfig] = []
    capture: CaptureConfig = CaptureConfig()
    metrics: MetricsConfig = MetricsConfig()

    def work_dict(self) -> dict[str, Any]:
        out = super().work_dict()
        if out["model"]["compile"] is None:  # a later key: runs planned before keep their hash
            del out["model"]["compile"]
        if out["metrics"]["token_metrics"]:  # likewise
            del out["metrics"]["token_metrics"]
        if not out["probes"]:  # likewise
            del out["probes"]
        for point in out["steering"]:
            if point["per_layer"]:  # likewise
                del point["per_layer"]
        return out

    def check(self) -> None:
        tables: dict[str, list[SteeringPoint] | list[ProbeConfig]] = {
            "steering": self.steering, "probes": self.probes}
        for table, entries in tables.items():  # each entry checked, each name used once
            names = set()
            for number, entry in enumerate(entries):
                entry.check_entry(f"{table}[{number}]")
                if entry.name in names:
                    raise BadInput(f"{table}[{number}].name {entry.name!r} is used twice")
                names.add(entry.name)

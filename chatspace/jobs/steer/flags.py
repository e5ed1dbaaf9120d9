"""The steer job's CLI flags: one per key of its own spec tables (``|`` separates the persona
runner's spellings of a flag). The steering flags describe one ``[[steering]]`` entry, which
then replaces the spec file's entries."""

from __future__ import annotations

import click

from chatspace.jobs.steer.sweep_spec import BACKENDS, DTYPES, OPS, POOLS, ROWS, STYLES
from chatspace.runs.job import Flag


class NumberList(click.ParamType):
    """A comma-separated list of numbers: ``4,8,12`` or ``0.5,1,2``."""

    def __init__(self, kind: type):
        self.kind, self.name = kind, f"{kind.__name__}s"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            return [self.kind(v) for v in str(value).split(",") if v.strip()]
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of {self.kind.__name__}s",
                      param, ctx)


INTS, FLOATS = NumberList(int), NumberList(float)

STEER_FLAGS: list[Flag] = [
    ("--model", "model", "name", {"help": "A local model directory, a model recorded with "
                                          "download-model, or a name in the HF cache."}),
    ("--backend", "model", "backend", {"type": click.Choice(BACKENDS),
                                       "help": "vllm (default) or hf (transformers)."}),
    ("--dtype", "model", "dtype", {"type": click.Choice(DTYPES), "help": "Model dtype "
                                                                         "(bfloat16)."}),
    ("--max-model-len", "model", "max_model_len", {"type": int}),
    ("--tensor-parallel-size", "model", "tensor_parallel_size", {"type": int}),
    ("--max-num-seqs", "model", "max_num_seqs",
     {"type": int, "help": "vllm: requests in one batch at most."}),
    ("--device", "model", "device", {"help": "hf: auto (CUDA, then MPS, then CPU), cpu, "
                                             "cuda, cuda:N or mps."}),
    ("--batch-size", "model", "batch_size",
     {"type": int, "help": "hf: prompts generated together (default 256 on a GPU, 32 on "
                           "the CPU)."}),
    ("--prompts|--prompts-json", "prompts", "file",
     {"help": "JSON list of prompts (strings or chat-message lists), or JSONL."}),
    ("--prompts-dataset", "prompts", "dataset", {"help": "Dataset to sample prompts from."}),
    ("--prompts-subset", "prompts", "subset", {}),
    ("--prompts-split", "prompts", "split", {}),
    ("--prompts-text-field", "prompts", "text_field", {}),
    ("--prompts-messages-field", "prompts", "messages_field", {}),
    ("--prompts-n", "prompts", "n", {"type": int, "help": "Sample exactly N prompts."}),
    ("--prompts-p", "prompts", "p", {"type": float, "help": "Sample a fraction of rows."}),
    ("--prompts-seed", "prompts", "seed", {"type": int}),
    ("--personas|--personae-json", "personas", "file",
     {"help": "JSON list of {persona, category, article} (an empty article: none)."}),
    ("--system-prompt-style", "personas", "system_prompt_style",
     {"type": click.Choice(STYLES),
      "help": "you-are-a: 'You are a pirate.' (default); none: no system prompt."}),
    ("--rename-role/--no-rename-role", "personas", "rename_role",
     {"default": None, "help": "Rename the assistant role in the chat template to the "
                               "persona (default: on whenever personas are given)."}),
    ("--temperature", "generation", "temperature", {"type": float, "help": "Default 0.0 "
                                                                          "(greedy)."}),
    ("--top-p", "generation", "top_p", {"type": float}),
    ("--max-tokens", "generation", "max_tokens", {"type": int, "help": "New tokens per "
                                                                     "generation (1024)."}),
    ("--n-reps", "generation", "n_reps", {"type": int, "help": "Generations per prompt."}),
    ("--seed", "generation", "seed", {"type": int, "help": "Seed of every row's sampling."}),
    ("--thinking/--no-thinking|--thinking-mode/--no-thinking-mode", "generation", "thinking",
     {"default": None, "help": "enable_thinking for the chat template."}),
    ("--point-name", "steering", "name", {"help": "Name of the one steering entry the "
                                                 "following flags describe."}),
    ("--op", "steering", "op", {"type": click.Choice(OPS)}),
    ("--layers", "steering", "layers", {"type": INTS, "help": "Layers to steer, e.g. 8,12."}),
    ("--vector", "steering", "vector", {"help": ".npy, .pt or .safetensors vector file, or a "
                                                "vectors run (id or directory)."}),
    ("--vector-key", "steering", "vector_key",
     {"help": "Tensor name in the vector file, e.g. contrast/pirate-assistant/L12."}),
    ("--scales", "steering", "scales", {"type": FLOATS, "help": "add/ablate scales, e.g. "
                                                                "1,2,4."}),
    ("--cap-min", "steering", "min", {"type": float}),
    ("--cap-max", "steering", "max", {"type": float}),
    ("--capture-layers", "capture", "layers", {"type": INTS,
                                               "help": "Layers whose hidden states to keep."}),
    ("--capture-rows", "capture", "rows", {"type": click.Choice(ROWS)}),
    ("--capture-pool", "capture", "pool", {"type": click.Choice(POOLS)}),
    ("--capture-dtype", "capture", "dtype", {"type": click.Choice(DTYPES)}),
    ("--top-k-mass-k", "metrics", "top_k_mass_k", {"type": int}),
]

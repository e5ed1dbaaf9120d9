"""Generated tokens/s of one steer sweep task versus plain vLLM `LLM.generate` on the same
prompts and settings without steering or capture, measured in the same run.

    python -m bench.steer_sweep [--prompts 32] [--tokens 64]

The model is the phase-6 benchmark's (random weights, Qwen2.5-0.5B's shape). The sweep has one
point (additive steering at one layer) and captures the last row at one layer; its task runs
through the run machinery in this process (plan, parts, Parquet and safetensors writes,
completion record). Plain vLLM runs first and is shut down before the task starts its own
engine (an idle engine still polls the CPU). Both generate two repetitions of every prompt
(64 requests in flight) from a fresh engine. Tokens/s count the tokens actually generated;
the task's figure is over its generate stage and over its whole run (with writes, without the
engine start).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.corpus import passages
from bench.steering_overhead import HIDDEN, LAYERS, build_bench_model
from chatspace.jobs import KINDS
from chatspace.jobs.steer.sweep_spec import SweepSpec
from chatspace.runs.plan import plan_run
from chatspace.runs.task import run_task
from chatspace.specs import resolve_spec
from chatspace.steering.vllm_backend import ENV_DEFAULTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    for name, value in ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)

    work = Path(tempfile.mkdtemp(prefix="bench-steer-sweep-"))
    model = build_bench_model(work)
    texts = [" ".join(p["text"].split()[:40]) for p in passages()[:args.prompts]]
    (work / "prompts.json").write_text(json.dumps(texts))
    np.save(work / "vector.npy", np.random.default_rng(0).standard_normal(HIDDEN)
            .astype("float32"))
    spec = resolve_spec(SweepSpec, None, {
        "model": {"name": str(model), "dtype": "float32", "max_model_len": 512},
        "prompts": {"file": str(work / "prompts.json")},
        "generation": {"max_tokens": args.tokens, "temperature": 0.7, "seed": 0,
                       "thinking": False, "n_reps": 2},
        "steering": {"name": "vec", "op": "add", "layers": [LAYERS // 2],
                     "vector": str(work / "vector.npy"), "scales": [2.0]},
        "capture": {"layers": [LAYERS - 1], "rows": "last"},
        "run": {"part_rows": 2 * args.prompts, "name": "bench"}})
    run = plan_run(KINDS["steer"], spec, work / "root", None).run

    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    tokenizer = AutoTokenizer.from_pretrained(model)
    chats = [tokenizer.apply_chat_template(
        [{"role": "system", "content": "You are an assistant."},
         {"role": "user", "content": text}], tokenize=False, add_generation_prompt=True,
        enable_thinking=False) for text in texts]  # the sweep's rows, as it renders them
    prompts = [TokensPrompt(prompt_token_ids=tokenizer(chat, add_special_tokens=False)
                            ["input_ids"]) for chat in chats]
    llm = LLM(model=str(model), dtype="float32", enforce_eager=True, max_model_len=512, seed=0,
              enable_chunked_prefill=False)  # as the sweep's engine on a CPU (vllm_backend)
    params = [SamplingParams(max_tokens=args.tokens, temperature=0.7, seed=i)
              for i in range(2 * len(prompts))]
    start = time.perf_counter()  # from a fresh engine, as the task's generate stage
    outs = llm.generate(prompts * 2, params, use_tqdm=False)
    plain_seconds = time.perf_counter() - start
    plain_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    llm.llm_engine.engine_core.shutdown()
    del llm, outs
    gc.collect()

    start = time.perf_counter()
    record = run_task(run, 0)
    task_seconds = time.perf_counter() - start
    stages = record["timings"]
    generate = stages["generate"]["busy"]
    load = stages["model_load"]["busy"]
    tokens = record["generated_tokens"]
    plain_rate = plain_tokens / plain_seconds
    print(f"{len(prompts)} prompts x 2 reps x {args.tokens} new tokens, model {LAYERS} layers "
          f"x {HIDDEN}")
    print(f"plain vLLM LLM.generate:  {plain_rate:8.1f} tok/s ({plain_tokens} tokens)")
    print(f"sweep task, generate:     {tokens / generate:8.1f} tok/s ({tokens} tokens)   "
          f"ratio {tokens / generate / plain_rate:.2f}x")
    print(f"sweep task, whole run:    {tokens / (task_seconds - load):8.1f} tok/s (without the "
          f"{load:.1f} s engine start)   ratio {tokens / (task_seconds - load) / plain_rate:.2f}x")


if __name__ == "__main__":
    main()

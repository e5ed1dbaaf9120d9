"""Generated tokens/s of one steer sweep task versus plain vLLM `LLM.generate` on identical
requests (the task's own rows: the same token ids, sampling settings and seeds, without steering,
metrics or capture), measured in the same run.

    python -m bench.steer_sweep [--prompts 32] [--tokens 64] [--modes eager,compiled]
        [--variants all]

The model is the phase-6 benchmark's (random weights, Qwen2.5-0.5B's shape). Each variant is one
sweep task run through the run machinery in this process (plan, parts, Parquet and safetensors
writes, completion record), 2 repetitions of every prompt (64 requests in flight):

- ``steer``: one additive point at one layer, no token metrics, no capture;
- ``metrics``: with the per-token entropy and top-k mass;
- ``capture``: with the last row captured at one layer;
- ``target``: metrics and capture (the issue's target: generate >= 0.97x, whole run >= 0.95x);
- ``four-points``: four points (scales 1-4) over a quarter of the prompts, metrics and capture.

Plain vLLM runs before and after the variants of a mode (the best of the two is the baseline;
one engine at a time: an idle engine still polls the CPU), on the rows of the ``target``
variant (all variants have the same number of rows and tokens; the four-point rows repeat a
quarter of the prompts, as plain vLLM's do for it). The task's figure is over its generate
stage and over its whole run (writes included; the engine's start and shutdown, fixed costs of a
task whatever its rows, excluded and printed apart).
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
from bench.smoke import SMOKE, parse_args
from bench.steering_overhead import HIDDEN, LAYERS, build_bench_model
from chatspace.kinds import KINDS
from chatspace.kinds.steer.prompts import system_prompt
from chatspace.kinds.steer.rendering import row_ids
from chatspace.kinds.steer.spec import SteerSpec
from chatspace.kinds.steer.sweep import decode_row, row_seed
from chatspace.runs.plan import plan_run
from chatspace.runs.task import run_task
from chatspace.specs import resolve_spec
from chatspace.steering.vllm_backend import ENV_DEFAULTS

VARIANTS = {"steer": (False, False, 1), "metrics": (True, False, 1),
            "capture": (False, True, 1), "target": (True, True, 1),
            "four-points": (True, True, 4)}  # metrics, capture, points


def plan(work: Path, model: Path, texts: list[str], args, name: str, compiled: bool):
    metrics, capture, points = VARIANTS[name]
    prompts = texts[:len(texts) // points]
    (work / f"{name}.json").write_text(json.dumps(prompts))
    spec = resolve_spec(SteerSpec, None, {
        "model": {"name": str(model), "dtype": "float32", "max_model_len": 512,
                  "compile": compiled},
        "prompts": {"file": str(work / f"{name}.json")},
        "generation": {"max_tokens": args.tokens, "temperature": 0.7, "seed": 0,
                       "thinking": False, "n_reps": 2},
        "steering": {"name": "vec", "op": "add", "layers": [LAYERS // 2],
                     "vector": str(work / "vector.npy"),
                     "scales": [float(s) for s in range(1, points + 1)]},
        "capture": {"layers": [LAYERS - 1] if capture else [], "rows": "last"},
        "metrics": {"token_metrics": metrics},
        "run": {"part_rows": 2 * len(texts), "name": f"bench-{name}"}})
    mode = "compiled" if compiled else "eager"
    return plan_run(KINDS["steer"], spec, work / f"root-{mode}", f"{name}-{mode}").run


def plain_requests(run, tokenizer) -> tuple[list, list]:
    """The run's rows as plain vLLM requests: their prompts' token ids and sampling."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    spec = run.spec
    texts = json.loads(Path(spec.prompts.file).read_text())
    prompts, params = [], []
    for row in range(run.plan.rows):
        _, prompt, _, _ = decode_row(row, len(texts), 1, spec.generation.n_reps)
        system = system_prompt(None, spec.personas.system_prompt_style)
        ids = row_ids(tokenizer, "chat", texts[prompt], system, False, None)
        prompts.append(TokensPrompt(prompt_token_ids=ids))
        params.append(SamplingParams(max_tokens=spec.generation.max_tokens, temperature=0.7,
                                     seed=row_seed(spec.generation.seed, row)))
    return prompts, params


def plain_rate(model: Path, requests: tuple[list, list], compiled: bool) -> float:
    from vllm import LLM

    llm = LLM(model=str(model), dtype="float32", enforce_eager=not compiled, max_model_len=512,
              seed=0, enable_chunked_prefill=False)  # as the sweep's engine on a CPU
    start = time.perf_counter()  # from a fresh engine, as the task's generate stage
    outs = llm.generate(*requests, use_tqdm=False)
    seconds = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    llm.llm_engine.engine_core.shutdown()
    del llm, outs
    gc.collect()
    return tokens / seconds


def task_rates(run) -> tuple[float, float, int]:
    """Generate-stage and whole-run tokens/s of the run's one task (the engine's start and
    shutdown excluded: fixed costs of a task, whatever its rows), and those two costs."""
    start = time.perf_counter()
    record = run_task(run, 0)
    seconds = time.perf_counter() - start
    fixed = record.timings["model_load"]["busy"] + record.timings["model_close"]["busy"]
    tokens = record.details["generated_tokens"]
    return (tokens / record.timings["generate"]["busy"], tokens / (seconds - fixed), tokens,
            fixed)


def measure_mode(work: Path, model: Path, texts: list[str], args, compiled: bool) -> None:
    from transformers import AutoTokenizer

    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    runs = {name: plan(work, model, texts, args, name, compiled) for name in names}
    requests = plain_requests(plan(work, model, texts, args, "target", compiled),
                              AutoTokenizer.from_pretrained(model))
    before = plain_rate(model, requests, compiled)
    rates = {name: task_rates(run) for name, run in runs.items()}
    after = before if SMOKE else plain_rate(model, requests, compiled)  # smoke: one engine
    base = max(before, after)
    print(f"\n{'compiled' if compiled else 'eager'}: plain vLLM LLM.generate {base:.1f} tok/s "
          f"(before {before:.1f}, after {after:.1f})")
    print(f"{'variant':12} {'generate tok/s':>15} {'ratio':>6} {'whole run tok/s':>16} "
          f"{'ratio':>6} {'tokens':>7} {'start+close s':>14}")
    for name, (generate, whole, tokens, fixed) in rates.items():
        print(f"{name:12} {generate:15.1f} {generate / base:5.2f}x {whole:16.1f} "
              f"{whole / base:5.2f}x {tokens:7d} {fixed:14.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--modes", default="eager,compiled")
    parser.add_argument("--variants", default="all",
                        help=f"all, or some of {', '.join(VARIANTS)} (comma-separated)")
    args = parse_args(parser, prompts=4, tokens=4, modes="eager", variants="target")
    for name, value in ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)

    work = Path(tempfile.mkdtemp(prefix="bench-steer-sweep-"))
    model = build_bench_model(work)
    texts = [" ".join(p["text"].split()[:40]) for p in passages()[:args.prompts]]
    np.save(work / "vector.npy", np.random.default_rng(0).standard_normal(HIDDEN)
            .astype("float32"))
    print(f"{len(texts)} prompts x 2 reps x {args.tokens} new tokens, model {LAYERS} layers "
          f"x {HIDDEN}")
    for mode in args.modes.split(","):
        measure_mode(work, model, texts, args, compiled=mode == "compiled")


if __name__ == "__main__":
    main()

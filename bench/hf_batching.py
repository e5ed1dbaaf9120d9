"""The HF backend batched against one prompt at a time, in one run.

    python -m bench.hf_batching [--prompts 32] [--tokens 24] [--repeats 2]

A random-weight model in Qwen2.5-0.5B's shape (as bench.steering_overhead builds it) generates
`--tokens` new tokens (EOS ignored, greedy) for each of `--prompts` real passages of different
lengths, with one-layer steering on every other prompt (two different specs) and the last row
of two layers captured: first with `batch_size=1` (one prompt at a time, as the HF backend ran
before), then with every prompt in one left-padded batch. Each figure is the best of
`--repeats`; the ratio is printed (target on a 2-core CPU: >= 4x at 32 prompts).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.corpus import passages  # noqa: E402
from bench.smoke import parse_args  # noqa: E402
from bench.steering_overhead import LAYERS, build_bench_model  # noqa: E402
from chatspace.steering import (  # noqa: E402
    AddSpec,
    CaptureOptions,
    LayerSteeringSpec,
    Sampling,
    SteeringSpec,
    SteerModel,
)

QUARTER = LAYERS // 4  # the layers steered and captured: 6 and 12 of 24


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2)
    args = parse_args(parser, prompts=4, tokens=4, repeats=1)
    import torch

    path = build_bench_model(Path(tempfile.mkdtemp(prefix="bench-hf-batching-")))
    model = SteerModel(path, "hf")
    texts = [p["text"] for p in passages()[:args.prompts]]
    prompts = [model.tokenizer(t)["input_ids"][:16 + 4 * (n % 9)] for n, t in enumerate(texts)]
    vectors = [torch.randn(model.hidden_size, generator=torch.Generator().manual_seed(s))
               for s in (1, 2)]
    specs = [SteeringSpec({QUARTER + QUARTER * (n % 4 == 1): LayerSteeringSpec((AddSpec(
        vectors[n % 4 == 1], 4.0),))}) if n % 2 else None for n in range(len(prompts))]
    sampling = Sampling(max_tokens=args.tokens, ignore_eos=True)
    tokens = len(prompts) * args.tokens
    print(f"{len(prompts)} prompts ({sum(map(len, prompts))} prompt tokens, 16-48 each) x "
          f"{args.tokens} new tokens, torch threads {torch.get_num_threads()}")

    def rate(batch_size: int) -> float:
        model.backend.batch_size = batch_size
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            model.generate_sync(prompts, sampling, steering_spec=specs,
                                capture_layers=[QUARTER, 2 * QUARTER],
                                capture=CaptureOptions(rows="last"))
            best = min(best, time.perf_counter() - start)
        return tokens / best

    alone = rate(1)
    batched = rate(len(prompts))
    print(f"one prompt at a time: {alone:.1f} tok/s")
    print(f"one batch of {len(prompts)}: {batched:.1f} tok/s")
    print(f"ratio batched / one at a time: {batched / alone:.2f}x (target >= 4x)")


if __name__ == "__main__":
    main()

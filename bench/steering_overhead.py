"""Cost of chatspace's vLLM steering extension against plain vLLM, measured in one run, in
eager mode against the eager plain engine and compiled against the compiled one: idle, steering,
captures, and probes (eight directions read on every token at one layer, and at every layer;
against capturing every layer whole and projecting afterwards, the speed-up).

    python -m bench.steering_overhead [--prompts 32] [--tokens 64] [--repeats 2]
        [--modes eager,compiled]

A random-weight model with the shape of Qwen2.5-0.5B (24 layers, hidden 896, 14 heads, 2 KV
heads, MLP 4864; a small vocabulary) generates `--tokens` new tokens (EOS ignored) for each of
`--prompts` real passages (their first `--prompt-tokens` tokens), all requests at once, greedy.
Plain vLLM (an `AsyncLLM` without the extension) is measured before and after the chatspace
engine (one engine at a time: an idle vLLM engine still polls the CPU), the chatspace cases in
turns; each figure is the best of `--repeats`. Each mode starts with an empty vLLM cache: the
engine start times are cold (the first plain engine) and warm (the second). On the eager
chatspace engine also:

- shared-memory transfer of >= 1 GB of captures (24 layers) to the client versus a pickle
  round trip of the same tensors and versus returning them in vLLM's own `collective_rpc`
  reply (both the handoff alone and the handoff plus reading every byte);
- the HF backend's tokens/s on a few of the same prompts (for the README).

With ``--tensor-parallel-size N`` (N > 1) it measures instead what capturing every layer costs
with N workers against what it costs with one, in each mode: the idle extension and the
all-layer capture on a one-worker engine, then on an N-worker engine (on the CPU chatspace
binds each worker's threads to its share of the cores). Only rank 0 captures, so the ratio of
the two overheads should stay near 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # the transfer measurement

from bench.corpus import passages  # noqa: E402
from bench.smoke import SMOKE, parse_args  # noqa: E402
from chatspace.steering import AddSpec, LayerSteeringSpec, SteeringSpec, shm  # noqa: E402
from chatspace.steering.model import SteerModel  # noqa: E402
from chatspace.steering.outputs import Sampling  # noqa: E402
from chatspace.steering.probes import Probe, values_of  # noqa: E402
from chatspace.steering.vllm_backend import ENV_DEFAULTS  # noqa: E402
from tests.tiny_models import build_model  # noqa: E402

LAYERS, HIDDEN = (4, 128) if SMOKE else (24, 896)
SHAPE = dict(heads=2, kv_heads=1, intermediate=256) if SMOKE else \
    dict(heads=14, kv_heads=2, intermediate=4864)


async def plain_run(engine, prompts: list[list[int]], tokens: int) -> None:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True, detokenize=False)

    async def one(ids):
        async for _ in engine.generate(TokensPrompt(prompt_token_ids=ids), params,
                                       request_id=uuid.uuid4().hex):
            pass
    await asyncio.gather(*(one(ids) for ids in prompts))


async def steered_run(model: SteerModel, prompts, tokens: int, **kwargs) -> None:
    """One batch through the chatspace engine; with `project` (probes), every capture is read
    and projected on their directions afterwards, as one would without probes."""
    sampling = [Sampling(max_tokens=tokens, ignore_eos=True)] * len(prompts)
    probes = kwargs.get("probes")
    out = await model.backend.generate(prompts, sampling,
                                       kwargs.get("specs", [None] * len(prompts)),
                                       kwargs.get("layers"), kwargs["options"], None,
                                       [probes] * len(prompts) if probes else None)
    project = kwargs.get("project")
    for gen in out:
        if gen.capture is not None:
            if project:
                values_of(gen.capture.layers, project)
            await gen.capture.close()


def build_bench_model(work: Path) -> Path:
    """Random weights in Qwen2.5-0.5B's shape (a small vocabulary: the tiny test tokenizer); a
    tiny shape under --smoke."""
    return build_model(work / "model", "qwen2", layers=LAYERS, hidden=HIDDEN, weight_scale=1.0,
                       **SHAPE)


def timed(model: SteerModel, make) -> float:
    start = time.perf_counter()
    model.run(make())
    return time.perf_counter() - start


def transfer(model: SteerModel, gigabytes: float) -> None:
    rows = int(gigabytes * 2**30 / (LAYERS * HIDDEN * 4)) + 1

    def make_payload(worker):
        import torch as t
        worker._bench_payload = {i: t.randn(rows, HIDDEN) for i in range(LAYERS)}

    def to_segment(worker):
        from chatspace.steering import shm as s
        payload = worker._bench_payload
        entries, size = s.layout({i: tuple(x.shape) for i, x in payload.items()},
                                 next(iter(payload.values())).dtype)
        name, out = s.create(entries, size, s.cap_bytes())
        for i, x in payload.items():
            out[i].copy_(x)
        return name, entries

    def reply(worker):
        return worker._bench_payload

    engine = model.backend.engine
    model.run(engine.collective_rpc(make_payload))
    name, entries = model.run(engine.collective_rpc(to_segment))[0]
    start = time.perf_counter()
    tensors = shm.open_segment(name, entries)
    handoff = time.perf_counter() - start
    checksum = sum(float(x.sum()) for x in tensors.values())
    handoff_read = time.perf_counter() - start
    shm.release(name)
    size = sum(x.numel() * x.element_size() for x in tensors.values())
    owned = {i: x.clone() for i, x in tensors.items()}  # ordinary tensors, as a worker has
    start = time.perf_counter()
    copied = pickle.loads(pickle.dumps(owned, protocol=pickle.HIGHEST_PROTOCOL))
    pickled = time.perf_counter() - start
    assert abs(sum(float(x.sum()) for x in copied.values()) - checksum) < 1e-3 * abs(checksum)
    del copied, tensors, owned
    start = time.perf_counter()
    model.run(engine.collective_rpc(reply))
    rpc = time.perf_counter() - start
    print(f"\ntransfer of {size / 2**30:.2f} GB of captures ({LAYERS} layers x {rows} rows):")
    print(f"  shared memory handoff (map + view)     {handoff * 1e3:9.2f} ms")
    print(f"  shared memory handoff + read all bytes {handoff_read * 1e3:9.2f} ms")
    print(f"  pickle round trip                      {pickled * 1e3:9.2f} ms   "
          f"ratio {pickled / handoff:.0f}x (handoff), {pickled / handoff_read:.1f}x (with read)")
    print(f"  collective_rpc reply                   {rpc * 1e3:9.2f} ms   "
          f"ratio {rpc / handoff:.0f}x (handoff), {rpc / handoff_read:.1f}x (with read)")


def mode_cases(model: SteerModel, prompts, tokens: int) -> dict:
    """The chatspace cases, each a callable that makes one run's awaitable."""
    import torch

    from chatspace.steering.outputs import CaptureOptions

    gen = torch.Generator().manual_seed(0)
    middle = LAYERS // 2

    def add() -> SteeringSpec:
        vector = torch.randn(HIDDEN, generator=gen)
        return SteeringSpec({middle: LayerSteeringSpec((AddSpec(vector, 2.0),))})

    one = add()
    each = [add() for _ in prompts]
    none = CaptureOptions()
    directions = [torch.randn(HIDDEN, generator=gen) for _ in range(8)]
    every = tuple(range(LAYERS))
    at_middle = [Probe(f"p{i}", v, (middle,)) for i, v in enumerate(directions)]
    everywhere = [Probe(f"p{i}", v, every) for i, v in enumerate(directions)]
    return {
        "idle extension": lambda: steered_run(model, prompts, tokens, options=none),
        "one-layer steering, every request": lambda: steered_run(
            model, prompts, tokens, specs=[one] * len(prompts), options=none),
        "a different spec per request": lambda: steered_run(
            model, prompts, tokens, specs=each, options=none),
        "capture every layer, every request": lambda: steered_run(
            model, prompts, tokens, layers=list(range(LAYERS)), options=none),
        "8 probes at one layer, every request": lambda: steered_run(
            model, prompts, tokens, options=none, probes=at_middle),
        "8 probes on every layer, every request": lambda: steered_run(
            model, prompts, tokens, options=none, probes=everywhere),
        "capture every layer, project afterwards": lambda: steered_run(
            model, prompts, tokens, layers=list(every), options=none, project=everywhere),
    }


TARGETS = {"idle extension": 0.01, "one-layer steering, every request": 0.05,
           "a different spec per request": 0.10, "capture every layer, every request": 0.15,
           "8 probes at one layer, every request": 0.03,
           "8 probes on every layer, every request": 0.10}


def measure_mode(path: Path, prompts, args, compiled: bool) -> None:
    """Plain vLLM (before and after) and the chatspace engine, in one mode, with a fresh
    compile cache: the first plain start is cold, the second warm."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    os.environ["VLLM_CACHE_ROOT"] = tempfile.mkdtemp(prefix="bench-vllm-cache-")
    starts: list[float] = []
    tokens = len(prompts) * args.tokens

    def plain_seconds() -> float:  # one engine at a time: idle engines still poll the CPU
        began = time.perf_counter()
        engine = AsyncLLM.from_engine_args(AsyncEngineArgs(
            model=str(path), dtype="float32", enforce_eager=not compiled, max_model_len=512,
            seed=0))
        starts.append(time.perf_counter() - began)
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(plain_run(engine, prompts, args.tokens))  # warm-up
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                loop.run_until_complete(plain_run(engine, prompts, args.tokens))
                times.append(time.perf_counter() - start)
        finally:
            engine.shutdown()
            # its sockets close in a callback on this loop: run it (a context whose sockets
            # stay open hangs the process when it is garbage-collected, in any thread)
            loop.run_until_complete(asyncio.sleep(0.1))
            loop.close()
        return min(times)

    before = plain_seconds()
    began = time.perf_counter()
    model = SteerModel(path, "vllm", max_model_len=512, seed=0, compile=compiled)
    chatspace_start = time.perf_counter() - began
    cases = mode_cases(model, prompts, args.tokens)
    model.run(cases["one-layer steering, every request"]())  # warm-up
    timings = {name: [] for name in cases}
    for _ in range(args.repeats):  # in turns, so that drift hits every case alike
        for name, make in cases.items():
            timings[name].append(timed(model, make))
    if not compiled:
        transfer(model, args.gigabytes)
    model.close()
    after = before if SMOKE else plain_seconds()  # a smoke run starts one plain engine
    base = min(before, after)
    mode = "compiled" if compiled else "eager"
    print(f"\n{mode}: engine start {starts[0]:.0f} s cold, {starts[-1]:.0f} s with the compile "
          f"cache warm; chatspace engine {chatspace_start:.0f} s")
    print(f"{'case':40} {'tok/s':>9} {'slower by':>10} {'target':>7}")
    print(f"{'plain vLLM (best of before/after)':40} {tokens / base:9.1f} {0:10.1%}   "
          f"(before {tokens / before:.1f}, after {tokens / after:.1f} tok/s)")
    for name, values in timings.items():
        seconds = min(values)
        target = f"{TARGETS[name]:7.0%}" if name in TARGETS else f"{'-':>7}"
        print(f"{name:40} {tokens / seconds:9.1f} {seconds / base - 1:10.1%} {target}")
    probed = min(timings["8 probes on every layer, every request"])
    print(f"probes on every layer against capturing them whole and projecting afterwards: "
          f"{min(timings['capture every layer, project afterwards']) / probed:.2f}x faster")


def capture_overhead(path: Path, prompts, args, compiled: bool, ranks: int) -> tuple:
    """Best seconds of the idle extension and of capturing every layer with `ranks` workers."""
    model = SteerModel(path, "vllm", max_model_len=512, seed=0, compile=compiled,
                       tensor_parallel_size=ranks)
    cases = mode_cases(model, prompts, args.tokens)
    idle, capture = cases["idle extension"], cases["capture every layer, every request"]
    model.run(idle())  # warm-up
    idle_times, capture_times = [], []
    for _ in range(args.repeats):
        idle_times.append(timed(model, idle))
        capture_times.append(timed(model, capture))
    model.close()
    return min(idle_times), min(capture_times)


def measure_tensor_parallel(path: Path, prompts, args, compiled: bool) -> None:
    tokens, ranks = len(prompts) * args.tokens, args.tensor_parallel_size
    print(f"\n{'compiled' if compiled else 'eager'}: capture every layer, TP={ranks} against "
          "TP=1")
    print(f"{'workers':8} {'idle tok/s':>11} {'capture tok/s':>14} {'overhead':>9}")
    overheads = []
    # a smoke run starts one one-worker engine (tests/test_tensor_parallel.py starts two)
    for size in (1,) if SMOKE else (1, ranks):
        idle, capture = capture_overhead(path, prompts, args, compiled, size)
        overheads.append(capture / idle - 1)
        print(f"{size:<8} {tokens / idle:11.1f} {tokens / capture:14.1f} {overheads[-1]:9.1%}")
    overheads = overheads * 2 if SMOKE else overheads
    print(f"capture overhead TP={ranks} / TP=1: "
          f"{(1 + overheads[1]) / (1 + overheads[0]):.3f}x (time ratios)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--gigabytes", type=float, default=1.0)
    parser.add_argument("--hf-prompts", type=int, default=4)
    parser.add_argument("--modes", default="eager,compiled",
                        help="eager, compiled or both (vLLM's compiled model: a slow start)")
    parser.add_argument("--tensor-parallel-size", type=int, default=1,
                        help="N > 1: capture overhead with N workers against one worker's")
    args = parse_args(parser, prompts=2, tokens=4, prompt_tokens=16, repeats=1, gigabytes=0.01,
                     hf_prompts=1, modes="eager")

    for name, value in ENV_DEFAULTS.items():  # the plain engine runs under the same settings
        os.environ.setdefault(name, value)
    import torch
    from transformers import AutoTokenizer

    from chatspace.steering.outputs import CaptureOptions

    path = build_bench_model(Path(tempfile.mkdtemp(prefix="bench-steering-")))
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompts = [tokenizer(p["text"])["input_ids"][:args.prompt_tokens]
               for p in passages()[:args.prompts]]
    print(f"{len(prompts)} prompts ({sum(map(len, prompts))} prompt tokens) x {args.tokens} "
          f"new tokens, model {LAYERS} layers x {HIDDEN}, torch threads "
          f"{torch.get_num_threads()}")
    if args.tensor_parallel_size > 1:
        for mode in args.modes.split(","):
            measure_tensor_parallel(path, prompts, args, compiled=mode == "compiled")
        return
    for mode in args.modes.split(","):
        measure_mode(path, prompts, args, compiled=mode == "compiled")

    hf = SteerModel(path, "hf", batch_size=1)  # one at a time; bench.hf_batching batches
    subset = prompts[:args.hf_prompts]
    hf_rate = len(subset) * args.tokens / timed(
        hf, lambda: steered_run(hf, subset, args.tokens, options=CaptureOptions()))
    print(f"\nHF backend {hf_rate:.1f} tok/s ({len(subset)} prompts, one at a time)")


if __name__ == "__main__":
    main()

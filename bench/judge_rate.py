"""Achieved requests/min and tokens/min of one judge task against the configured limits: the
real client over real HTTP against the local stand-in (~150 ms ± jitter latency, enforcing
the same tokens/min), judging the generations of a steer run of a tiny model (HF backend,
built here); then the same with 30 % of requests failing (429 with Retry-After, 5xx, dropped
connections, malformed bodies). The baseline is the limit itself, enforced in the same run.

    python -m bench.judge_rate [--generations 480] [--tpm 300000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
from pathlib import Path

from bench.smoke import parse_args
from chatspace.kinds import KINDS
from chatspace.kinds.judge.spec import JudgeSpec
from chatspace.kinds.steer.spec import SteerSpec
from chatspace.runs.executors import DebugExecutor
from chatspace.runs.plan import plan_run
from chatspace.runs.reduce import reduce_run
from chatspace.runs.task import run_task
from chatspace.specs import resolve_spec
from tests.openai_server import FakeOpenAI
from tests.tiny_models import build_model

RUBRIC = Path(__file__).resolve().parent.parent / "jobs" / "rubrics" / "role-0-3.toml"
FAULTS = ("429", "500", "drop", "truncated")


def steer_run(work: Path, generations: int):
    """A finished steer run of `generations` short generations (HF, a tiny model)."""
    model = build_model(work / "model", "qwen2")
    (work / "prompts.json").write_text(json.dumps([f"Question {i}: what is {i} plus {i}?"
                                                   for i in range(generations)]))
    spec = resolve_spec(SteerSpec, None, {
        "model": {"name": str(model), "backend": "hf", "dtype": "float32"},
        "prompts": {"file": str(work / "prompts.json")},
        "generation": {"max_tokens": 2, "thinking": False}})
    run = plan_run(KINDS["steer"], spec, work / "root").run
    DebugExecutor().execute(run, range(run.num_tasks))
    return run


def measure(work: Path, steer, name: str, args: argparse.Namespace, faulty: bool) -> float:
    def fault(n: int) -> str | None:  # each request fails with probability 0.3, any kind
        draw = random.Random(n)
        return draw.choice(FAULTS) if faulty and draw.random() < 0.3 else None

    with FakeOpenAI(latency=0.15, jitter=0.05, tokens_per_minute=args.tpm,
                    fault=fault) as server:
        os.environ.update(server.env(), OPENAI_TIMEOUT="2")
        spec = resolve_spec(JudgeSpec, None, {
            "source": {"runs": [steer.run_id]}, "rubric": {"file": str(RUBRIC)},
            "judge": {"tokens_per_minute": args.tpm, "requests_per_minute": args.rpm,
                      "max_in_flight": 16},
            "run": {"array": 1, "part_rows": 100_000, "name": name}})
        run = plan_run(KINDS["judge"], spec, steer.root).run
        run_task(run, 0)
        reduce_run(run)
        served = [e for e in server.ok_requests() if e.get("messages")]
    tokens = sum(e["tokens"] for e in served)
    first = min(e["time"] for e in server.log)
    seconds = max(e["time"] for e in served) - first
    failed = sum(e["fault"] not in (None, "rate-limited") for e in server.log)
    limited = sum(e["fault"] == "rate-limited" for e in server.log)
    token_rate, request_rate = tokens / seconds * 60, len(served) / seconds * 60
    ratio = max(token_rate / args.tpm, request_rate / args.rpm)
    print(f"{name:>6}: {len(served)} requests served, {failed} injected faults, {limited} "
          f"answered 429 by the limit, {tokens:,} tokens in {seconds:.1f} s -> "
          f"{request_rate:,.0f} requests/min ({request_rate / args.rpm:.3f} of "
          f"{args.rpm:,}), {token_rate:,.0f} tokens/min ({token_rate / args.tpm:.3f} of "
          f"{args.tpm:,})")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--generations", type=int, default=480)
    parser.add_argument("--tpm", type=int, default=150_000, help="server and client limit")
    parser.add_argument("--rpm", type=int, default=600, help="client limit")
    args = parse_args(parser, generations=24)
    work = Path(tempfile.mkdtemp(prefix="bench-judge-"))
    steer = steer_run(work, args.generations)
    clean = measure(work, steer, "clean", args, faulty=False)
    faults = measure(work, steer, "faults", args, faulty=True)
    print(f"ratio achieved / limit: {clean:.3f} (target >= 0.95); with 30 % faults: "
          f"{faults:.3f} (target >= 0.75)")


if __name__ == "__main__":
    main()

"""Achieved tokens/min against a server-enforced tokens/min limit, as a fraction of the limit:
one OpenAI embed task (the real client, real HTTP) against the local stand-in server with
~150 ms ± jitter latency, over >= 200 requests; then the same run with 30 % of requests
failing (429, 5xx, timeouts, dropped connections, malformed bodies). The baseline is the
server's own limit, enforced in the same run.

    python -m bench.openai_rate [--rows 2400] [--inputs-per-request 10] [--tpm 300000]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
from pathlib import Path

from bench.common import plan_embed, timed, write_corpus
from bench.smoke import parse_args
from chatspace.runs.files import read_json
from chatspace.runs.reduce import reduce_run
from chatspace.runs.task import run_task
from tests.openai_server import FAULTS, FakeOpenAI


def measure(work: Path, name: str, args: argparse.Namespace, faulty: bool) -> float:
    def fault(n: int) -> str | None:  # each request fails with probability 0.3, any kind
        draw = random.Random(n)
        return draw.choice(FAULTS) if faulty and draw.random() < 0.3 else None

    with FakeOpenAI(latency=0.15, jitter=0.05, tokens_per_minute=args.tpm, fault=fault,
                    slow_seconds=2.0) as server:
        os.environ.update(server.env(), OPENAI_TIMEOUT="1")
        run = plan_embed({"dataset": {"name": str(work / "corpus.parquet"), "text_field": "text"},
                          "sampling": {"n": args.rows}, "model": {"backend": "openai"},
                          "openai": {"tokens_per_minute": args.tpm, "max_in_flight": 16,
                                     "max_inputs_per_request": args.inputs_per_request},
                          "run": {"array": 1, "part_rows": args.rows}}, work / name)
        seconds, _ = timed(lambda: run_task(run, 0))
        reduce_run(run)
        served = server.ok_requests() + [e for e in server.log if e["fault"] == "shuffle"]
    tokens = sum(e["tokens"] for e in served)
    first = min(e["time"] for e in server.log)
    last = max(e["time"] for e in served)
    limited = sum(e["fault"] == "rate-limited" for e in server.log)
    failed = sum(e["fault"] not in (None, "shuffle", "rate-limited") for e in server.log)
    rate = tokens / (last - first) * 60
    manifest = read_json(run.manifest_path)
    assert manifest["rows_total"] == args.rows, manifest["rows_total"]
    print(f"{name:>6}: {len(served)} requests served, {failed} injected faults, {limited} "
          f"answered 429 by the limit, {tokens:,} tokens in {seconds:.1f} s "
          f"-> {rate:,.0f} tokens/min = {rate / args.tpm:.3f} of the limit")
    return rate / args.tpm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2400)
    parser.add_argument("--inputs-per-request", type=int, default=10)
    parser.add_argument("--tpm", type=int, default=300_000, help="server and client limit")
    args = parse_args(parser, rows=60)
    work = Path(tempfile.mkdtemp(prefix="bench-openai-"))
    write_corpus(work / "corpus.parquet", args.rows)
    clean = measure(work, "clean", args, faulty=False)
    faults = measure(work, "faults", args, faulty=True)
    print(f"ratio achieved / limit: {clean:.3f} (target >= 0.9); with 30 % faults: "
          f"{faults:.3f} (target >= 0.7)")


if __name__ == "__main__":
    main()

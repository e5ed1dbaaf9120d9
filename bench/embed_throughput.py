"""Tokens/s of one embed task versus SentenceTransformer.encode at its best batch size, on the
same real passages, measured in the same run.

    python -m bench.embed_throughput [--rows 5000] [--device cuda] [--model DIR] [--compile]

Tokens are the real (unpadded, truncated) tokens of the texts; both sides embed the same texts.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from bench.common import plan_embed, timed, write_corpus
from bench.smoke import parse_args
from chatspace.kinds.embed.st_model import resolve_model
from chatspace.runs.task import run_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--batch-sizes", default="32,64,128")
    parser.add_argument("--task-batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--model", default=None, help="model directory (default: bundled)")
    parser.add_argument("--compile", action="store_true", help="the task's torch.compile path")
    args = parse_args(parser, rows=200, batch_sizes="32")

    from sentence_transformers import SentenceTransformer

    work = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    texts = write_corpus(work / "corpus.parquet", args.rows)
    model = SentenceTransformer(resolve_model(args.model).path, device=args.device)
    tokens = sum(len(ids) for ids in model.tokenizer(
        texts, truncation=True, max_length=model.max_seq_length)["input_ids"])
    print(f"{len(texts)} passages, {tokens} tokens, device {args.device}, torch threads "
          f"{torch.get_num_threads()}")

    model.encode(texts[:256], batch_size=64)  # warm-up
    best = 0.0
    for size in (int(s) for s in args.batch_sizes.split(",")):
        seconds, _ = timed(lambda size=size: model.encode(texts, batch_size=size))
        rate = tokens / seconds
        best = max(best, rate)
        print(f"encode batch {size:4d}: {seconds:7.2f} s  {rate:8.0f} tok/s")

    run = plan_embed({
        "dataset": {"name": str(work / "corpus.parquet"), "text_field": "text"},
        "sampling": {"p": 1.0},
        "model": {"batch_size": args.task_batch_size, "device": args.device,
                  "compile": args.compile, **({"name": args.model} if args.model else {})},
        "run": {"array": 1}}, work / "root")
    seconds, record = timed(lambda: run_task(run, 0))
    assert record.details["tokens"] == tokens, (record.details["tokens"], tokens)
    rate = tokens / seconds
    padding = 1 - record.details["tokens"] / record.details["padded_tokens"]
    print(f"embed task       : {seconds:7.2f} s  {rate:8.0f} tok/s  (padding {padding:.1%}, "
          "including model load, reading and writing the shard)")
    print(f"ratio task / best encode: {rate / best:.2f}x (target >= 1.25x)")


if __name__ == "__main__":
    main()

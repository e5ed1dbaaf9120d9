"""Whole local run (plan + 4 tasks + reduce, through the CLI) versus the pure encode time of the
same rows (SentenceTransformer.encode at batch 32 and 64, the better one), same run.

    python -m bench.local_run_overhead [--rows 8000] [--array 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import timed, write_corpus
from bench.smoke import parse_args
from chatspace.kinds.embed.st_model import resolve_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=8000)
    parser.add_argument("--array", type=int, default=4)
    args = parse_args(parser, rows=200, array=1)

    from sentence_transformers import SentenceTransformer

    work = Path(tempfile.mkdtemp(prefix="bench-local-"))
    texts = write_corpus(work / "corpus.parquet", args.rows)
    model = SentenceTransformer(resolve_model(None).path, device="cpu")
    model.encode(texts[:256], batch_size=64)
    encode = min(timed(lambda b=b: model.encode(texts, batch_size=b))[0] for b in (32, 64))
    print(f"pure encode of {len(texts)} rows: {encode:.2f} s")

    cmd = [sys.executable, "-m", "chatspace", "submit", "embed", "--dataset",
           str(work / "corpus.parquet"), "--text-field", "text", "--p", "1",
           "--array", str(args.array), "--executor", "local", "--root", str(work / "root"),
           "--json"]
    seconds, done = timed(lambda: subprocess.run(cmd, capture_output=True, text=True))
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    manifest = json.loads(Path(json.loads(done.stdout)["manifest"]).read_text())
    assert manifest["rows_total"] == len(texts)
    print(f"local run (plan + {args.array} tasks + reduce): {seconds:.2f} s")
    print(f"ratio local run / pure encode: {seconds / encode:.2f}x (target <= 1.15x)")


if __name__ == "__main__":
    main()

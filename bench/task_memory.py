"""Peak RSS of one embed task for a small and a 10x larger slice (default 5k vs 50k rows of
short real passages): it must not grow with the slice (target ratio <= 1.3x).

    python -m bench.task_memory [--small 5000] [--large 50000] [--max-words 12]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import plan_embed, write_corpus
from bench.smoke import parse_args

CHILD = """
import resource, sys
from pathlib import Path
from chatspace.kinds import KINDS
from chatspace.runs.record import Run
from chatspace.runs.task import run_task
run_task(Run.open(sys.argv[1], Path('/nonexistent'), KINDS), 0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_mb(work: Path, rows: int) -> float:
    run = plan_embed({"dataset": {"name": str(work / "corpus.parquet"), "text_field": "text"},
                      "sampling": {"n": rows}, "run": {"array": 1}}, work / "root")
    out = subprocess.run([sys.executable, "-c", CHILD, str(run.dir)], capture_output=True,
                         text=True, check=True)
    return int(out.stdout.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", type=int, default=5000)
    parser.add_argument("--large", type=int, default=50000)
    parser.add_argument("--max-words", type=int, default=12)
    args = parse_args(parser, small=200, large=400)
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    write_corpus(work / "corpus.parquet", args.large, max_words=args.max_words)
    small, large = peak_rss_mb(work, args.small), peak_rss_mb(work, args.large)
    print(f"peak RSS, {args.small} rows: {small:.0f} MB; {args.large} rows: {large:.0f} MB")
    print(f"ratio large / small: {large / small:.2f}x (target <= 1.3x)")



if __name__ == "__main__":
    main()

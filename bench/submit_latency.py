"""Login-node latency of `chatspace submit embed --array 64 --executor slurm` on a 10M-row local
Parquet dataset (no rows are read: metadata only), against a bare `sbatch --array=0-63` of a
no-op measured in the same run. Needs a running cluster (hpc/dev-cluster.sh start) with
MaxArraySize > 64; the submitted jobs are cancelled at once.

    python -m bench.submit_latency [--rows 10000000] [--array 64]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import timed, write_many_rows
from bench.smoke import parse_args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--array", type=int, default=64)
    args = parse_args(parser, rows=10_000, array=4)
    work = Path(tempfile.mkdtemp(prefix="bench-submit-"))
    data = work / "big.parquet"
    write_many_rows(data, args.rows)

    baseline, out = timed(lambda: subprocess.run(
        ["sbatch", "--parsable", f"--array=0-{args.array - 1}", "--wrap=true",
         f"--output={work}/wrap-%A_%a.out"], capture_output=True, text=True))
    if out.returncode != 0:  # e.g. a cluster whose MaxArraySize is under --array
        first = (out.stderr.strip().splitlines() or ["no message"])[0]
        raise SystemExit(f"bare sbatch --array=0-{args.array - 1} failed: {first} (this bench "
                         f"needs a cluster whose MaxArraySize is at least {args.array}, or a "
                         "smaller --array)")
    subprocess.run(["scancel", out.stdout.strip()], check=False)

    cmd = [sys.executable, "-m", "chatspace", "submit", "embed", "--dataset", str(data),
           "--text-field", "text", "--p", "0.5", "--array", str(args.array),
           "--executor", "slurm", "--root", str(work / "root"), "--json"]
    seconds, done = timed(lambda: subprocess.run(cmd, capture_output=True, text=True))
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    run_dir = json.loads(done.stdout)["run_dir"]
    subprocess.run([sys.executable, "-m", "chatspace", "cancel", run_dir], check=False,
                   capture_output=True)
    print(f"bare sbatch --array=0-{args.array - 1}: {baseline:.2f} s")
    print(f"chatspace submit --array {args.array} on {args.rows:,} rows: {seconds:.2f} s "
          "(target <= 2 s)")
    print(f"ratio submit / bare sbatch: {seconds / baseline:.1f}x")


if __name__ == "__main__":
    main()

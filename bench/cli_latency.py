"""Login-node latency: each command as a whole process (median of 5), against
`python -c "import click"` measured in the same run, printed as ratios.

Commands: `--help`; `status`, `logs`, `verify` of a finished 2-task embed run (made here with
the local executor, not timed); `submit embed --array 64 --executor slurm` on a 10M-row local
Parquet dataset (metadata only; its jobs are cancelled at once), when `sbatch` answers
(hpc/dev-cluster.sh start; else that line says why it was left out). Targets on a 2-core
machine: `--help`, `status`, `logs`, `verify` <= 0.5 s; `submit` <= 1.5 s.

    python -m bench.cli_latency [--rows 10000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import write_many_rows
from bench.smoke import parse_args

REPO = Path(__file__).resolve().parent.parent
PYDOCS = REPO / "jobs" / "data" / "pydocs.jsonl"
CLI = [sys.executable, "-m", "chatspace"]


def median_seconds(cmd: list[str], repeat: int, after=None) -> float:
    """Median wall time of `cmd` as a process; `after(completed)` runs untimed after each."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        times.append(time.perf_counter() - start)
        if done.returncode not in (0, 1):
            raise SystemExit(f"{' '.join(cmd[2:])} failed: {done.stderr.strip()[-500:]}")
        if after:
            after(done)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parse_args(parser, rows=1000, repeat=1)
    work = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    root = work / "root"
    done = subprocess.run([*CLI, "submit", "embed", "--dataset", str(PYDOCS), "--text-field",
                           "text", "--n", "40", "--array", "2", "--executor", "local", "--json",
                           "--root", str(root)], capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    run_dir = json.loads(done.stdout)["run_dir"]

    baseline = median_seconds([sys.executable, "-c", "import click"], args.repeat)
    cases = {"--help": ["--help"], "status": ["status", run_dir],
             "logs": ["logs", run_dir, "--task", "0"], "verify": ["verify", run_dir]}
    results = {name: median_seconds([*CLI, *argv], args.repeat) for name, argv in cases.items()}
    targets = dict.fromkeys(cases, 0.5)

    submit_note = None
    if shutil.which("sbatch") and subprocess.run(["sinfo"], capture_output=True).returncode == 0:
        data = work / "big.parquet"
        write_many_rows(data, args.rows)

        def cancel(completed: subprocess.CompletedProcess) -> None:
            subprocess.run([*CLI, "cancel", json.loads(completed.stdout)["run_dir"]],
                           capture_output=True)

        name = f"submit --array 64 ({args.rows:,} rows)"
        results[name] = median_seconds(
            [*CLI, "submit", "embed", "--dataset", str(data), "--text-field", "text", "--p",
             "0.5", "--array", "64", "--executor", "slurm", "--json", "--root", str(root)],
            args.repeat, after=cancel)
        targets[name] = 1.5
    else:
        submit_note = "submit --array 64: left out, SLURM does not answer here " \
                      "(hpc/dev-cluster.sh start)"

    print(f"python -c 'import click': {baseline:.3f} s (baseline)")
    for name, seconds in results.items():
        verdict = "ok" if seconds <= targets[name] else "OVER"
        print(f"chatspace {name}: {seconds:.3f} s = {seconds / baseline:.1f}x baseline "
              f"(target <= {targets[name]} s: {verdict})")
    if submit_note:
        print(submit_note)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

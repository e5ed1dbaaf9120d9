"""Every benchmark runs: each one's `--smoke` mode (tiny sizes, seconds) runs as a whole process
and prints its figure, so that a bench cannot break unseen (as two did when completion records
became typed). A smoke run's figures mean nothing; they are not checked."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO

# bench -> (extra arguments, a line its report must print)
BENCHES = {
    "cli_latency": ([], "x baseline"),
    "embed_throughput": ([], "ratio task / best encode"),
    "hf_batching": ([], "ratio batched / one at a time"),
    "judge_rate": ([], "ratio achieved / limit"),
    "local_run_overhead": ([], "ratio local run / pure encode"),
    "openai_rate": ([], "ratio achieved / limit"),
    "query": ([], "worst ratio"),
    "task_memory": ([], "ratio large / small"),
}
SLURM_BENCHES = {"submit_latency": ([], "ratio submit / bare sbatch")}
SLOW_BENCHES = {  # a vLLM engine start or more, or a steer and a vectors run: a minute or more
    "steering_overhead": ([], "slower by"),
    "steering_overhead --tensor-parallel-size 2": (["--tensor-parallel-size", "2"],
                                                   "capture overhead TP=2 / TP=1"),
    "steer_sweep": ([], "whole run tok/s"),
    "vectors": ([], "peak RSS"),
    "serve": ([], "slower by"),
}


def smoke(name: str, args: list[str], expected: str) -> None:
    module = name.split()[0]
    done = subprocess.run([sys.executable, "-m", f"bench.{module}", "--smoke", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert expected in done.stdout, done.stdout[-2000:]


@pytest.mark.parametrize("name", sorted(BENCHES))
def test_each_benchmark_runs(name):
    smoke(name, *BENCHES[name])


@pytest.mark.slurm
@pytest.mark.parametrize("name", sorted(SLURM_BENCHES))
def test_each_slurm_benchmark_runs(name, slurm_cluster):
    smoke(name, *SLURM_BENCHES[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW_BENCHES))
def test_each_slow_benchmark_runs(name):
    smoke(name, *SLOW_BENCHES[name])

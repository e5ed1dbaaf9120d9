"""The vectors job against a plain read of the same capture files, in one run.

    python -m bench.vectors [--generations 256] [--prompt-tokens 44] [--repeats 5]
        [--evict-gb 6] [--warm-only] [--dtypes float32,bfloat16]

A steer sweep (HF backend) on a random-weight model in Qwen2.5-0.5B's shape captures every
layer's rows for each prompt (`rows = "all"`, one new token): 24 x 44 x 896 values per
generation, about 1 GB in float32 for 256 generations, then the same in bfloat16. For each:

- plain read: every capture file through `safetensors.torch.load_file`, in order, in a fresh
  process as the task is, GB/s (the page cache dropped first where the bench runs as root,
  as for each task run);
- the vectors task (one task over every generation, in a subprocess): GB/s of captures read and
  reduced; the ratio to the plain read (target >= 0.8x: the statistics are not the
  bottleneck). The two alternate `--repeats` times, each first in turn (this machine's disk
  speed drifts by up to 2x between runs, and a read can warm the host's cache for the next),
  and the medians are compared; then the same with the page cache warm (where `load_file`
  only maps the cached pages, so the ratio shows the cost of the sums themselves);
- the task's peak RSS over the captures once and four times (the same run listed 4 times):
  target <= 1.2x (memory bounded by groups x layers x hidden, not by the generations).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.corpus import passages  # noqa: E402
from bench.smoke import parse_args  # noqa: E402
from bench.steering_overhead import HIDDEN, LAYERS, build_bench_model  # noqa: E402
from chatspace.kinds import KINDS  # noqa: E402
from chatspace.kinds.steer.spec import SteerSpec  # noqa: E402
from chatspace.runs.executors import DebugExecutor  # noqa: E402
from chatspace.runs.plan import plan_run  # noqa: E402
from chatspace.specs import resolve_spec  # noqa: E402

CLI = [sys.executable, "-m", "chatspace"]


def sweep(root: Path, model: Path, prompts: Path, dtype: str) -> tuple[object, list[Path]]:
    spec = resolve_spec(SteerSpec, None, {
        "model": {"name": str(model), "backend": "hf", "dtype": "float32", "batch_size": 16},
        "prompts": {"file": str(prompts)}, "generation": {"max_tokens": 1, "thinking": False},
        "capture": {"layers": list(range(LAYERS)), "rows": "all", "dtype": dtype},
        "run": {"part_rows": 16, "name": f"bench-{dtype}"}})
    run = plan_run(KINDS["steer"], spec, root).run
    DebugExecutor().execute(run, range(run.num_tasks))
    files = sorted(run.output_dir.glob("captures-*/part-*.safetensors"))
    return run, files


class Cold:
    """Makes the next read come from the disk, as a task's first read of shards on a cluster
    filesystem does: drops the page cache (made only where it can be dropped: root) and,
    with an eviction file, reads it through between two drops, so that a virtual machine's
    host no longer caches the captures either (here a file read a minute before comes back
    at up to 2x the disk's speed, which made single pairs of reads differ by 2x)."""

    def __init__(self, evict: Path | None):
        self.evict = evict

    def __call__(self) -> None:
        drop_caches()
        if self.evict is not None:
            with open(self.evict, "rb", buffering=0) as fh:
                buffer = bytearray(16 << 20)
                while fh.readinto(buffer):
                    pass
            drop_caches()


def eviction_file(work: Path, gigabytes: float) -> Path | None:
    """A file of `gigabytes` of random bytes (none are shared or compressible), or None."""
    if gigabytes <= 0:
        return None
    path = work / "evict.bin"
    with open(path, "wb") as fh:
        for _ in range(int(gigabytes * 1000 / 16)):
            fh.write(os.urandom(16_000_000))
    return path


def drop_caches() -> bool:
    """Empty the page cache (root only); False when it cannot be done here."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


PLAIN_READ = """import sys, time
from safetensors.torch import load_file
start = time.perf_counter()
for path in sys.argv[1:]:
    load_file(path)
print(time.perf_counter() - start)
"""


def plain_read(files: list[Path], cold: Cold | None) -> float:
    """Seconds a fresh process takes to read `files` with `safetensors.torch.load_file`, in
    order (its own timing, without the process start: as the task is timed)."""
    if cold:
        cold()
    done = subprocess.run([sys.executable, "-c", PLAIN_READ, *map(str, files)],
                          capture_output=True, text=True, check=True)
    return float(done.stdout)


def vectors_task(root: Path, sources: list[str], cold: Cold | None) -> tuple[float, float]:
    """Seconds spent reading and summing captures (the task's own timing, without the
    process start) and peak RSS (MB) of one vectors task over `sources`, in a subprocess."""
    args = [f"--from={s}" for s in sources]
    planned = subprocess.run([*CLI, "plan", "vectors", *args, "--group-by", "prompt_index",
                              "--pca", "4", "--part-rows", "32", "--json", "--root", str(root)],
                             capture_output=True, text=True)
    if planned.returncode != 0:
        raise SystemExit(planned.stderr)
    run_dir = json.loads(planned.stdout)["run_dir"]
    if cold:
        cold()
    # /usr/bin/time measures the task alone (a child forked from this process would carry
    # this process's own peak RSS, the model's, past its exec)
    done = subprocess.run(["/usr/bin/time", "-f", "PEAK_KB %M", *CLI, "run", "task", run_dir,
                           "--task", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    peak_kb = int(done.stderr.rsplit("PEAK_KB ", 1)[1].split()[0])
    record = json.loads((Path(run_dir) / "tasks" / "task-00000.json").read_text())
    return record["timings"]["read_and_sum"]["busy"], peak_kb / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--generations", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=44)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--evict-gb", type=float, default=6,
                        help="GB read between runs to empty the host's cache (0: none)")
    parser.add_argument("--warm-only", action="store_true",
                        help="only reads from a warm page cache: the cache is never dropped "
                             "(a machine that others use, or a smoke run in the test suite)")
    parser.add_argument("--dtypes", default="float32,bfloat16",
                        help="the capture dtypes to measure (comma-separated)")
    args = parse_args(parser, generations=8, prompt_tokens=16, repeats=1, evict_gb=0,
                      warm_only=True, dtypes="float32")
    work = Path(tempfile.mkdtemp(prefix="bench-vectors-"))
    try:
        measure(args, work)
    finally:
        shutil.rmtree(work)  # the captures and the eviction file: several GB


def measure(args: argparse.Namespace, work: Path) -> None:
    """Build the sweeps in `work` and print every measure."""
    cold = Cold(eviction_file(work, args.evict_gb)) \
        if not args.warm_only and drop_caches() else None
    model = build_bench_model(work)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    texts = [p["text"] for p in passages()]
    prompts = []
    while len(prompts) < args.generations:  # each about --prompt-tokens tokens
        ids = tokenizer(texts[len(prompts) % len(texts)])["input_ids"]
        if len(ids) >= args.prompt_tokens:
            prompts.append(tokenizer.decode(ids[:args.prompt_tokens]))
        else:
            texts.pop(len(prompts) % len(texts))
    (work / "prompts.json").write_text(json.dumps(prompts))
    root = work / "root"
    modes = (cold, None) if cold else (None,)
    print(f"{args.generations} generations x {LAYERS} layers x ~{args.prompt_tokens} rows x "
          f"{HIDDEN}; "
          + (f"each read from the disk starts with the page cache dropped"
             f"{f' and {args.evict_gb:g} GB read to empty the host cache' if cold.evict else ''}"
             if cold else "the page cache is not dropped (--warm-only, or not root), so every "
             "read is from a warm cache (the target is for reads from the disk)"))
    for dtype in args.dtypes.split(","):
        run, files = sweep(root, model, work / "prompts.json", dtype)
        size = sum(f.stat().st_size for f in files) / 1e9
        print(f"{dtype}: {size:.2f} GB of captures in {len(files)} files")
        for before in modes:
            reads, tasks, ratios = [], [], []
            for repeat in range(args.repeats):  # alternating: the disk's speed drifts
                if repeat % 2:  # and in turn first
                    tasks.append(vectors_task(root, [run.run_id], before))
                    reads.append(plain_read(files, before))
                else:
                    reads.append(plain_read(files, before))
                    tasks.append(vectors_task(root, [run.run_id], before))
                ratios.append(reads[-1] / tasks[-1][0])
            read, task = statistics.median(reads), statistics.median(t for t, _ in tasks)
            print(f"  {'from the disk' if before else 'page cache warm'}: plain read "
                  f"{size / read:.2f} GB/s; vectors task {size / task:.2f} GB/s read and "
                  f"reduced (medians of {args.repeats}, alternating); ratio per pair: "
                  f"{', '.join(f'{r:.2f}' for r in ratios)}; median "
                  f"{statistics.median(ratios):.2f}x the read's speed "
                  + ("(target >= 0.8x)" if before else "(no target: a cached load_file only "
                     "maps the pages, so this is the cost of the sums alone)"))
        rss = vectors_task(root, [run.run_id], modes[0])[1]
        _, rss4 = vectors_task(root, [run.run_id] * 4, modes[0])
        print(f"  peak RSS {rss:.0f} MB over the captures once, {rss4:.0f} MB over 4x: "
              f"{rss4 / rss:.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    main()
